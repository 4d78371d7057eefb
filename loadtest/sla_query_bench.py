"""SLA answer times for a peak day: ~1 M events ≈ 150,000 parcels × 3 downward legs.

Fills the read models directly (the figures measure the queries, not ingestion): `days` days of
legs in sla_legs, 14 days of per-slice aggregates in sla_daily, runs in sla_runs; then times each
dashboard-facing endpoint over HTTP. Prints median and p95 per endpoint.

    .venv/bin/python -m loadtest.sla_query_bench --parcels 150000 --days 3
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

DAY = "2026-11-11"
FILL = """
WITH v AS (SELECT row_number() OVER () - 1 AS i, n.id AS village, n.parent AS township
           FROM (VALUES {villages}) AS n(id, parent)),
p AS (SELECT g AS n, (g % {nv}) AS vi, (ARRAY['EMS','ZTO','YTO','STO','YUNDA','JT','SF','JD'])[1 + g % 8] AS brand,
             d AS d FROM generate_series(1, {parcels}) g, generate_series(0, {days} - 1) d)
INSERT INTO sla_legs (waybill, leg, brand, route_id, township, village, start_at, due_at,
                      at_risk_at, end_at, outcome, minutes_over, cause, day, start_event, end_event)
SELECT 'B' || p.d || '-' || p.n, l.leg, p.brand, 'R-' || substr(v.township, 5), v.township, v.village,
       s.start_at, s.start_at + l.budget, s.start_at + l.budget * 0.75,
       CASE WHEN p.n % 20 = 0 THEN NULL ELSE s.start_at + l.budget * (CASE WHEN p.n % 9 = 0 THEN 1.1 ELSE 0.5 END) END,
       CASE WHEN p.n % 20 = 0 THEN 'open' WHEN p.n % 9 = 0 THEN 'late' ELSE 'on_time' END,
       CASE WHEN p.n % 9 = 0 AND p.n % 20 <> 0 THEN 60 END,
       CASE WHEN p.n % 9 = 0 AND p.n % 20 <> 0 THEN (ARRAY['run_departed_late','missed_run','missing_scan','problem','unknown'])[1 + p.n % 5] END,
       (DATE '{day}' - p.d), 'e' || p.n, NULL
FROM p JOIN v ON v.i = p.vi
CROSS JOIN LATERAL (SELECT (DATE '{day}' - p.d)::timestamptz + interval '6 hours' + (p.n % 600) * interval '1 minute' AS start_at) s
CROSS JOIN (VALUES ('county_to_township', interval '12 hours'), ('township_to_village', interval '24 hours'),
                   ('centre_to_village', interval '48 hours')) AS l(leg, budget)
"""
AGGREGATE = """
INSERT INTO sla_daily SELECT day, leg, route_id, township, village, brand,
       count(*) FILTER (WHERE outcome = 'on_time'), count(*) FILTER (WHERE outcome = 'late')
FROM sla_legs WHERE outcome <> 'open' GROUP BY 1, 2, 3, 4, 5, 6
"""
EARLIER = """
INSERT INTO sla_daily SELECT day - k, leg, route_id, township, village, brand, on_time, late
FROM sla_daily, generate_series({days}, 13) k WHERE day = DATE '{day}'
"""


async def fill(dsn: str, parcels: int, days: int, villages: list[tuple[str, str]]) -> float:
    conn = await asyncpg.connect(dsn)
    started = time.perf_counter()
    try:
        values = ", ".join(f"('{v}', '{t}')" for v, t in villages)
        await conn.execute(FILL.format(villages=values, nv=len(villages), parcels=parcels, days=days, day=DAY))
        await conn.execute(AGGREGATE)
        await conn.execute(EARLIER.format(days=days, day=DAY))
        await conn.execute("ANALYZE sla_legs; ANALYZE sla_daily")
    finally:
        await conn.close()
    return time.perf_counter() - started


async def main(parcels: int, days: int, repeats: int) -> None:
    from infra.county_file import load_county
    from infra.settings import DEMO_COUNTY

    county = load_county(DEMO_COUNTY)
    plat = Platform(Path(tempfile.mkdtemp(prefix="gongpei-sla-bench-")), services=("api",))
    await asyncio.to_thread(plat.start, 60)
    try:
        assert plat.settings is not None
        villages = [(v.id, v.parent or "") for v in county.villages]
        took = await fill(plat.settings.database_url, parcels, days, villages)
        conn = await asyncpg.connect(plat.settings.database_url)
        legs = await conn.fetchval("SELECT count(*) FROM sla_legs WHERE day = $1",
                                   datetime.fromisoformat(DAY).date())
        _, manager = await auth.create(conn, role="manager", name="bench", brands=[])
        _, brand = await auth.create(conn, role="brand", name="bench-zto", brands=["ZTO"])
        await conn.close()
        now = "2026-11-12T09:00:00+08:00"
        endpoints = {
            "rates 14 days": ("/v1/sla/rates", {"to": DAY, "now": now}, manager),
            "rates, one township": ("/v1/sla/rates", {"to": DAY, "now": now, "township": "TWN-XILIU"}, manager),
            "rates, brand token": ("/v1/sla/rates", {"to": DAY, "now": now}, brand),
            "breaches of the day": ("/v1/sla/breaches", {"day": DAY, "now": now}, manager),
            "at-risk queue": ("/v1/sla/at-risk", {"now": now}, manager),
            "dashboard (all panels)": ("/v1/sla/dashboard", {"day": DAY, "now": now}, manager),
        }
        print(f"machine: {pyplatform.node()} {pyplatform.machine()} python {pyplatform.python_version()}"
              f" date: {datetime.now(UTC):%Y-%m-%d}")
        print(f"filled {legs:,} legs for {DAY} ({parcels:,} parcels ≈ {parcels * 7:,} events) and"
              f" {days - 1} more days in {took:.1f} s")
        async with httpx.AsyncClient(base_url=plat.api_url, timeout=30) as client:
            for name, (path, params, token) in endpoints.items():
                times = []
                for _ in range(repeats):
                    t = time.perf_counter()
                    r = await client.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
                    times.append((time.perf_counter() - t) * 1000)
                    r.raise_for_status()
                times.sort()
                print(f"{name:>24}: median {statistics.median(times):6.1f} ms"
                      f"  p95 {times[int(len(times) * 0.95) - 1]:6.1f} ms")
    finally:
        await asyncio.to_thread(plat.stop)


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--parcels", type=int, default=150_000)
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    asyncio.run(main(a.parcels, a.days, a.repeats))
