"""The ledger service: keeps the settlement ledger level with the journal.

It follows the journal in seq order (see projections/ledger_store.py for why), woken by the
journal's NOTIFY and at least every half second; a PostgreSQL advisory lock makes a second
instance a harmless standby. Its own process, so its CPU does not stall the stream worker."""

from __future__ import annotations

import asyncio
import logging

import asyncpg

from domain.county import County
from projections import runtime
from projections.ledger_store import LedgerProjection
from streams.follow import follow_journal

log = logging.getLogger("gongpei.ledger")


async def run(pool: asyncpg.Pool, county: County, stop: asyncio.Event, tick: float = 0.5) -> None:
    """Apply the journal to the ledger until `stop` is set, riding out database restarts."""
    ledger = LedgerProjection(county)

    async def one_round() -> None:
        async with pool.acquire() as conn:
            await runtime.catch_up(conn, ledger)

    await follow_journal(pool, stop, one_round, log, tick)
