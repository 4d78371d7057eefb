"""An arrival wave at the village points: how fast its SMS reach the provider.

Starts its own embedded platform (local gateways without added latency, a 5-second digest window,
no quiet hours), registers `--parcels` parcels for half as many households spread over the
county's village points, uploads all their `stored` scans at once (an evening sort wave arriving at
the points), and waits until every parcel is in a submitted SMS. Prints the wave's SMS throughput
and the arrival → submitted latency (which includes the digest window).

    .venv/bin/python -m loadtest.sms_bench --parcels 2000
"""

from __future__ import annotations

import argparse
import asyncio
import platform as pyplatform
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg
import httpx

from api import auth
from entrypoints.platform import Platform
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.traffic import county_time, envelope

DIGEST_SECONDS = 5


def bench_county(folder: Path) -> Path:
    text = DEMO_COUNTY.read_text(encoding="utf-8")
    for old, new in (("digest_minutes = 10", f"digest_seconds = {DIGEST_SECONDS}"),
                     ('quiet_start = "21:00"', 'quiet_start = "00:00"'),
                     ('quiet_end = "08:00"', 'quiet_end = "00:00"'),
                     ("daily_budget = 10", "daily_budget = 100")):
        text = text.replace(old, new)
    path = folder / "county.toml"
    path.write_text(text, encoding="utf-8")
    return path


async def tokens(dsn: str) -> tuple[str, str]:
    conn = await asyncpg.connect(dsn)
    try:
        scanner = (await auth.create(conn, role="scanner", name="bench-pda", brands=["ZTO"]))[1]
        system = (await auth.create(conn, role="brand-system", name="bench-sys", brands=["ZTO"]))[1]
        return scanner, system
    finally:
        await conn.close()


async def progress(dsn: str) -> tuple[int, list[float]]:
    conn = await asyncpg.connect(dsn)
    try:
        parcels = await conn.fetchval(
            "SELECT count(DISTINCT p.waybill) FROM sms_message_parcels p JOIN sms_messages m"
            " USING (sms_id) WHERE m.state IN ('submitted', 'delivered')")
        lat = [r[0] for r in await conn.fetch(
            "SELECT extract(epoch FROM submitted_at - first_known_at)::float8 FROM sms_messages"
            " WHERE submitted_at IS NOT NULL")]
        return int(parcels), lat
    finally:
        await conn.close()


def run(parcels: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        state = Path(tmp)
        county_file = bench_county(state)
        county = load_county(county_file)
        plat = Platform(state / "state", county_file=county_file,
                        gateway_args=("--per-number-per-minute", "100", "--repeat-rate", "0.2"))
        plat.start(timeout=120)
        try:
            assert plat.settings is not None
            dsn = plat.settings.database_url
            scanner, system = asyncio.run(tokens(dsn))
            now = county_time(county, datetime.now(UTC))
            villages = [v.id for v in county.villages]
            wave = []
            regs = []
            for i in range(parcels):
                wb = f"ZT8{i:011d}"
                household = i // 2
                phone = f"136{household:08d}"
                node = villages[household % len(villages)]
                regs.append(envelope("parcel.registered", 2, now, "ZTO", "manifest", {
                    "waybill": wb, "recipient_phone": phone, "destination_village": node,
                    "weight_g": 600}))
                wave.append(envelope("parcel.scanned", 1, now, "ZTO", "op-keeper",
                                     {"waybill": wb, "action": "stored", "node_id": node}))
            with httpx.Client(base_url=plat.api_url, timeout=60) as client:
                for i in range(0, len(regs), 500):
                    client.post("/v1/scan-batches", json={"events": regs[i:i + 500]},
                                headers={"Authorization": f"Bearer {system}"}).raise_for_status()
                started = time.perf_counter()
                for i in range(0, len(wave), 500):
                    client.post("/v1/scan-batches", json={"events": wave[i:i + 500]},
                                headers={"Authorization": f"Bearer {scanner}"}).raise_for_status()
                uploaded = time.perf_counter() - started
            done, lat = 0, list[float]()
            while done < parcels and time.perf_counter() - started < 900:
                time.sleep(1)
                done, lat = asyncio.run(progress(dsn))
            elapsed = time.perf_counter() - started
            sms = len(lat)
            gateway_lines = sum(len(plat.gateway_log(g).read_text().splitlines())
                                for g in ("aliyun", "aliyun-backup") if plat.gateway_log(g).exists())
            q = statistics.quantiles(lat, n=20) if len(lat) >= 20 else [0.0] * 19
            print(f"machine: {pyplatform.machine()} {pyplatform.processor() or ''}, "
                  f"date {datetime.now(UTC):%Y-%m-%d}")
            print(f"wave: {parcels} parcels, {parcels // 2} households, uploaded in {uploaded:.1f} s")
            print(f"all {done} parcels in submitted SMS after {elapsed:.1f} s: {sms} SMS "
                  f"({sms / max(elapsed - DIGEST_SECONDS, 0.001):.0f} SMS/s after the {DIGEST_SECONDS} s"
                  f" digest window); gateway accepted {gateway_lines}")
            print(f"arrival → submitted: median {statistics.median(lat):.1f} s, p95 {q[18]:.1f} s,"
                  f" max {max(lat):.1f} s")
        finally:
            plat.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--parcels", type=int, default=2000)
    run(ap.parse_args().parcels)


if __name__ == "__main__":
    main()
