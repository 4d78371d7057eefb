"""One harness run: build the scenario's traffic, start a platform, replay it through the ingest
API at compressed time, wait for every read model, ask the oracle, measure, report."""

from __future__ import annotations

import asyncio
import bisect
import json
import platform as pyplatform
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api import auth
from entrypoints.platform import GATEWAYS, Platform
from infra.settings import DEMO_COUNTY
from loadtest import countyfile, drivers, kafka_driver, oracle, proc_cpu, report
from loadtest.ingest_bench import platform_pids, run_floor
from loadtest.model import Generator, Upload, batches
from loadtest.scenarios import SCENARIOS

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Options:
    scenario: str
    seed: int = 13
    scale: float | None = None
    compression: float | None = None
    latency: str = "0.1,0.3"          # Aliyun / Tencent answer in ~100–300 ms from a county server
    concurrency: int = 48
    flush_minutes: float = 2.0
    floors: bool = True
    driver: str = "http"              # or "kafka": straight onto the topics, the stream side alone
    out: Path | None = REPO / "docs" / "benchmarks"
    keep_state: bool = False
    sms_margin_s: float = 10.0        # see oracle.expect: how soon a pickup makes an SMS optional
    command: str = ""


def _load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def run(o: Options) -> report.Figures:
    sc = SCENARIOS[o.scenario]
    scale = o.scale if o.scale is not None else sc.scale
    compression = o.compression if o.compression is not None else sc.compression
    cf = countyfile.read(DEMO_COUNTY)
    traffic = Generator(cf, sc.profile, o.seed, scale).build()
    uploads = batches(traffic, o.flush_minutes, random.Random(f"batches-{o.seed}"))
    sim0 = uploads[0].at
    meta: dict[str, Any] = {
        "scenario": o.scenario, "about": sc.about,
        "name": o.scenario if o.driver == "http" else f"{o.scenario}-{o.driver}",
        "driver": o.driver, "seed": o.seed, "scale": scale,
        "compression": compression, "latency": o.latency, "uploads": len(uploads),
        "devices": len({u.device for u in uploads}), "command": o.command,
        "date": f"{datetime.now(UTC):%Y-%m-%d %H:%M}",
        "machine": f"{pyplatform.node()} {pyplatform.machine()}, {_cpus()} CPUs, python "
                   f"{pyplatform.python_version()}",
        "sim_from": f"{sim0.astimezone(cf.tz):%Y-%m-%d %H:%M}",
        "sim_to": f"{uploads[-1].at.astimezone(cf.tz):%Y-%m-%d %H:%M}", "load_before": _load()}
    fig = report.Figures(meta)
    fig.events_sent = sum(len(u.events) for u in uploads)
    plat = await drivers.start_platform(DEMO_COUNTY, o.latency)
    try:
        await _drive(o, plat, cf, uploads, sim0, compression, fig)
    finally:
        meta["load_after"] = _load()
        await asyncio.to_thread(plat.stop)
        if not o.keep_state:  # a run's PostgreSQL is hundreds of MB: the report is what stays
            shutil.rmtree(plat.state_dir.parent, ignore_errors=True)
    if o.out is not None:
        path = report.write(fig, o.out)
        print(f"report: {path}")
    return fig


def _cpus() -> int:
    import os

    return os.cpu_count() or 0


