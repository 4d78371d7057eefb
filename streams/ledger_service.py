"""The ledger service: keeps the settlement ledger level with the journal.

It follows the journal in seq order (see projections/ledger_store.py for why), woken by the
journal's NOTIFY and at least every half second; a PostgreSQL advisory lock makes a second
instance a harmless standby. Its own process, so its CPU does not stall the stream worker."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

import asyncpg

from domain.county import County
from infra.db import TRANSIENT_DB_ERRORS, discard
from projections import journal, ledger_store
from projections.metrics import PROJECTION_APPLY_SECONDS, PROJECTION_EVENTS

log = logging.getLogger("gongpei.ledger")


async def run(pool: asyncpg.Pool, county: County, stop: asyncio.Event, tick: float = 0.5) -> None:
    """Apply the journal to the ledger until `stop` is set, riding out database restarts."""

    async def one_round() -> None:
        async with pool.acquire() as conn:
            started = time.perf_counter()
            applied = await ledger_store.catch_up(conn, county)
        if applied:
            PROJECTION_APPLY_SECONDS.labels(projection="ledger").observe(
                time.perf_counter() - started)
            PROJECTION_EVENTS.labels(projection="ledger", result="new").inc(applied)

    await follow_journal(pool, stop, one_round, log, tick)


async def follow_journal(pool: asyncpg.Pool, stop: asyncio.Event,
                         one_round: Callable[[], Awaitable[object]], logger: logging.Logger,
                         tick: float = 0.5) -> None:
    """Call `one_round` until `stop` is set: at once when the journal NOTIFYs an append, and at
    least every `tick`; a database outage is waited out, with a fresh listener after it."""
    wake = asyncio.Event()
    listener: asyncpg.Connection | None = None
    while not stop.is_set():
        try:
            if listener is None or listener.is_closed():
                listener = await pool.acquire()
                await listener.add_listener(journal.NOTIFY_CHANNEL, lambda *_: wake.set())
            await one_round()
        except TRANSIENT_DB_ERRORS as exc:
            logger.warning("database unavailable (%s); retrying", type(exc).__name__)
            if listener is not None:
                await discard(pool, listener)  # a fresh one, listening again, next time round
                listener = None
        wake.clear()
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
        await asyncio.wait(waiters, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()
    if listener is not None:
        await discard(pool, listener)
