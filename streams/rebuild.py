"""Rebuild read models from the journal, each compared with the live model it would replace.

Every projection rebuilds the same way (projections/runtime.py `rebuild`): the journal is
replayed into a scratch copy of its tables, compared table by table with the live model, and,
for all but the ledger, swapped in (the ledger's closed periods are final: its replay is only
compared). Runs as the schema owner: no service role may both read the journal and empty a
read model."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain.county import County
from infra.db import create_pool
from infra.settings import Settings
from projections import runtime
from projections.runtime import Projection, RebuildReport, RetryReport


def projection_named(name: str, county: County) -> Projection[Any]:
    from projections.ledger_store import LedgerProjection
    from projections.sla_store import SlaProjection
    from projections.tracking_store import TrackingProjection

    kinds: dict[str, Callable[[County], Projection[Any]]] = {
        "tracking": TrackingProjection, "sla": SlaProjection, "ledger": LedgerProjection}
    if name not in kinds:
        raise KeyError(name)
    return kinds[name](county)


NAMES = ("tracking", "sla", "ledger", "sms")
# What a copy of the ledger's books is made of (tests copy them as books from before 011).
LEDGER_TABLES = ("settlement_events", "ledger_cursor", "ledger_periods", "ledger_lines",
                 "ledger_parcels", "ledger_trips", "consumer_offsets")


async def rebuild_projection(settings: Settings, county: County, name: str,
                             swap: bool = True, page: int = 5000) -> RebuildReport:
    """Replay the journal into `name`'s scratch tables, compare with live, swap if asked (and
    allowed)."""
    projection = projection_named(name, county)
    pool = await create_pool(settings.database_url_for("owner"), max_size=1)
    try:
        async with pool.acquire() as conn:
            return await runtime.rebuild(conn, projection, page=page,
                                         swap=swap and projection.swappable)
    finally:
        await pool.close()


async def retry_projection(settings: Settings, county: County, name: str) -> RetryReport:
    """Re-apply what `name` set aside (after a fix), as the schema owner."""
    projection = projection_named(name, county)
    pool = await create_pool(settings.database_url_for("owner"), max_size=1)
    try:
        async with pool.acquire() as conn:
            return await runtime.retry_set_aside(conn, projection)
    finally:
        await pool.close()


async def rebuild_tracking(settings: Settings, county: County, page: int = 5000) -> int:
    """Rebuild tracking from the journal and make it the live model; returns the events read."""
    return (await rebuild_projection(settings, county, "tracking", page=page)).events


async def rebuild_ledger_check(settings: Settings, county: County) -> dict[str, int]:
    """Replay the journal beside the live ledger and compare, line by line. Returns the counts of
    lines live, rebuilt and differing (0 differing means byte-identical postings)."""
    report = await rebuild_projection(settings, county, "ledger", swap=False)
    [lines] = [t for t in report.tables if t.table == "ledger_lines"]
    return {"live": lines.live, "rebuilt": lines.rebuilt,
            "differing": lines.only_live + lines.only_rebuilt}


async def rebuild_sms(settings: Settings, county: County) -> RebuildReport:
    """Empty the SMS state and re-apply the journal, in place, and report how the rebuilt state
    differs from what was there. The SMS already requested, submitted or answered are journal
    events, so they come back as they were and none is sent again; the log of provider calls is
    kept, so an accepted call is never repeated and an unanswered one is still asked about. A
    running SMS service waits meanwhile: this holds its locks (the sender's first, as the service
    never takes them the other way round). Not replayed into a scratch copy: the planner's own
    decisions (pickup codes) go to the journal, so it is replayed where it lives."""
    from datetime import UTC, datetime

    from infra.pii import Keyring
    from projections.locks import Lock
    from projections.sms_planner import SmsPlannerProjection

    keys = Keyring.from_settings(settings, county.utc_offset_minutes, sealing=False)
    planner = SmsPlannerProjection(county, keys, lambda: datetime.now(UTC))
    schema = runtime.scratch_schema(planner.name)
    owner = await create_pool(settings.database_url_for("owner"), max_size=1)
    # The replay as the SMS service's own role: it may read the journal and keep the SMS state.
    pool = await create_pool(settings.database_url_for("sms"), max_size=1)
    try:
        async with pool.acquire() as conn, owner.acquire() as admin:
            await conn.execute("SELECT pg_advisory_lock($1)", int(Lock.SMS_SENDER))
            await conn.execute("SELECT pg_advisory_lock($1)", int(Lock.SMS_PLANNER))
            try:
                # Every brand's rows, for this session (sms_recipients forces row-level security).
                await admin.execute("SELECT set_config('gongpei.brand_scope', '*', false)")
                await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
                for table in planner.tables:  # what was there, to compare with
                    await admin.execute(f"CREATE TABLE {schema}.{table} AS TABLE public.{table}")
                async with admin.transaction():
                    await runtime.use_all_brands(admin)
                    await planner.reset(admin)
                    await runtime.forget_positions(admin, planner.name)
                events = await runtime.catch_up(conn, planner, page=1000)
                diffs = await runtime.compare_tables(admin, planner.tables, live=schema,
                                                     rebuilt="public")
                set_aside = int(await admin.fetchval(
                    "SELECT count(*) FROM projection_set_aside WHERE projection = 'sms'"))
                return RebuildReport(planner.name, events, set_aside, tuple(diffs), swapped=True)
            finally:
                await conn.execute("SELECT pg_advisory_unlock_all()")
                await admin.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
    finally:
        await pool.close()
        await owner.close()
