"""The provincial roll-up: per county and day, the volumes and on-time counts, read from each
county's own database.

A county runs as a deployment of its own (its journal, ledger and SMS planner keep their total
order per county: docs/scaling.md), so the province does not merge journals: it asks each county
database the same read-only question and lays the answers side by side. The day is the county's
own (its UTC offset), as every county figure is."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone

import asyncpg

from domain.county import County


@dataclass(frozen=True)
class CountyDay:
    """One county's day: parcels registered, events journalled, and SLA legs that finished on
    time or late (the dashboard's daily slices, every leg, route, village and brand summed)."""

    county: str
    day: date
    parcels: int
    events: int
    on_time: int
    late: int

    @property
    def on_time_ratio(self) -> float | None:
        finished = self.on_time + self.late
        return self.on_time / finished if finished else None


async def county_day(conn: asyncpg.Connection, county: County, day: date) -> CountyDay:
    """`county`'s figures for its local `day`, from its database (any role that may read the
    journal and sla_daily: the schema owner, or a read-only role granted those two)."""
    start = datetime.combine(day, time(0), tzinfo=timezone(timedelta(minutes=county.utc_offset_minutes)))
    row = await conn.fetchrow(
        "SELECT (SELECT count(DISTINCT partition_key) FILTER (WHERE type = 'parcel.registered')"
        "         FROM journal"
        "         WHERE occurred_at >= $1 AND occurred_at < $2) AS parcels,"
        " (SELECT count(*) FROM journal WHERE occurred_at >= $1 AND occurred_at < $2) AS events,"
        " (SELECT coalesce(sum(on_time), 0) FROM sla_daily WHERE day = $3) AS on_time,"
        " (SELECT coalesce(sum(late), 0) FROM sla_daily WHERE day = $3) AS late",
        start, start + timedelta(days=1), day)
    assert row is not None
    return CountyDay(county.code, day, row["parcels"], row["events"], row["on_time"], row["late"])


async def rollup(databases: Mapping[str, tuple[County, str]], days: Sequence[date]) -> list[CountyDay]:
    """Each county's figures for each of `days`: `databases` maps a county code to its county
    and its database URL. One connection per county, one query per county and day."""
    out = []
    for code, (county, dsn) in databases.items():
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("SET default_transaction_read_only = on")
            # sla_daily has row-level security by brand: the province counts every brand.
            await conn.execute("SELECT set_config('gongpei.brand_scope', '*', false)")
            for day in days:
                figures = await county_day(conn, county, day)
                out.append(CountyDay(code, day, figures.parcels, figures.events,
                                     figures.on_time, figures.late))
        finally:
            await conn.close()
    return out
