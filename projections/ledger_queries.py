"""Reads of the ledger for finance, always through row-level security (brand scope per call)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg

LINE_COLUMNS = ("entry_id, line_no, period, posting_date, unit, kind, account, brand, ref,"
                " amount_fen, event_ids, adjusts_period, late_event_id")


@asynccontextmanager
async def scoped(pool: asyncpg.Pool, scope: str) -> AsyncIterator[asyncpg.Connection]:
    """A read-only transaction that sees what `scope` ('*' or brands) may see."""
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('gongpei.brand_scope', $1, true)", scope)
        yield conn


async def period_status(conn: asyncpg.Connection, period: str) -> str:
    closed = await conn.fetchval("SELECT closed_seq FROM ledger_periods WHERE period = $1", period)
    return "closed" if closed is not None else "open"


async def periods(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT period, starts, ends, closed_seq IS NOT NULL AS closed,"
                            " closed_at, closed_by FROM ledger_periods ORDER BY starts")
    return rows


async def period_lines(conn: asyncpg.Connection, period: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(f"SELECT {LINE_COLUMNS} FROM ledger_lines WHERE period = $1"
                            " ORDER BY posting_date, entry_id, line_no", period)
    return rows


async def unit_lines(conn: asyncpg.Connection, unit: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch(f"SELECT {LINE_COLUMNS} FROM ledger_lines WHERE unit = $1"
                            " ORDER BY entry_id, line_no", unit)
    return rows


async def trip_scans(conn: asyncpg.Connection, trip_id: str) -> list[asyncpg.Record]:
    rows: list[asyncpg.Record] = await conn.fetch("SELECT seq, event_id, type, brand, waybill, body FROM settlement_events"
                            " WHERE trip_id = $1 ORDER BY seq", trip_id)
    return rows


async def events_for_units(conn: asyncpg.Connection, trips: list[str]) -> list[asyncpg.Record]:
    """Settlement inputs of these trips and of the parcels that rode them (for what-if)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "WITH riders AS (SELECT DISTINCT waybill FROM settlement_events WHERE trip_id = ANY($1)"
        " AND waybill IS NOT NULL)"
        " SELECT seq, body FROM settlement_events WHERE trip_id = ANY($1)"
        " UNION ALL SELECT seq, body FROM settlement_events WHERE type = 'parcel.registered'"
        " AND waybill IN (SELECT waybill FROM riders) ORDER BY seq", trips)
    return rows
