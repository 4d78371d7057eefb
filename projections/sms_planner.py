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
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import asyncpg

from domain.county import County
from domain.envelope import Envelope
from domain.events import PAYLOADS
from domain.sms import SmsPolicy
from domain.sms_planning import COLLECTING, READS, SmsPlanning
from infra.pii import Keyring, KeyUnavailable
from projections import journal, runtime
from projections.locks import Lock
from projections.metrics import SMS_OUTCOMES
from projections.runtime import Applied, Base, Source, use_all_brands
from projections.sms_state import TABLES, PgPlanStore

# The journal types the planner reads (the rest are not even fetched).
SMS_TYPES = tuple(sorted({t for (t, _v), model in PAYLOADS.items() if model in READS}))
SMS_LOCK = int(Lock.SMS_PLANNER)
log = logging.getLogger("gongpei.sms")


def planning(conn: asyncpg.Connection, county: County, keys: Keyring | None,
             now: datetime) -> SmsPlanning:
    """The domain's decisions over the PostgreSQL state, for this county at `now` (`keys`:
    needed only to apply registrations)."""
    policy: SmsPolicy = county.sms
    points = {n.id: n.name for n in county.villages}
    return SmsPlanning(PgPlanStore(conn, keys), policy, county.utc_offset_minutes, points, now)


# ------------------------------------------------------------------------------ journal → state

class SmsPlannerProjection(Base):
    """SMS planning as a projection: follows the journal (digests group parcels of different
    partitions for one phone, so it needs the total order). Its decisions (pickup codes, and the
    SMS of digests that closed before the next event was recorded: journal time) go to the
    journal in the same transaction; `now` only stamps the pickup codes."""

    name = "sms"
    source = Source.JOURNAL
    reads = frozenset(SMS_TYPES)
    lock = Lock.SMS_PLANNER
    # All of the state but the sender's own timing (when it will next try a message: retries
    # and deferrals are the outbox's, not events, and a rebuild starts them afresh).
    tables: ClassVar[Mapping[str, str]] = {**{t: "*" for t in TABLES}, "sms_messages": (
        "sms_id, kind, stage, node_id, phone_masked, text, template_code, params, segments,"
        " consented, send_after, first_known_at, requested_at, state, provider,"
        " provider_message_id, submitted_at, delivered_at, failure_code, permanent,"
        " sealed_phone, phone_ref")}
    # Of the scans only storing and collection matter: the rest are not even fetched.
    journal_filter = ("(type <> 'parcel.scanned' OR body->'payload'->>'action' IN ("
                      + ", ".join(f"'{a}'" for a in ("stored", *(str(c) for c in COLLECTING)))
                      + "))")
    # A key that cannot be opened is the configuration's fault, not the event's: it stops the
    # planner (loudly) instead of setting every registration aside.
    not_poison: ClassVar[tuple[type[BaseException], ...]] = (KeyUnavailable,)

    def __init__(self, county: County, keys: Keyring | None,
                 clock: Callable[[], datetime]) -> None:
        self.county, self.keys, self.clock = county, keys, clock

    def decode(self, seq: int, wire: dict[str, Any]) -> Envelope:
        return Envelope.from_wire(wire)

    async def apply(self, conn: asyncpg.Connection, items: Sequence[Envelope]) -> Applied:
        plan = planning(conn, self.county, self.keys, self.clock())
        out: list[Envelope] = []
        # No event is recorded in the future; one stamped so (a test's fake clock) must not
        # close everyone's digest early. A bound only: it decides nothing.
        horizon = max(plan.now, datetime.now(UTC))
        for e in items:
            # Journal time: the digests that closed before this event was recorded are decided
            # first, on what was recorded before them, however far behind this runs.
            out += await plan.close_until(min(e.recorded_at, horizon))
            out += await plan.apply(e)
        # Written last, so the journal's append lock is held only for this insert and the commit.
        new = await journal.append(conn, out)
        requested = sum(1 for d in out if d.type == "sms.requested" and d.event_id in new)
        if requested:  # closed on journal time (those closed on the wall clock: sms_service)
            SMS_OUTCOMES.labels(outcome="requested").inc(requested)
        return Applied(new=len(items), duplicate=0)

    async def reset(self, conn: asyncpg.Connection) -> None:
        await reset(conn)


async def catch_up(conn: asyncpg.Connection, county: County, *, now: datetime, keys: Keyring,
                   page: int = 1000) -> int:
    """Apply every journal event not yet applied; returns how many were read. Before each event
    the digests that closed before it was recorded are requested (journal time, stamped with
    their closing time); `now` stamps the pickup codes and bounds the journal clock. An event
    the planner raises on is set aside by the runtime (projection_set_aside) so that one bad
    event cannot stop every SMS. `keys` open each registration's phone, once, to derive its reference."""
    return await runtime.catch_up(conn, SmsPlannerProjection(county, keys, lambda: now), page)


# ------------------------------------------------------------------------------ decisions (now)


async def close_due(conn: asyncpg.Connection, county: County, now: datetime,
                    grace: timedelta = timedelta(seconds=2), limit: int | None = None) -> int:
    """Request the SMS of every digest that has closed (the `limit` first, if given) and every
    reminder that is due, by the wall clock `now` (call it once caught up with the journal);
    returns how many were requested. The requests land in the journal and the digests leave the
    open ones; the rest of the state follows when they are read back (until then the same
    reminders are due again)."""
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SMS_LOCK):
            return 0
        await use_all_brands(conn)
        out = await planning(conn, county, None, now).due(grace, limit)
        await journal.append(conn, out)
    return len(out)


async def reset(conn: asyncpg.Connection) -> None:
    """Empty the SMS state (not the log of provider calls), ready to be rebuilt from the journal."""
    async with conn.transaction():
        await use_all_brands(conn)
        for table in TABLES:
            await conn.execute(f"DELETE FROM {table}")  # table names come from TABLES
