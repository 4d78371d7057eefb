"""Monthly report answer times on a filled month: N parcels with full tracking timelines over
November 2026 (1 in 10 upward, 1 in 37 with a problem scan), 30 days of SLA legs (the SLA bench's
fill), then each section's query and the two endpoints over HTTP.

Fills the read models directly (the figures measure the report, not ingestion).

    .venv/bin/python -m loadtest.report_bench --parcels 100000 --repeats 5
"""

from __future__ import annotations

import argparse
import asyncio
import platform as pyplatform
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api import auth
from entrypoints.platform import Platform
from loadtest import sla_query_bench
from projections import report_queries as q

MONTH, NOW = "2026-11", "2026-12-01T08:00:00+08:00"
ENTRY = """
CREATE OR REPLACE FUNCTION pg_temp.entry(g int, k int, typ text, at timestamptz, action text,
                                         node text, brand text, reason text)
RETURNS jsonb LANGUAGE sql IMMUTABLE AS $$
  SELECT jsonb_build_object('event_id', md5(g::text || '-' || k), 'type', typ,
    'occurred_at', to_char(at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD"T"HH24:MI:SS"+08:00"'),
    'recorded_at', to_char(at AT TIME ZONE 'Asia/Shanghai', 'YYYY-MM-DD"T"HH24:MI:SS"+08:00"'),
    'action', action, 'node_id', node, 'node_name', node, 'brand', brand,
    'operator_id', 'op-bench', 'device_id', 'pda-bench',
    'detail', CASE WHEN reason IS NULL THEN '{}'::jsonb
                   ELSE jsonb_build_object('problem_reason', reason) END)
$$
"""
FILL = """
WITH v AS (SELECT row_number() OVER () - 1 AS i, n.id AS village, n.parent AS township
           FROM (VALUES {villages}) AS n(id, parent)),
p AS (SELECT g, (g % {nv}) AS vi,
             (ARRAY['EMS','ZTO','YTO','STO','YUNDA','JT','SF','JD'])[1 + g % 8] AS brand,
             TIMESTAMPTZ '2026-11-01 06:00+08' + (g % 30) * interval '1 day'
               + (g % 600) * interval '1 minute' AS ts
      FROM generate_series(1, {parcels}) g)
INSERT INTO parcels (waybill, brand, status, public_code, destination_village, current_node,
                     last_event_at, view)
SELECT 'P' || p.g, p.brand, 'delivered', 3, v.village, v.village, p.ts + interval '30 hours',
  jsonb_build_object('waybill', 'P' || p.g, 'brand', p.brand, 'status', 'delivered', 'timeline',
   CASE WHEN p.g % 10 = 0 THEN jsonb_build_array(
     pg_temp.entry(p.g, 1, 'parcel.scanned', p.ts, 'received', v.village, p.brand, NULL),
     pg_temp.entry(p.g, 2, 'parcel.scanned', p.ts + interval '8 hours', 'arrived', 'CTY-HAICHENG',
                   p.brand, NULL))
   ELSE jsonb_build_array(
     pg_temp.entry(p.g, 0, 'parcel.registered', p.ts - interval '1 hour', NULL, NULL, p.brand, NULL),
     pg_temp.entry(p.g, 1, 'parcel.scanned', p.ts, 'received', 'CTY-HAICHENG', p.brand, NULL),
     pg_temp.entry(p.g, 2, 'parcel.sorted', p.ts + interval '30 minutes', 'sorted', 'CTY-HAICHENG',
                   p.brand, NULL),
     pg_temp.entry(p.g, 3, 'parcel.scanned', p.ts + interval '1 hour', 'loaded', 'CTY-HAICHENG',
                   p.brand, NULL),
     pg_temp.entry(p.g, 4, 'parcel.scanned', p.ts + interval '4 hours', 'arrived', v.township,
                   p.brand, NULL),
     pg_temp.entry(p.g, 5, 'parcel.scanned', p.ts + interval '5 hours',
                   CASE WHEN p.g % 37 = 0 THEN 'problem' ELSE 'out_for_delivery' END, v.township,
                   p.brand, CASE WHEN p.g % 37 = 0 THEN 'address_unknown' END),
     pg_temp.entry(p.g, 6, 'parcel.scanned', p.ts + interval '8 hours', 'stored', v.village,
                   p.brand, NULL),
     pg_temp.entry(p.g, 7, 'parcel.scanned', p.ts + interval '30 hours', 'delivered', v.village,
                   p.brand, NULL))
   END)
FROM p JOIN v ON v.i = p.vi
"""


