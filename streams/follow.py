"""Services that follow the journal itself (the ledger, the SMS service) rather than Kafka: one
loop that runs a round whenever the journal announces an append, and at least every tick."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from infra.db import TRANSIENT_DB_ERRORS, discard
from projections import journal


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
