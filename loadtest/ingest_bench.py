"""Ingest-to-projection throughput on the embedded stack: scans posted in batches of 500 by several
concurrent uploaders; measures journal acceptance rate and the time until every projection
(tracking, SLA, ledger, SMS planning) holds every event, the CPU all platform processes spent on
it, then, on the same broker, how fast the worker alone replays the topics and how fast a bare
Faust agent and a raw aiokafka consumer read them. Prints its figures, one `name: value` a line;
record them in docs/benchmarks.md with machine and date (the figures are defined there).

    .venv/bin/python -m loadtest.ingest_bench --parcels 2000 --uploaders 4
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform as pyplatform
import re
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from entrypoints.platform import GATEWAYS, Platform
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest import proc_cpu
from loadtest.bench_platform import start_platform, upload_tokens
from loadtest.traffic import CountyTraffic, county_time

# The types the SLA inbox keeps a row of (parcel.handed_in too since the upward produce): the
# platform's own list, so a goal counts what the projection stores (re-exported for the harness).
from projections.sla_store import SLA_TYPES
from streams.topics import PARCEL_EVENTS, VEHICLE_EVENTS


def build_events(parcels: int, seed: int) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    county = load_county(DEMO_COUNTY)
    traffic = CountyTraffic(county, seed=seed)
    t0 = county_time(county, datetime(2026, 11, 11, 0, 0, tzinfo=UTC))
    regs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(parcels):
        p, e = traffic.register(t0)
        regs.setdefault(p.brand, []).append(e)
    scans = [s for step in range(7) for p in traffic.parcels
             if (s := traffic.advance(p, t0 + timedelta(hours=step + 1)))]
    return regs, scans


# What each projection must hold before the run counts as done (see docs/benchmarks.md).
PROJECTIONS = ("tracking", "sla", "ledger", "sms")
PLATFORM_SERVICES = ("api", "relay", "worker", "ledger", "sms")
WAIT_LIMIT_S = 1800.0


async def targets(conn: asyncpg.Connection, last: int) -> dict[str, int]:
    """What each projection must reach for the journal up to `last` (the last seq once every
    upload was acknowledged): row counts for the Kafka-fed inboxes, journal seqs for the cursors
    of the journal followers. The SMS planner's cursor stops at the last event it reads (the types
    it selects, and of the scans only storing and collection), so its target is that event's seq."""
    from domain.sms_planning import COLLECTING
    from projections.ledger_store import LEDGER_TYPES
    from projections.sms_planner import SMS_TYPES

    return {
        "tracking": await conn.fetchval(
            "SELECT count(*) FROM journal WHERE seq <= $1 AND type LIKE ANY($2::text[])",
            last, [f + "%" for f in PARCEL_EVENTS.families]),
        "sla": await conn.fetchval(
            "SELECT count(*) FROM journal WHERE seq <= $1 AND type = ANY($2::text[])",
            last, list(SLA_TYPES)),
        "ledger": await conn.fetchval(
            "SELECT coalesce(max(seq), 0) FROM journal WHERE seq <= $1 AND type = ANY($2::text[])",
            last, list(LEDGER_TYPES)),
        "sms": await conn.fetchval(
            "SELECT coalesce(max(seq), 0) FROM journal WHERE seq <= $1 AND type = ANY($2::text[])"
            " AND (type <> 'parcel.scanned' OR body->'payload'->>'action' = ANY($3::text[]))",
            last, list(SMS_TYPES), ["stored", *COLLECTING]),
    }


_PROGRESS = {
    "tracking": "SELECT count(*) FROM tracking_events",
    "sla": "SELECT count(*) FROM sla_events",
    "ledger": ("SELECT coalesce(max(next_offset) - 1, 0) FROM consumer_offsets"
               " WHERE consumer = 'ledger'"),
    "sms": ("SELECT coalesce(max(next_offset) - 1, 0) FROM consumer_offsets"
            " WHERE consumer = 'sms'"),
    "relay": "SELECT coalesce(max(seq), 0) FROM relay_cursor",
}


async def wait_until_held(conn: asyncpg.Connection, goals: dict[str, int], started: float,
                          poll: float = 0.05) -> dict[str, float]:
    """Seconds since `started` at which each of `goals` was reached (one query per poll for the
    ones still pending, so the bench's own load on PostgreSQL stays small)."""
    done: dict[str, float] = {}
    while len(done) < len(goals):
        pending = [k for k in goals if k not in done]
        row = await conn.fetchrow("SELECT " + ", ".join(f"({_PROGRESS[k]}) AS {k}" for k in pending))
        now = time.perf_counter() - started
        for k in pending:
            if row[k] >= goals[k]:
                done[k] = now
        if now > WAIT_LIMIT_S:
            raise TimeoutError(f"not done after {now:.0f} s: "
                               + ", ".join(f"{k} {row[k]}/{goals[k]}" for k in pending))
        if len(done) < len(goals):
            await asyncio.sleep(poll)
    return done


