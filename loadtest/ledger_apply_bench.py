"""The ledger's apply, measured (a benchmark that prints its figures; never a test).

1. Decode: the journal's stored bodies read with `Envelope.from_wire_validated` (full pydantic
   validation, as every consumer did before decode-once; loadtest/decode_bench.py times the fast path) against `fact_from_wire` (the few fields the ledger needs), in-process.
2. Fold: the same events folded into per-parcel and per-trip state and priced, in-process.
3. With `--db`: the embedded platform takes the day's events through the API; once the live
   ledger holds them all, the ledger is replayed into a scratch schema (`gongpei rebuild ledger`'s
   check) by this tree and, with `--baseline DIR` (another checkout, e.g. `git archive <commit>`),
   by that one, on the same journal: events/s of each, and the lines differing from the live
   books (0 expected from both).

    .venv/bin/python -m loadtest.ledger_apply_bench --parcels 3000 --db --baseline /tmp/base
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform as pyplatform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from domain.envelope import Envelope
from domain.settlement.state import ParcelState, TripState, fact_from_wire, fold_parcel, fold_trip
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.traffic import CountyTraffic, county_time

LEDGER_TYPES = ("parcel.registered", "parcel.scanned", "vehicle.departed")
SEALED = {"key_id": "0" * 32, "ciphertext": "A" * 52, "masked": "138****5678", "household": "0" * 64}


def day_of_events(parcels: int, seed: int) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """The ingest bench's day (registrations per brand, then seven scans a parcel an hour
    apart), with each run's departure, so that trips have a cost to share."""
    county = load_county(DEMO_COUNTY)
    traffic = CountyTraffic(county, seed=seed)
    t0 = county_time(county, datetime(2026, 11, 11, 0, 0, tzinfo=UTC))
    regs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(parcels):
        p, e = traffic.register(t0)
        regs.setdefault(p.brand, []).append(e)
    scans: list[dict[str, Any]] = []
    for step in range(7):
        at = t0 + timedelta(hours=step + 1)
        batch = [s for p in traffic.parcels if (s := traffic.advance(p, at))]
        scans += traffic.departures(batch, at) + batch
    return regs, scans


def stored_bodies(regs: dict[str, list[dict[str, Any]]], scans: list[dict[str, Any]]) -> list[bytes]:
    """The journal's form of these uploads (sealed phone, server stamps), as bytes."""
    out = []
    for e in [e for evs in regs.values() for e in evs] + scans:
        body = {**e, "recorded_at": e["occurred_at"], "device_id": "bench"}
        if "recipient_phone" in e["payload"]:
            body["payload"] = {**e["payload"], "recipient_phone": SEALED}
        out.append(orjson.dumps(body))
    return out


def in_process(parcels: int, seed: int) -> None:
    county = load_county(DEMO_COUNTY)
    bodies = stored_bodies(*day_of_events(parcels, seed))
    dicts = [orjson.loads(b) for b in bodies]
    n = len(dicts)

    def best(fn: Any, rounds: int = 3) -> float:
        times = []
        for _ in range(rounds):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    full = best(lambda: [Envelope.from_wire_validated(d) for d in dicts])
    cheap = best(lambda: [fact_from_wire(i, d) for i, d in enumerate(dicts)])
    print(f"events: {n:,}")
    print(f"decode Envelope.from_wire_validated: {full * 1e6 / n:.1f} µs/event,"
          f" {n / full:,.0f} events/s")
    print(f"decode fact_from_wire:     {cheap * 1e6 / n:.2f} µs/event, {n / cheap:,.0f} events/s"
          f"  ({full / cheap:.0f}× faster)")

    from domain.settlement.rules import parcel_state_lines, trip_state_lines

    facts = [fact_from_wire(i, d) for i, d in enumerate(dicts, start=1)]

    def fold_all() -> None:
        parcels_: dict[str, ParcelState] = {}
        trips: dict[str, TripState] = {}
        for f in facts:
            p = None
            if f.waybill:
                p = parcels_.setdefault(f.waybill, ParcelState(f.waybill))
                fold_parcel(p, f)
            if f.trip_id:
                fold_trip(trips.setdefault(f.trip_id, TripState(f.trip_id)), f,
                          p.registration if p else None)
        for ps in parcels_.values():
            parcel_state_lines(ps, county)
        for ts in trips.values():
            trip_state_lines(ts, county)

    fold = best(fold_all)
    print(f"fold + price (no database): {fold * 1e6 / n:.2f} µs/event, {n / fold:,.0f} events/s")


