"""The SMS planner: follows the journal in seq order, folds each event into the SMS state through
the domain's decisions (domain/sms_planning.py), and writes what they decide — pickup codes while
following, `sms.requested` when a digest closes or a reminder falls due — to the journal.

Digests group parcels of different waybills (different Kafka partitions) for one phone, so which
parcels share an SMS needs one total order; like the ledger, this reads the journal itself, from a
cursor stored in the same transaction as the rows it produced. Its own decisions are journal
events too, and change the state only when read back from the journal: a rebuild from the journal
arrives at the same state, and an arrival whose SMS the journal already holds is never announced
again."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import asyncpg

from domain.county import County
from domain.envelope import Envelope
from domain.events import PAYLOADS
from domain.sms import SmsPolicy
from domain.sms_planning import COLLECTING, READS, SmsPlanning
from infra.pii import Keyring, KeyUnavailable
from projections import journal
from projections.metrics import DEAD_LETTERS
from projections.sms_state import TABLES, PgPlanStore
from projections.tracking_store import use_all_brands

# The journal types the planner reads (the rest are not even fetched).
SMS_TYPES = tuple(sorted({t for (t, _v), model in PAYLOADS.items() if model in READS}))
SMS_LOCK = 7710005
log = logging.getLogger("gongpei.sms")


def planning(conn: asyncpg.Connection, county: County, keys: Keyring | None,
             now: datetime) -> SmsPlanning:
    """The domain's decisions over the PostgreSQL state, for this county at `now` (`keys`:
    needed only to apply registrations)."""
    policy: SmsPolicy = county.sms
    points = {n.id: n.name for n in county.villages}
    return SmsPlanning(PgPlanStore(conn, keys), policy, county.utc_offset_minutes, points, now)


# ------------------------------------------------------------------------------ journal → state


async def catch_up(conn: asyncpg.Connection, county: County, *, now: datetime, keys: Keyring,
                   page: int = 1000, careful: bool = False) -> int:
    """Apply every journal event not yet applied; returns how many. `now` stamps the events this
    writes (pickup codes); it never decides anything here. `careful` applies each event in a
    savepoint and sets aside one that fails (in sms_skipped, with the error's kind), so that
    one bad event cannot stop every SMS: the caller retries carefully after an unexpected error.
    `keys` open each registration's phone, once, to derive its reference."""
    total = 0
    while (n := await _apply_page(conn, county, now, page, careful, keys)) > 0:
        total += n
        if n < page:
            break
    return total


async def _apply_page(conn: asyncpg.Connection, county: County, now: datetime, page: int,
                      careful: bool, keys: Keyring) -> int:
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SMS_LOCK):
            return 0  # another SMS service is at it
        await use_all_brands(conn)
        await conn.execute("INSERT INTO sms_cursor (name) VALUES ('sms') ON CONFLICT DO NOTHING")
        cursor = await conn.fetchval("SELECT seq FROM sms_cursor WHERE name = 'sms'")
        # Of the scans only storing and collection matter: the rest are not even decoded.
        rows = await conn.fetch(
            "SELECT seq, body FROM journal WHERE seq > $1 AND type = ANY($2::text[])"
            " AND (type <> 'parcel.scanned' OR body->'payload'->>'action' = ANY($4::text[]))"
            " ORDER BY seq LIMIT $3", cursor, list(SMS_TYPES), page,
            ["stored", *(str(a) for a in COLLECTING)])
        if not rows:
            return 0
        plan = planning(conn, county, keys, now)
        out: list[Envelope] = []
        for r in rows:
            if not careful:
                out += await plan.apply(Envelope.from_wire(r["body"]))
                continue
            try:
                async with conn.transaction():
                    out += await plan.apply(Envelope.from_wire(r["body"]))
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError,
                    KeyUnavailable):  # a missing key is the configuration's fault, not the event's
                raise
            except Exception as exc:  # noqa: BLE001 - set aside, named, never swallowed silently
                # The error's kind only: its text could quote the event, phone and all.
                await conn.execute(
                    "INSERT INTO sms_skipped (seq, event_id, error) VALUES ($1, $2, $3)"
                    " ON CONFLICT DO NOTHING", r["seq"], r["body"].get("event_id", ""),
                    type(exc).__name__)
                DEAD_LETTERS.labels(reason=f"sms:{type(exc).__name__}").inc()
                log.error("set aside journal event %s (seq %s): %s", r["body"].get("event_id"),
                          r["seq"], type(exc).__name__)
        # Written last, so the journal's append lock is held only for this insert and the commit.
        await journal.append(conn, out)
        await conn.execute("UPDATE sms_cursor SET seq = $1 WHERE name = 'sms'", rows[-1]["seq"])
        return len(rows)


# ------------------------------------------------------------------------------ decisions (now)


async def close_due(conn: asyncpg.Connection, county: County, now: datetime,
                    grace: timedelta = timedelta(seconds=2)) -> int:
    """Request the SMS of every digest that has closed and every reminder that is due; returns
    how many were requested. The requests land in the journal; state follows when read back."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SMS_LOCK):
            return 0
        await use_all_brands(conn)
        out = await planning(conn, county, None, now).due(grace)
        await journal.append(conn, out)
    return len(out)


async def reset(conn: asyncpg.Connection) -> None:
    """Empty the SMS state (not the log of provider calls), ready to be rebuilt from the journal."""
    async with conn.transaction():
        await use_all_brands(conn)
        for table in TABLES:
            await conn.execute(f"DELETE FROM {table}")  # table names come from TABLES