async def _drive(o: Options, plat: Platform, cf: countyfile.CountyFile, uploads: list[Upload],
                 sim0: datetime, compression: float, fig: report.Figures) -> None:
    assert plat.settings is not None
    conn = await asyncpg.connect(plat.settings.database_url)
    try:
        tokens = await drivers.device_tokens(conn, uploads, cf.brands)
        readers = {"manager": (await auth.create(conn, role="manager", name="ht-manager", brands=[]))[1],
                   "finance": (await auth.create(conn, role="finance", name="ht-finance", brands=[]))[1]}
        sampler = drivers.Sampler(plat.settings.database_url)
        sampler.start()
        roots = platform_pids(plat)
        cpu0 = proc_cpu.snapshot(roots)
        rss: dict[str, float] = {}
        stop_rss = asyncio.Event()

        async def watch_rss() -> None:
            while not stop_rss.is_set():
                for k, v in proc_cpu.rss_mb(roots).items():
                    rss[k] = max(rss.get(k, 0.0), v)
                await asyncio.sleep(2)

        rss_task = asyncio.create_task(watch_rss())
        started = time.time()
        per_sim_second = compression * 60 / 86400
        kafka = o.driver == "kafka"
        try:
            if kafka:
                sent, fig.replay_s = await kafka_driver.replay(
                    plat.settings.kafka_bootstrap_servers, uploads, sim0, per_sim_second,
                    o.concurrency)
                fig.settle_s = await drivers.wait_stream(conn, *_stream_goals(uploads))
            else:
                sent, fig.replay_s = await drivers.replay(plat.api_url, uploads, tokens, sim0,
                                                          per_sim_second, o.concurrency)
                fig.settle_s = await drivers.wait_settled(conn)
            fig.cpu_s = proc_cpu.delta(cpu0, proc_cpu.snapshot(roots))
        finally:  # the pollers end with the replay, however it ends
            stop_rss.set()
            await rss_task
            await sampler.stop()
        fig.rss_mb = rss
        now = datetime.now(UTC)
        _ingest_figures(fig, sent)
        if kafka:
            _kafka_stream_figures(fig, sampler, sent, uploads, started)
        else:
            await _stream_figures(fig, conn, sampler, started)
        # The oracle: what was accepted, from the harness's own records of what it sent.
        by_index = {u.index: u for u in uploads}
        accepted: list[tuple[dict[str, Any], float]] = []
        for s in sent:
            for e, status in zip(by_index[s.index].events, s.statuses, strict=False):
                if status in ("accepted", "duplicate"):
                    accepted.append((e, s.acked_s))
        refused = [f"upload {s.index} ({s.device}): HTTP {s.status}" for s in sent if s.status != 200]
        refused += [f"upload {s.index} ({s.device}): {r.get('status')} {r.get('reason')} at "
                    f"{r.get('path')}: {r.get('message')}" for s in sent for r in s.rejected]
        expected = oracle.expect(cf, oracle.facts(accepted), now, drivers.DIGEST_SECONDS,
                                 o.sms_margin_s)
        gateway = _gateway_counts(plat)
        parts = ("sla",) if kafka else ("sla", "settlement", "sms")
        async with httpx.AsyncClient(base_url=plat.api_url, timeout=120) as client:
            fig.diffs = refused + await oracle.compare(client, expected, cf, now, readers, gateway,
                                                       parts=parts)
        fig.oracle = {
            "SLA day × leg slices": len(expected.rates),
            "SLA legs counted (on time + late)": sum(a + b for a, b in expected.rates.values()),
            "late legs by cause": sum(expected.causes.values()),
            "upward hand-ins": len(expected.handed_in),
            "perishable clocks counted (cold store, cold chain, air)": sum(
                a + b for (_d, leg), (a, b) in expected.rates.items() if leg in oracle.UPWARD_CAUSES),
            "late perishable clocks": sum(n for (_d, leg, _c), n in expected.causes.items()
                                          if leg in oracle.UPWARD_CAUSES),
            "bus runs": len({e["payload"]["trip_id"] for e, _ in accepted
                             if e["type"] == "vehicle.departed"
                             and cf.bus_line_of(e["payload"]["trip_id"])}),
        }
        if not kafka:
            fig.oracle.update({
                "brand × period statements": len(expected.owed),
                "fen owed in all": sum(expected.owed.values()),
                "households with arrival SMS": len(expected.sms),
                "arrival SMS the gateways accepted": sum(gateway.values()),
            })
        if o.floors:
            fig.floors = await _floors(plat, conn, fig)
    finally:
        await conn.close()