def platform_pids(plat: Platform) -> dict[str, list[int]]:
    """The process roots of the platform (the driver, this process, is not among them; nor are
    the local SMS gateways, which stand in for the providers)."""
    assert plat.pg is not None and plat.broker is not None
    groups = {name: [plat.children[name].proc.pid] for name in PLATFORM_SERVICES  # type: ignore[union-attr]
              if name in plat.children and plat.children[name].alive()}
    groups["postgres"] = [plat.pg.proc.pid]  # type: ignore[union-attr]
    groups["broker"] = [plat.broker.proc.pid]  # type: ignore[union-attr]
    return groups


async def replay_worker(plat: Platform, conn: asyncpg.Connection, goals: dict[str, int]) -> dict[str, float]:
    """worker_eps: with every other platform service stopped, the journal re-published to a
    fresh broker, the tracking and SLA read models emptied and their stored offsets at 0, start
    the worker and time it from having its partitions (after the seek: the ready file) until both
    hold every event again."""
    from streams.app import READERS

    worker = plat.children["worker"]
    worker.stop()
    # Faust drops messages below the offset its group committed in Kafka, even after a seek, and
    # Tansu takes commits from group members only: so the replay reads a fresh broker, filled
    # again by the relay from the journal (its own recovery path), and the relay then stops.
    relay = plat.children["relay"]
    since = await conn.fetchval("SELECT now()")
    plat.restart_broker()
    last = await conn.fetchval("SELECT max(seq) FROM journal")
    deadline = time.monotonic() + 120
    while True:
        # The rewind sets the cursor back to 0 (stamping updated_at), then it climbs to the end
        # again: a cursor at the end stamped after the restart is a finished re-publication,
        # however quickly a small journal went out between two polls.
        row = await conn.fetchrow("SELECT coalesce(max(seq), 0) AS at, max(updated_at) AS stamp"
                                  " FROM relay_cursor")
        if row["at"] >= last and row["stamp"] is not None and row["stamp"] > since:
            break
        if time.monotonic() > deadline or not relay.alive():
            raise RuntimeError(f"the relay did not re-publish the journal; see {relay.log_path}")
        await asyncio.sleep(0.05)
    relay.stop()
    ready = plat.state_dir / "worker.ready"
    ready.unlink(missing_ok=True)
    async with conn.transaction():
        sla_tables = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename LIKE 'sla\\_%'")]
        await conn.execute("TRUNCATE parcels, tracking_events, " + ", ".join(sla_tables))
        # No stored offset: the worker starts every partition at 0 (streams/app.py).
        await conn.execute("DELETE FROM consumer_offsets WHERE consumer = ANY($1::text[])", list(READERS))
    worker.start()
    deadline = time.monotonic() + 120
    while not ready.exists():
        if time.monotonic() > deadline or not worker.alive():
            raise RuntimeError(f"the worker did not get its partitions; see {worker.log_path}")
        await asyncio.sleep(0.01)
    roots = platform_pids(plat)
    groups = {k: roots[k] for k in ("worker", "postgres", "broker")}
    cpu0 = proc_cpu.snapshot(groups)
    lag = time.time() - ready.stat().st_mtime  # the ready file was touched this long ago
    started = time.perf_counter() - lag
    held = await wait_until_held(conn, {k: goals[k] for k in ("tracking", "sla")}, started, poll=0.02)
    cpu = proc_cpu.delta(cpu0, proc_cpu.snapshot(groups))
    return {"replay_s": max(held.values()), "replay_cpu_s": sum(cpu.values()),
            "replay_worker_cpu_s": cpu["worker"]}


def run_floor(consumer: str, plat: Platform, topics: list[str], expect: int) -> dict[str, Any]:
    assert plat.settings is not None
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.floors", consumer,
         "--bootstrap", plat.settings.kafka_bootstrap_servers, "--topics", ",".join(topics),
         "--expect", str(expect), "--partitions", str(plat.topic_partitions),
         "--session-timeout", str(plat.settings.broker_session_timeout),
         "--batch", str(plat.settings.worker_batch_size)],
        capture_output=True, text=True, timeout=600, check=False)
    # Faust's worker sends what its process prints to its log (stderr): look in both.
    found = re.findall(r'\{"consumer": .*\}', done.stdout + done.stderr)
    if not found:
        raise RuntimeError(f"{consumer} floor failed ({done.returncode}): {done.stderr[-2000:]}")
    return dict(json.loads(found[-1]))


