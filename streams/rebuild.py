"""Rebuild read models from the journal; the result must equal what the stream produced."""

from __future__ import annotations

from domain.county import County
from domain.envelope import Envelope
from infra.db import create_pool
from infra.settings import Settings
from projections import journal, tracking_store
from streams.topics import PARCEL_EVENTS


async def rebuild_tracking(settings: Settings, county: County, page: int = 5000) -> int:
    """Empty the tracking read model and re-apply every parcel event in the journal.

    Runs as the schema owner: the worker's role may neither read the journal nor empty the
    tracking tables, and no service role may do both."""
    pool = await create_pool(settings.database_url_for("owner"), max_size=2)
    count = 0
    try:
        async with pool.acquire() as conn:
            await tracking_store.reset(conn)
            after = 0
            while True:
                rows = await journal.read_page(conn, families=PARCEL_EVENTS.families,
                                               after=after, limit=page)
                if not rows:
                    break
                events = [Envelope.from_wire(r["body"]) for r in rows]
                await tracking_store.apply_batch(conn, county, events, offsets={})
                after = rows[-1]["seq"]
                count += len(rows)
    finally:
        await pool.close()
    return count


LEDGER_TABLES = ("settlement_events", "ledger_cursor", "ledger_periods", "ledger_lines",
                 "ledger_parcels", "ledger_trips")
SCRATCH = "ledger_rebuild"


async def rebuild_ledger_check(settings: Settings, county: County) -> dict[str, int]:
    """Replay the journal into a scratch schema and compare with the live ledger, line by line.

    The live ledger is never wiped: its closed periods are immutable. Returns the counts of lines
    live, rebuilt and differing (0 differing means byte-identical postings)."""
    import asyncpg

    from infra.db import _init_connection
    from projections import ledger_store

    conn = await asyncpg.connect(settings.database_url_for("owner"))  # a scratch schema
    try:
        await _init_connection(conn)
        await conn.execute(f"DROP SCHEMA IF EXISTS {SCRATCH} CASCADE; CREATE SCHEMA {SCRATCH}")
        for table in LEDGER_TABLES:
            await conn.execute(f"CREATE TABLE {SCRATCH}.{table} (LIKE public.{table} INCLUDING ALL)")
        await conn.execute(f"SET search_path TO {SCRATCH}, public")
        # Its own lock: the live worker may be applying at the same moment. (It was LEDGER_LOCK
        # + 1, which is the SMS planner's: a replay then found it taken and rebuilt nothing.)
        await ledger_store.catch_up(conn, county, page=5000, lock=ledger_store.LEDGER_REBUILD_LOCK)
        columns = "entry_id, line_no, period, posting_date, unit, kind, account, brand, ref," \
                  " amount_fen, event_ids, adjusts_period, late_event_id"
        live = await conn.fetchval("SELECT count(*) FROM public.ledger_lines")
        rebuilt = await conn.fetchval(f"SELECT count(*) FROM {SCRATCH}.ledger_lines")
        differing = await conn.fetchval(
            f"SELECT count(*) FROM ((SELECT {columns} FROM public.ledger_lines EXCEPT ALL"
            f" SELECT {columns} FROM {SCRATCH}.ledger_lines) UNION ALL"
            f" (SELECT {columns} FROM {SCRATCH}.ledger_lines EXCEPT ALL"
            f" SELECT {columns} FROM public.ledger_lines)) d")
        return {"live": live, "rebuilt": rebuilt, "differing": differing}
    finally:
        await conn.execute(f"RESET search_path; DROP SCHEMA IF EXISTS {SCRATCH} CASCADE")
        await conn.close()


async def rebuild_sms(settings: Settings, county: County) -> int:
    """Empty the SMS state and re-apply the journal. The SMS already requested, submitted or
    answered are journal events, so they come back as they were and none is sent again; the log
    of provider calls is kept, so an accepted call is never repeated and an unanswered one is
    still asked about. A running SMS service waits meanwhile: this holds its locks (the sender's
    first, as the service never takes them the other way round)."""
    from datetime import UTC, datetime

    from infra.pii import Keyring
    from projections import sms_planner
    from streams.sms_service import SENDER_LOCK

    keys = Keyring.from_settings(settings, county.utc_offset_minutes, sealing=False)
    # As the SMS service's own role: it may read the journal and keep the SMS state, no more.
    pool = await create_pool(settings.database_url_for("sms"), max_size=2)
    try:
        async with pool.acquire() as conn:
            await conn.execute("SELECT pg_advisory_lock($1)", SENDER_LOCK)
            await conn.execute("SELECT pg_advisory_lock($1)", sms_planner.SMS_LOCK)
            try:
                await sms_planner.reset(conn)
                return await sms_planner.catch_up(conn, county, now=datetime.now(UTC), keys=keys)
            finally:
                await conn.execute("SELECT pg_advisory_unlock_all()")
    finally:
        await pool.close()