def _stream_goals(uploads: list[Upload]) -> tuple[int, int]:
    """How many distinct events tracking and SLA keep of these uploads."""
    from loadtest.ingest_bench import SLA_TYPES
    from streams.topics import PARCEL_EVENTS

    seen = {e["event_id"]: e["type"] for u in uploads for e in u.events}
    fams = tuple(PARCEL_EVENTS.families)
    return (sum(1 for t in seen.values() if t.startswith(fams)),
            sum(1 for t in seen.values() if t in SLA_TYPES))


def _kafka_stream_figures(fig: report.Figures, sampler: drivers.Sampler, sent: list[drivers.Sent],
                          uploads: list[Upload], started: float) -> None:
    """Freshness per upload: from the broker's acknowledgement to the first poll at which the
    projection held as many distinct events as had been published by then (duplicates and other
    uploads' events in flight make it an approximation)."""
    from loadtest.ingest_bench import SLA_TYPES
    from streams.topics import PARCEL_EVENTS

    by_index = {u.index: u for u in uploads}
    fams = tuple(PARCEL_EVENTS.families)
    seen: set[str] = set()
    marks: dict[str, list[tuple[int, float]]] = {"tracking": [], "sla": []}
    n = {"tracking": 0, "sla": 0}
    for s in sorted(sent, key=lambda s: s.acked_s):
        for e in by_index[s.index].events:
            if e["event_id"] in seen:
                continue
            seen.add(e["event_id"])
            n["tracking"] += e["type"].startswith(fams)
            n["sla"] += e["type"] in SLA_TYPES
        for k, ms in marks.items():
            ms.append((n[k], started + s.acked_s))
    samples = sampler.samples
    times = [x["t"] for x in samples]
    for k, ms in marks.items():
        held = [x[k] for x in samples]
        best, mono = 0.0, []
        for h in held:
            best = max(best, h)
            mono.append(best)
        waits = []
        for count, at in ms:
            i = bisect.bisect_left(mono, count)
            if i < len(times):
                waits.append(max(0.0, times[i] - at))
        fig.freshness_s[k] = {"p50": report.pct(waits, 50), "p99": report.pct(waits, 99),
                              "n": float(len(waits))}
    total = [(s.acked_s, s.events) for s in sent]
    fig.lag = {k: _published_lag(samples, total, k, started) for k in marks}


def _published_lag(samples: list[dict[str, float]], acks: list[tuple[float, int]], k: str,
                   started: float) -> list[tuple[float, float]]:
    """Events published but not yet held, per poll."""
    acks = sorted(acks)
    out, i, published = [], 0, 0
    for x in samples:
        while i < len(acks) and started + acks[i][0] <= x["t"]:
            published += acks[i][1]
            i += 1
        out.append((x["t"] - started, max(0.0, published - x[k])))
    return out


def _ingest_figures(fig: report.Figures, sent: list[drivers.Sent]) -> None:
    results: Counter[str] = Counter()
    for s in sent:
        results.update(s.results)
    fig.results = dict(results)
    fig.events_accepted = results.get("accepted", 0)
    lat = [s.latency_s * 1000 for s in sent]
    fig.ingest_latency_ms = {f"p{q}": report.pct(lat, q) for q in (50, 95, 99)}
    fig.sustained_eps = fig.events_sent / fig.replay_s if fig.replay_s else 0.0
    # How far behind its compressed schedule the replay ran: the platform (or the machine) could
    # not take the offered rate when this grows.
    slip = [max(0.0, s.sent_s - s.due_s) for s in sent]
    fig.slip_s = {"p50": report.pct(slip, 50), "p99": report.pct(slip, 99)}
    fig.peak_eps_10s, fig.rate = report.ingest_rate([(s.acked_s, s.events) for s in sent])