async def run(parcels: int, uploaders: int, seed: int) -> dict[str, float]:
    plat = await start_platform("gongpei-bench-")
    try:
        assert plat.settings is not None
        conn = await asyncpg.connect(plat.settings.database_url)
        tokens, scanner = await upload_tokens(conn, load_county(DEMO_COUNTY).brands)
        regs, scans = build_events(parcels, seed)
        total = sum(map(len, regs.values())) + len(scans)
        batches = [(tokens[b], evs[i:i + 500]) for b, evs in regs.items() for i in range(0, len(evs), 500)]
        batches += [(scanner, scans[i:i + 500]) for i in range(0, len(scans), 500)]
        queue: asyncio.Queue[tuple[str, list[dict[str, Any]]]] = asyncio.Queue()
        for b in batches:
            queue.put_nowait(b)

        async def uploader(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                token, events = queue.get_nowait()
                r = await client.post("/v1/scan-batches", json={"events": events},
                                      headers={"Authorization": f"Bearer {token}"})
                r.raise_for_status()

        await asyncio.sleep(2)  # let the services settle after start-up before the CPU clock runs
        roots = platform_pids(plat)
        cpu0 = proc_cpu.snapshot(roots)
        started = time.perf_counter()
        async with httpx.AsyncClient(base_url=plat.api_url, timeout=60) as client:
            await asyncio.gather(*(uploader(client) for _ in range(uploaders)))
        ingested = time.perf_counter() - started
        last = await conn.fetchval("SELECT max(seq) FROM journal")
        goals = {**await targets(conn, last), "relay": last}
        held = await wait_until_held(conn, goals, started)
        cpu = proc_cpu.delta(cpu0, proc_cpu.snapshot(roots))
        finished = max(held[k] for k in PROJECTIONS)
        figures: dict[str, float] = {
            "events": total, "ingest_s": ingested, "relayed_s": held["relay"],
            **{f"{k}_s": held[k] for k in PROJECTIONS}, "end_to_end_s": finished,
            "ingest_eps": total / ingested, "end_to_end_eps": total / finished,
            **{f"{k}_eps": total / held[k] for k in PROJECTIONS},
            "cpu_ms_per_event": 1000 * sum(cpu.values()) / total,
            **{f"cpu_{k}_ms_per_event": 1000 * v / total for k, v in cpu.items()},
        }
        # The platform run is over: the rest of the services stop, the worker replays alone.
        for name in ("api", "ledger", "sms", *(f"sms-gateway-{g}" for g in GATEWAYS)):
            if name in plat.children:
                plat.children[name].stop()
        replay = await replay_worker(plat, conn, goals)
        figures["worker_eps"] = goals["tracking"] / replay["replay_s"]
        figures["worker_replay_s"] = replay["replay_s"]
        figures["worker_replay_cpu_ms_per_event"] = 1000 * replay["replay_cpu_s"] / goals["tracking"]
        plat.children["worker"].stop()
        topics = [PARCEL_EVENTS.name, VEHICLE_EVENTS.name]  # what the worker reads
        on_topics = await conn.fetchval(
            "SELECT count(*) FROM journal WHERE type LIKE ANY($1::text[])",
            [f + "%" for f in (*PARCEL_EVENTS.families, *VEHICLE_EVENTS.families)])
        await conn.close()
        for consumer in ("faust", "aiokafka"):
            floor = await asyncio.to_thread(run_floor, consumer, plat, topics, on_topics)
            figures[f"{consumer}_floor_eps"] = floor["events"] / floor["first_s"]
            figures[f"{consumer}_floor_cpu_ms_per_event"] = 1000 * floor["cpu_s"] / floor["events"]
        figures["worker_vs_faust_floor"] = figures["worker_eps"] / figures["faust_floor_eps"]
        return figures
    finally:
        await asyncio.to_thread(plat.stop)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parcels", type=int, default=2000)
    ap.add_argument("--uploaders", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    figures = asyncio.run(run(args.parcels, args.uploaders, args.seed))
    print(f"machine: {pyplatform.node()} {pyplatform.machine()} python {pyplatform.python_version()}"
          f" date: {datetime.now(UTC):%Y-%m-%d}")
    for k, v in figures.items():
        print(f"{k}: {_fmt(k, v)}")


def _fmt(name: str, value: float) -> str:
    if name.endswith(("ms_per_event", "_vs_faust_floor")):
        return f"{value:.3f}"
    if name.endswith("_eps") or name == "events":
        return f"{value:.0f}"
    return f"{value:.2f}"


if __name__ == "__main__":
    main()