async def fill(dsn: str, parcels: int, villages: list[tuple[str, str]]) -> tuple[float, str]:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        await conn.execute(ENTRY)
        values = ", ".join(f"('{v}', '{t}')" for v, t in villages)
        await conn.execute(FILL.format(villages=values, nv=len(villages), parcels=parcels))
        await conn.execute("ANALYZE parcels")
        size = await conn.fetchval("SELECT pg_size_pretty(pg_total_relation_size('parcels'))")
    finally:
        await conn.close()
    return time.perf_counter() - started, size


async def sections(dsn: str) -> dict[str, float]:
    """Each section's reads, timed alone (as the schema owner, every brand)."""
    from infra.county_file import load_county
    from infra.settings import DEMO_COUNTY

    county = load_county(DEMO_COUNTY)
    month = q.Month.parse(MONTH, county.utc_offset_minutes)
    now = datetime.fromisoformat(NOW)
    conn = await asyncpg.connect(dsn)
    out: dict[str, float] = {}
    try:
        reads: dict[str, Callable[[], Awaitable[Any]]] = {
            "volumes": lambda: q.volumes(conn, county, month),
            "problems": lambda: q.problems(conn, month, now),
            "coverage": lambda: q.coverage(conn, county, month),
            "on-time": lambda: q.on_time(conn, county, month, now)}
        for name, read in reads.items():
            started = time.perf_counter()
            await read()
            out[name] = time.perf_counter() - started
    finally:
        await conn.close()
    return out


async def main(parcels: int, repeats: int) -> None:
    from infra.county_file import load_county
    from infra.settings import DEMO_COUNTY

    county = load_county(DEMO_COUNTY)
    plat = Platform(Path(tempfile.mkdtemp(prefix="gongpei-report-bench-")), services=("api",))
    await asyncio.to_thread(plat.start, 60)
    try:
        assert plat.settings is not None
        dsn = plat.settings.database_url
        villages = [(v.id, v.parent or "") for v in county.villages]
        took, size = await fill(dsn, parcels, villages)
        legs_took = await sla_query_bench.fill(dsn, parcels // 30, 30, villages)
        conn = await asyncpg.connect(dsn)
        _, manager = await auth.create(conn, role="manager", name="bench", brands=[])
        await conn.close()
        print(f"machine: {pyplatform.node()} {pyplatform.machine()} python"
              f" {pyplatform.python_version()} date: {datetime.now(UTC):%Y-%m-%d}")
        print(f"filled {parcels:,} parcels ({size}) in {took:.1f} s, 30 days of legs in"
              f" {legs_took:.1f} s")
        print("  " + " · ".join(f"{k} {v:.2f} s" for k, v in (await sections(dsn)).items()))
        async with httpx.AsyncClient(base_url=plat.api_url, timeout=600) as client:
            for path in ("/v1/reports/monthly", "/v1/reports/monthly.xlsx"):
                times = []
                for _ in range(repeats):
                    started = time.perf_counter()
                    r = await client.get(path, params={"month": MONTH, "now": NOW},
                                         headers={"Authorization": f"Bearer {manager}"})
                    times.append(time.perf_counter() - started)
                    r.raise_for_status()
                print(f"{path:>26}: median {statistics.median(times):.2f} s, max {max(times):.2f} s"
                      f" over {repeats} ({len(r.content):,} bytes)")
    finally:
        await asyncio.to_thread(plat.stop)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--parcels", type=int, default=100_000)
    ap.add_argument("--repeats", type=int, default=5)
    a = ap.parse_args()
    asyncio.run(main(a.parcels, a.repeats))
