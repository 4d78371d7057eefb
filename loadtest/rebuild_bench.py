"""How long each projection takes to rebuild from a large journal.

    .venv/bin/python -m loadtest.rebuild_bench --events 1000000
    .venv/bin/python -m loadtest.rebuild_bench --events 50000      # a quick run, a few minutes

Starts PostgreSQL and the broker (no services), fills the journal with `--events` events of the
county traffic model — registrations (each phone sealed with its own data key, by the same code
the API seals with), the seven county-level scans of each parcel and one `vehicle.departed` per run
— validated by the ingest path's own `validate_batch` and appended with `journal.append`, in
large transactions straight into PostgreSQL as the schema owner (uploading a million events over
HTTP would take longer than what is measured). By default the live ledger is then brought up to
date (as a running ledger service would have; `gongpei rebuild ledger` compares with it), untimed
by the rebuilds but reported. Then it runs each rebuild the CLI offers (`gongpei rebuild NAME`, as
an operator would, with the owner's settings) and prints `rebuild_<name>_s: N` per projection; a
projection without a rebuild command is printed as `none`.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform as pyplatform
import re
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg

from domain.county import County
from domain.envelope import Envelope
from domain.validation import validate_batch
from entrypoints.platform import Platform
from infra.county_file import load_county
from infra.db import _init_connection
from infra.pii import Keyring, seal_events
from infra.settings import DEMO_COUNTY
from loadtest.traffic import CountyTraffic, county_time
from projections import journal

PROJECTIONS = ("tracking", "sla", "ledger", "sms")
CHUNK = 5000


def day_of_events(traffic: CountyTraffic, day: datetime, parcels: int) -> list[dict[str, Any]]:
    """One day's wire events: the parcels' registrations, then their scans hour by hour with the
    departures of the runs they are loaded on."""
    first = len(traffic.parcels)
    out = [traffic.register(day)[1] for _ in range(parcels)]
    for step in range(7):
        at = day + timedelta(hours=step + 1)
        scans = [s for p in traffic.parcels[first:] if (s := traffic.advance(p, at))]
        out += traffic.departures(scans, at) + scans
    return out


def wire_events(county: County, events: int, per_day: int, seed: int) -> list[dict[str, Any]]:
    traffic = CountyTraffic(county, seed=seed)
    start = county_time(county, datetime(2026, 11, 11, 0, 0, tzinfo=UTC))
    out: list[dict[str, Any]] = []
    day = 0
    while len(out) < events:
        parcels = min(per_day, max(1, (events - len(out)) // 8))
        out += day_of_events(traffic, start + timedelta(days=day), parcels)
        day += 1
    return out[:events]


async def fill_journal(plat: Platform, county: County, raw: list[dict[str, Any]]) -> float:
    """Validate, seal and append; returns the seconds it took."""
    assert plat.settings is not None
    keyring = Keyring.from_settings(plat.settings, county.utc_offset_minutes)
    started = time.perf_counter()
    conn = await asyncpg.connect(plat.settings.database_url)
    await _init_connection(conn)
    try:
        for i in range(0, len(raw), CHUNK):
            chunk = raw[i:i + CHUNK]
            recorded = datetime.fromisoformat(chunk[-1]["occurred_at"]) + timedelta(hours=1)
            envs = validate_batch(chunk, county=county, permitted_brands=frozenset(county.brands),
                                  device_id="bench", recorded_at=recorded)
            rejected = [e for e in envs if not isinstance(e, Envelope)]
            if rejected:
                raise RuntimeError(f"the traffic model made events the ingest path refuses: {rejected[:3]}")
            async with conn.transaction():
                await journal.append(conn, await seal_events(conn, keyring, envs))  # type: ignore[arg-type]
            if (i // CHUNK) % 20 == 0:
                print(f"  journal: {i + len(chunk):,} events, {time.perf_counter() - started:.0f} s",
                      file=sys.stderr, flush=True)
    finally:
        await conn.close()
    return time.perf_counter() - started


async def live_ledger(plat: Platform, county: County) -> float:
    """Bring the live ledger up to date, as the ledger service would have."""
    from projections import ledger_store

    assert plat.settings is not None
    conn = await asyncpg.connect(plat.settings.database_url_for("ledger"))
    await _init_connection(conn)
    started = time.perf_counter()
    try:
        await ledger_store.catch_up(conn, county, page=5000)
    finally:
        await conn.close()
    return time.perf_counter() - started


def cli() -> list[str]:
    script = Path(sys.executable).parent / "gongpei"
    return [str(script)] if script.exists() else [sys.executable, "-m", "entrypoints.cli"]


def offered(env: dict[str, str]) -> list[str]:
    """The projections `gongpei rebuild` has a command for, read from its own help."""
    done = subprocess.run([*cli(), "rebuild", "-h"], env=env, capture_output=True, text=True,
                          check=True)
    found = re.search(r"\{([a-z_,-]+)\}", done.stdout)
    return found.group(1).split(",") if found else []


def timed_rebuild(name: str, env: dict[str, str]) -> tuple[float, str]:
    started = time.perf_counter()
    done = subprocess.run([*cli(), "rebuild", name], env=env, capture_output=True, text=True,
                          check=False)
    took = time.perf_counter() - started
    said = (done.stdout + done.stderr).strip().splitlines()
    return took, f"exit {done.returncode}: {said[-1] if said else ''}"


async def run(events: int, per_day: int, seed: int, ledger_first: bool) -> dict[str, Any]:
    county = load_county(DEMO_COUNTY)
    state = Path(tempfile.mkdtemp(prefix="gongpei-rebuild-"))
    plat = Platform(state, api_port=0, services=())
    await asyncio.to_thread(plat.start, 90)
    try:
        assert plat.settings is not None
        started = time.perf_counter()
        raw = wire_events(county, events, per_day, seed)
        figures: dict[str, Any] = {"events": len(raw), "generate_s": time.perf_counter() - started}
        figures["journal_fill_s"] = await fill_journal(plat, county, raw)
        del raw
        if ledger_first:
            figures["ledger_live_catch_up_s"] = await live_ledger(plat, county)
        env = {**os.environ, **plat.settings.to_env(), **plat.settings.pii_private_env()}
        commands = offered(env)
        for name in dict.fromkeys([*PROJECTIONS, *commands]):
            if name not in commands:
                figures[f"rebuild_{name}_s"] = "none"
                continue
            took, said = await asyncio.to_thread(timed_rebuild, name, env)
            figures[f"rebuild_{name}_s"] = took
            figures[f"rebuild_{name}_said"] = said
        return figures
    finally:
        await asyncio.to_thread(plat.stop)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--parcels-per-day", type=int, default=150_000,
                    help="a 双十一 peak day by default (as sla_query_bench)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--no-live-ledger", action="store_true",
                    help="skip bringing the live ledger up to date before the rebuilds")
    args = ap.parse_args()
    figures = asyncio.run(run(args.events, args.parcels_per_day, args.seed, not args.no_live_ledger))
    print(f"machine: {pyplatform.node()} {pyplatform.machine()} python {pyplatform.python_version()}"
          f" date: {datetime.now(UTC):%Y-%m-%d}")
    for k, v in figures.items():
        print(f"{k}: {v:.1f}" if isinstance(v, float) else f"{k}: {v}")


if __name__ == "__main__":
    main()