REPLAY = """
import asyncio, json, time
try:
    from infra.county_file import load_county
except ImportError:  # a baseline tree from before the county file reader left the domain
    from domain.county import load_county
from infra.settings import Settings
from streams.rebuild import rebuild_ledger_check
settings = Settings.from_env()
county = load_county(settings.county_file)
t = time.perf_counter()
found = asyncio.run(rebuild_ledger_check(settings, county))
print(json.dumps({**found, "seconds": time.perf_counter() - t}))
"""


def replay(tree: Path, env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-c", REPLAY], cwd=tree, capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(tree)}, timeout=1800, check=False)
    if done.returncode:
        raise RuntimeError(f"replay in {tree} failed: {done.stderr[-2000:]}")
    return orjson.loads(done.stdout.strip().splitlines()[-1])


async def with_database(parcels: int, seed: int, baseline: Path | None, rounds: int,
                        profile: bool = False) -> None:
    import asyncpg
    import httpx

    from loadtest.bench_platform import start_platform, upload_tokens

    plat = await start_platform("gongpei-ledger-bench-")
    state = plat.state_dir
    try:
        assert plat.settings is not None
        conn = await asyncpg.connect(plat.settings.database_url)
        county = load_county(DEMO_COUNTY)
        tokens, scanner = await upload_tokens(conn, county.brands)
        regs, scans = day_of_events(parcels, seed)
        async with httpx.AsyncClient(base_url=plat.api_url, timeout=120) as client:
            for token, events in ([(tokens[b], evs) for b, evs in regs.items()]
                                  + [(scanner, scans)]):
                for i in range(0, len(events), 500):
                    r = await client.post("/v1/scan-batches", json={"events": events[i:i + 500]},
                                          headers={"Authorization": f"Bearer {token}"})
                    r.raise_for_status()
        total = await conn.fetchval("SELECT count(*) FROM journal WHERE type = ANY($1)",
                                    list(LEDGER_TYPES))
        last = await conn.fetchval("SELECT max(seq) FROM journal WHERE type = ANY($1)",
                                   list(LEDGER_TYPES))
        while await conn.fetchval("SELECT coalesce(max(next_offset) - 1, 0) FROM consumer_offsets"
                                  " WHERE consumer = 'ledger'") < last:
            await asyncio.sleep(0.2)
        await conn.close()
        env = {**os.environ, **plat.settings.to_env()}
        trees = [("this tree", Path(__file__).resolve().parent.parent)]
        if baseline is not None:
            trees.insert(0, ("baseline", baseline))
        print(f"journal: {total:,} ledger events ({parcels:,} parcels with their runs)")
        if profile:
            import cProfile
            import pstats

            from streams.rebuild import rebuild_ledger_check

            prof = cProfile.Profile()
            prof.enable()
            await rebuild_ledger_check(plat.settings, county)
            prof.disable()
            pstats.Stats(prof).sort_stats("cumulative").print_stats(35)
        for _ in range(rounds):  # alternate, so that a busy moment does not favour one side
            for name, tree in trees:
                got = replay(tree, env)
                print(f"replay {name:>9}: {got['seconds']:.1f} s,"
                      f" {total / got['seconds']:,.0f} events/s; lines live {got['live']:,},"
                      f" rebuilt {got['rebuilt']:,}, differing {got['differing']}")
    finally:
        await asyncio.to_thread(plat.stop)
        shutil.rmtree(state, ignore_errors=True)  # a database and a broker: hundreds of MB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parcels", type=int, default=3000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--db", action="store_true", help="also replay the ledger on the embedded stack")
    ap.add_argument("--baseline", type=Path, help="another checkout to replay with, for comparison")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--profile", action="store_true", help="profile one replay by this tree")
    args = ap.parse_args()
    print(f"machine: {pyplatform.node()} {pyplatform.machine()} python {pyplatform.python_version()}"
          f" date: {datetime.now(UTC):%Y-%m-%d %H:%M} UTC, cores: {os.cpu_count()}")
    in_process(args.parcels, args.seed)
    if args.db:
        asyncio.run(with_database(args.parcels, args.seed, args.baseline, args.rounds, args.profile))


if __name__ == "__main__":
    main()
