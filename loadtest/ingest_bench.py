"""Ingest-to-projection throughput on the embedded stack: scans posted in batches of 500 by several
concurrent uploaders; measures journal acceptance rate and the time until the tracking read model
has every event. Prints its figures; record them in docs/benchmarks.md with machine and date.

    .venv/bin/python -m loadtest.ingest_bench --parcels 2000 --uploaders 4
"""

from __future__ import annotations

import argparse
import asyncio
import platform as pyplatform
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api import auth
from entrypoints.platform import Platform
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.traffic import CountyTraffic, county_time


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


async def run(parcels: int, uploaders: int, seed: int) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="gongpei-bench-"))
    # The bench replays a fixed day (2026-11-11): reach back to it, however long after it runs.
    # Its uploaders share one scanner token, four batches at once: a throughput test, not a
    # device, so the per-token upload limits (one batch at a time, 30,000 events) are lifted.
    plat = Platform(state, api_port=0, settings_changes={
        "max_event_age_days": 36500,
        "upload_concurrency": 1000, "upload_burst": 10**6, "upload_events_burst": 10**9})
    await asyncio.to_thread(plat.start, 90)
    try:
        assert plat.settings is not None
        conn = await asyncpg.connect(plat.settings.database_url)
        tokens = {b: (await auth.create(conn, role="brand-system", name=f"{b}-bench", brands=[b]))[1]
                  for b in load_county(DEMO_COUNTY).brands}
        scanner = (await auth.create(conn, role="scanner", name="bench",
                                     brands=list(tokens)))[1]
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

        started = time.perf_counter()
        async with httpx.AsyncClient(base_url=plat.api_url, timeout=60) as client:
            await asyncio.gather(*(uploader(client) for _ in range(uploaders)))
        ingested = time.perf_counter() - started
        last = await conn.fetchval("SELECT max(seq) FROM journal")
        relayed = None
        while await conn.fetchval("SELECT count(*) FROM tracking_events") < total:
            if relayed is None and await conn.fetchval("SELECT seq FROM relay_cursor") >= last:
                relayed = time.perf_counter() - started
            await asyncio.sleep(0.05)
        projected = time.perf_counter() - started
        relayed = relayed or projected
        ledger_types = ["parcel.registered", "parcel.scanned", "vehicle.departed"]
        while await conn.fetchval("SELECT seq FROM ledger_cursor") < await conn.fetchval(
                "SELECT max(seq) FROM journal WHERE type = ANY($1)", ledger_types):
            await asyncio.sleep(0.05)
        ledgered = time.perf_counter() - started
        await conn.close()
        return {"events": total, "ingest_s": ingested, "relayed_s": relayed,
                "end_to_end_s": projected, "ledger_s": ledgered, "ledger_eps": total / ledgered,
                "ingest_eps": total / ingested, "end_to_end_eps": total / projected}
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
        print(f"{k:>16}: {v:,.1f}")


if __name__ == "__main__":
    main()
