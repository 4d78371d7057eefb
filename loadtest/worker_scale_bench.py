"""Stream throughput with one and with two workers, side by side in one run, direct to Kafka.

    .venv/bin/python -m loadtest.worker_scale_bench --parcels 2000 --rounds 2 \
        [--record docs/benchmarks/worker-scale-YYYY-MM-DD.md]

Starts PostgreSQL, the broker and the stream workers only (no API, relay, ledger or SMS: nothing
competes with the workers but the producer). The ingest bench's day (registrations, seven scans a
parcel, each run's departure) is turned into the journal's wire form once. Then, for each round
and each worker count (1, 2, 1, 2, …, so the machine's load falls on both alike):

1. the tracking and SLA read models are emptied and a fresh Kafka namespace is taken (its own
   topics, its own consumer group: nothing of the previous measurement is left to read);
2. that many workers are started and the bench waits until their group is stable: every worker
   holds partitions, none twice, all of them held;
3. the day is published straight to the namespace's topics (keyed as the relay keys them, acks=all)
   and timed until tracking and SLA hold every event.

`eps` is events/s from the first publish until both hold every event; `cpu_ms_per_event` counts
the workers', PostgreSQL's and the broker's CPU over that interval (the producer, this process,
is not in it). On a 2-core machine two workers share the cores with PostgreSQL and the broker:
what the second worker can add is bounded by the cores left, not by the partitions.

Then the followers that keep a county's total order, on the same day (`--no-followers`: skip):
the journal append (validated and sealed by the ingest path's own code, appended with
`journal.append` in 5,000-event transactions, as the schema owner: the lock every upload takes,
without HTTP), the ledger's and the SMS planner's catch-up over that journal (`runtime.catch_up`,
in this process, one after the other, each alone), and what the journal and the Kafka-fed read
models take on disk per event.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform as pyplatform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import orjson
from aiokafka import AIOKafkaProducer

from entrypoints.platform import Platform
from infra.settings import Settings
from loadtest import proc_cpu
from loadtest.bench_platform import THROUGHPUT_SETTINGS
from loadtest.ledger_apply_bench import day_of_events, stored_bodies
from projections.sla_store import SLA_TYPES
from streams.topic_admin import ensure_topics
from streams.topics import PARCEL_EVENTS, VEHICLE_EVENTS, namespaced

STABLE_LIMIT_S = 120.0
HELD_LIMIT_S = 600.0


def messages(parcels: int, seed: int) -> list[tuple[str, bytes, bytes]]:
    """(topic, key, value) of the day, as the relay would publish it (un-namespaced topics)."""
    regs, scans = day_of_events(parcels, seed)
    out = []
    for body in stored_bodies(regs, scans):
        wire = orjson.loads(body)
        if wire["type"].startswith("vehicle."):
            out.append((VEHICLE_EVENTS.name, wire["payload"]["trip_id"].encode(), body))
        else:
            out.append((PARCEL_EVENTS.name, wire["payload"]["waybill"].encode(), body))
    return out


async def reset(conn: asyncpg.Connection) -> None:
    async with conn.transaction():
        sla = [r["tablename"] for r in await conn.fetch(
            "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            " AND tablename LIKE 'sla\\_%'")]
        await conn.execute("TRUNCATE parcels, tracking_events, " + ", ".join(sla))
        await conn.execute("DELETE FROM consumer_offsets WHERE consumer IN ('tracking', 'sla')")


def stable(plat: Platform, names: list[str], partitions: int) -> bool:
    """Every one of `names` holds partitions, none twice, and together all of them."""
    held = [plat.assignment(n) or [] for n in names]
    flat = [tp for h in held for tp in h]
    return all(held) and len(flat) == len(set(flat)) == 2 * partitions


async def publish(settings: Settings, namespace: str, msgs: list[tuple[str, bytes, bytes]]) -> float:
    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap_servers, acks="all",
                                enable_idempotence=False, linger_ms=5,
                                max_batch_size=256 * 1024)
    await producer.start()
    try:
        started = time.perf_counter()
        futures = [await producer.send(namespaced(t, namespace), key=k, value=v)
                   for t, k, v in msgs]
        await asyncio.gather(*futures)
        return time.perf_counter() - started
    finally:
        await producer.stop()


async def measure(plat: Platform, conn: asyncpg.Connection, workers: int, namespace: str,
                  msgs: list[tuple[str, bytes, bytes]], goals: tuple[int, int]) -> dict[str, float]:
    assert plat.settings is not None and plat.pg is not None and plat.broker is not None
    await reset(conn)
    await ensure_topics(plat.settings.with_(kafka_namespace=namespace))
    names = plat.worker_names[:workers]
    for name in names:
        child = plat.children[name]
        child.env["GONGPEI_KAFKA_NAMESPACE"] = namespace
        (plat.state_dir / f"{name}.ready").unlink(missing_ok=True)
        child.start()
    deadline = time.monotonic() + STABLE_LIMIT_S
    while not stable(plat, names, plat.topic_partitions):
        if time.monotonic() > deadline or not all(plat.children[n].alive() for n in names):
            raise RuntimeError(f"{workers} workers did not settle; see {plat.state_dir}/logs")
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # a last rebalance (a slow joiner) would pause them mid-run
    if not stable(plat, names, plat.topic_partitions):
        raise RuntimeError("the group rebalanced after it looked stable")
    groups = {**{n: [plat.children[n].proc.pid] for n in names},  # type: ignore[union-attr]
              "postgres": [plat.pg.proc.pid], "broker": [plat.broker.proc.pid]}  # type: ignore[union-attr]
    cpu0 = proc_cpu.snapshot(groups)
    load0 = os.getloadavg()[0]
    started = time.perf_counter()
    produce_s = await publish(plat.settings, namespace, msgs)
    while True:
        row = await conn.fetchrow("SELECT (SELECT count(*) FROM tracking_events) AS t,"
                                  " (SELECT count(*) FROM sla_events) AS s")
        if (row["t"], row["s"]) == goals:
            break
        if time.perf_counter() - started > HELD_LIMIT_S:
            raise TimeoutError(f"held {row['t']}/{goals[0]}, {row['s']}/{goals[1]}")
        await asyncio.sleep(0.02)
    elapsed = time.perf_counter() - started
    cpu = proc_cpu.delta(cpu0, proc_cpu.snapshot(groups))
    per_worker = [cpu[n] for n in names]
    if not stable(plat, names, plat.topic_partitions):
        raise RuntimeError("the group rebalanced during the run: not a clean measurement")
    for name in names:
        plat.children[name].stop()
    return {"workers": workers, "eps": len(msgs) / elapsed, "seconds": elapsed,
            "produce_s": produce_s, "cpu_ms_per_event": 1000 * sum(cpu.values()) / len(msgs),
            "worker_cpu_ms_per_event": 1000 * sum(per_worker) / len(msgs),
            # each worker's share of the workers' CPU: how evenly the group divided the work
            "busiest_worker_share": max(per_worker) / (sum(per_worker) or 1),
            "postgres_cpu_ms_per_event": 1000 * cpu["postgres"] / len(msgs),
            "loadavg_1m": load0}


async def followers(plat: Platform, parcels: int, seed: int) -> dict[str, float]:
    """Journal append, ledger and SMS planner catch-up, and bytes per event (see the docstring)."""
    from domain.sms_planning import COLLECTING  # noqa: F401 - the planner's module, loaded up front
    from infra.county_file import load_county
    from infra.db import _init_connection
    from infra.pii import Keyring
    from infra.settings import DEMO_COUNTY
    from loadtest.rebuild_bench import fill_journal
    from projections import runtime, sms_planner
    from projections.ledger_store import LedgerProjection

    assert plat.settings is not None
    county = load_county(DEMO_COUNTY)
    regs, scans = day_of_events(parcels, seed)
    raw = [e for evs in regs.values() for e in evs] + scans
    append_s = await fill_journal(plat, county, raw)
    conn = await asyncpg.connect(plat.settings.database_url)
    await _init_connection(conn)  # jsonb as dicts, as the services' pools have it
    try:
        started = time.perf_counter()
        await runtime.catch_up(conn, LedgerProjection(county))
        ledger_s = time.perf_counter() - started
        keys = Keyring.from_settings(plat.settings, county.utc_offset_minutes, sealing=False)
        started = time.perf_counter()
        await sms_planner.catch_up(conn, county, now=datetime.now(UTC), keys=keys)
        sms_s = time.perf_counter() - started
        journal_bytes = await conn.fetchval("SELECT pg_total_relation_size('journal')")
        models = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r'"
            " AND (c.relname IN ('parcels', 'tracking_events') OR c.relname LIKE 'sla\\_%')")
        ledger_bytes = await conn.fetchval(
            "SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
            " AND c.relkind = 'r' AND (c.relname LIKE 'ledger\\_%' OR c.relname = 'settlement_events')")
    finally:
        await conn.close()
    n = len(raw)
    return {"events": n, "journal_append_eps": n / append_s, "ledger_eps": n / ledger_s,
            "sms_planner_eps": n / sms_s, "journal_bytes_per_event": journal_bytes / n,
            "read_model_bytes_per_event": (models or 0) / n,
            "ledger_bytes_per_event": (ledger_bytes or 0) / n, "loadavg_1m": os.getloadavg()[0]}


async def run(parcels: int, rounds: int, partitions: int, seed: int,
              counts: tuple[int, ...], with_followers: bool = True,
              ) -> tuple[list[dict[str, float]], int, dict[str, float] | None]:
    # The relay is there to create the default topics the workers first join on; then it stops.
    plat = Platform(Path(tempfile.mkdtemp(prefix="gongpei-worker-scale-")),
                    services=("relay", "worker"),
                    workers=max(counts), topic_partitions=partitions,
                    settings_changes=THROUGHPUT_SETTINGS)
    await asyncio.to_thread(plat.start, 180)
    try:
        for name in ["relay", *plat.worker_names]:  # each run takes a namespace of its own
            await asyncio.to_thread(plat.children[name].stop)
        msgs = messages(parcels, seed)
        goals = (sum(t == PARCEL_EVENTS.name for t, _, _ in msgs),
                 sum(orjson.loads(v)["type"] in SLA_TYPES for _, _, v in msgs))
        assert plat.settings is not None
        conn = await asyncpg.connect(plat.settings.database_url)
        results = []
        try:
            for r in range(rounds):
                for n in counts:
                    out = await measure(plat, conn, n, f"bench-r{r}-w{n}", msgs, goals)
                    print(_line(out), flush=True)
                    results.append(out)
        finally:
            await conn.close()
        follow = await followers(plat, parcels, seed) if with_followers else None
        if follow is not None:
            print(", ".join(f"{k} {v:,.1f}" for k, v in follow.items()), flush=True)
        return results, len(msgs), follow
    finally:
        await asyncio.to_thread(plat.stop)


def _line(r: dict[str, float]) -> str:
    return (f"workers {r['workers']:.0f}: {r['eps']:,.0f} events/s ({r['seconds']:.2f} s;"
            f" publish {r['produce_s']:.2f} s), cpu {r['cpu_ms_per_event']:.3f} ms/event"
            f" (workers {r['worker_cpu_ms_per_event']:.3f}, postgres"
            f" {r['postgres_cpu_ms_per_event']:.3f}), busiest worker"
            f" {r['busiest_worker_share']:.0%} of the workers' CPU, loadavg {r['loadavg_1m']:.2f}")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def record(path: Path, args: argparse.Namespace, results: list[dict[str, float]], events: int,
           follow: dict[str, float] | None) -> None:
    by = {n: [r for r in results if r["workers"] == n] for n in sorted({int(r["workers"]) for r in results})}
    lines = [
        f"# Stream workers: one and two, side by side ({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)", "",
        (f"- machine: {pyplatform.node()}, {os.cpu_count()} CPUs ({cpu_model()}), {pyplatform.machine()},"
        f" Python {pyplatform.python_version()}"),
        (f"- command: `.venv/bin/python -m loadtest.worker_scale_bench --parcels {args.parcels}"
        f" --rounds {args.rounds} --partitions {args.partitions} --seed {args.seed}`"),
        (f"- {events:,} events per measurement ({args.partitions} partitions per topic,"
        " `parcel-events` and `vehicle-events`), published straight to Kafka;"
        " what is timed and counted: the module docstring of `loadtest/worker_scale_bench.py`"),
        "- load average when the runs started (1 min): "
        + ", ".join(f"{r['loadavg_1m']:.2f}" for r in results), "",
        ("| workers | events/s (each run) | median | CPU ms/event (all / workers / PostgreSQL) |"
        " busiest worker's share of the workers' CPU |"),
        "| --- | --- | --- | --- | --- |",
    ]
    for n, rs in by.items():
        lines.append(
            f"| {n} | {', '.join(format(r['eps'], ',.0f') for r in rs)} |"
            f" {statistics.median(r['eps'] for r in rs):,.0f} |"
            f" {statistics.median(r['cpu_ms_per_event'] for r in rs):.3f} /"
            f" {statistics.median(r['worker_cpu_ms_per_event'] for r in rs):.3f} /"
            f" {statistics.median(r['postgres_cpu_ms_per_event'] for r in rs):.3f} |"
            f" {', '.join(format(r['busiest_worker_share'], '.0%') for r in rs)} |")
    if follow is not None:
        lines += [
            "", (f"The followers on the same day ({follow['events']:,.0f} events, journal filled"
            f" directly; load average {follow['loadavg_1m']:.2f} after):"), "",
            "| figure | value |", "| --- | --- |",
            (f"| journal append (validate, seal, append; one lock per county database), events/s |"
            f" {follow['journal_append_eps']:,.0f} |"),
            f"| ledger catch-up, events/s | {follow['ledger_eps']:,.0f} |",
            f"| SMS planner catch-up, events/s | {follow['sms_planner_eps']:,.0f} |",
            f"| journal on disk, bytes/event | {follow['journal_bytes_per_event']:,.0f} |",
            (f"| tracking + SLA read models on disk, bytes/event |"
            f" {follow['read_model_bytes_per_event']:,.0f} |"),
            f"| ledger on disk, bytes/event | {follow['ledger_bytes_per_event']:,.0f} |"]
    lines += ["", "Raw lines:", "", "```", *(_line(r) for r in results), "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parcels", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--workers", default="1,2", help="worker counts to compare, in order")
    ap.add_argument("--no-followers", action="store_true", help="only the workers")
    ap.add_argument("--record", type=Path, help="write the figures as markdown to this file")
    args = ap.parse_args()
    counts = tuple(int(x) for x in args.workers.split(","))
    results, events, follow = asyncio.run(run(args.parcels, args.rounds, args.partitions,
                                               args.seed, counts, not args.no_followers))
    if args.record:
        record(args.record, args, results, events, follow)


if __name__ == "__main__":
    main()