async def _stream_figures(fig: report.Figures, conn: asyncpg.Connection,
                          sampler: drivers.Sampler, started: float) -> None:
    from domain.sms_planning import COLLECTING
    from loadtest.ingest_bench import SLA_TYPES
    from projections.ledger_store import LEDGER_TYPES
    from projections.sms_planner import SMS_TYPES
    from streams.topics import PARCEL_EVENTS

    rows = await conn.fetch("SELECT seq, type, extract(epoch FROM recorded_at)::float8 AS at,"
                            " body->'payload'->>'action' AS action FROM journal ORDER BY seq")
    fams = tuple(PARCEL_EVENTS.families)
    keep = {
        "tracking": lambda r: r["type"].startswith(fams),
        "sla": lambda r: r["type"] in SLA_TYPES,
        "ledger": lambda r: r["type"] in LEDGER_TYPES,
        "sms": lambda r: r["type"] in SMS_TYPES and (
            r["type"] != "parcel.scanned" or r["action"] in ("stored", *COLLECTING)),
    }
    eligible = {k: [r["seq"] for r in rows if f(r)] for k, f in keep.items()}
    events = {k: [(r["seq"], r["at"]) for r in rows if f(r) and r["type"] != "sms.requested"
                  and not r["type"].startswith("sms.") and r["type"] != "parcel.pickup_assigned"]
              for k, f in keep.items()}
    samples = sampler.samples
    if samples:
        pos = report.positions(samples, eligible)
        fig.freshness_s = report.freshness(samples, pos, events)
        # Behind = events of its own types the journal holds and it does not yet (a follower's
        # cursor stands still while the journal grows with types it does not read).
        fig.lag = {k: [(s["t"] - started,
                        float(bisect.bisect_right(eligible[k], s["journal"])
                              - bisect.bisect_right(eligible[k], p)))
                       for s, p in zip(samples, pos[k], strict=True)]
                   for k in report.PROJECTIONS}
        fig.lag["relay"] = [(s["t"] - started, s["journal"] - s["relay"]) for s in samples]
    sms = await conn.fetch(
        "SELECT extract(epoch FROM submitted_at - greatest(send_after, first_known_at))::float8 AS w,"
        " extract(epoch FROM submitted_at - first_known_at)::float8 AS t"
        " FROM sms_messages WHERE submitted_at IS NOT NULL AND kind = 'arrival'")
    w = [r["w"] for r in sms]
    t = [r["t"] for r in sms]
    fig.sms = {"submitted": float(len(sms)), "after_window_p50": report.pct(w, 50),
               "after_window_p99": report.pct(w, 99), "total_p50": report.pct(t, 50),
               "total_p99": report.pct(t, 99)}


def _gateway_counts(plat: Platform) -> dict[str, int]:
    """Arrival SMS per number as the providers' own records have them (the gateways' logs)."""
    out: Counter[str] = Counter()
    for name in GATEWAYS:
        path = plat.gateway_log(name)
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    out[json.loads(line)["phone"]] += 1
    return dict(out)


async def _floors(plat: Platform, conn: asyncpg.Connection, fig: report.Figures) -> dict[str, float]:
    """The bare Faust and aiokafka consumers on the same broker's topics, in this run."""
    from streams.topics import PARCEL_EVENTS, VEHICLE_EVENTS

    # What the worker's topics hold: the relay's copy of the journal, or (direct-to-Kafka
    # mode, the journal empty) every message the driver published, duplicates included.
    on_topics = await conn.fetchval(
        "SELECT count(*) FROM journal WHERE type LIKE ANY($1::text[])",
        [f + "%" for f in (*PARCEL_EVENTS.families, *VEHICLE_EVENTS.families)]) or fig.events_sent
    topics = [PARCEL_EVENTS.name, VEHICLE_EVENTS.name]
    out: dict[str, float] = {}
    for consumer in ("faust", "aiokafka"):
        floor = await asyncio.to_thread(run_floor, consumer, plat, topics, on_topics)
        out[f"{consumer}_floor_eps"] = floor["events"] / floor["first_s"]
    # The run's busiest 10 s of uploads against what a bare consumer reads: the headroom left.
    for consumer in ("faust", "aiokafka"):
        eps = out[f"{consumer}_floor_eps"]
        out[f"peak_upload_vs_{consumer}_floor"] = fig.peak_eps_10s / eps if eps else float("nan")
    return out
