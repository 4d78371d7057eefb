"""The sender's queue: the requested SMS that are due, and the record of every provider call.

A message is put in the queue by the planner (an `sms.requested` read back from the journal,
projections/sms_state.py); the sender (streams/sms_service.py) picks what is due here, records
each call before making it (`sms_attempts`, committed, and kept across a rebuild), and writes the
call's outcome together with the event it produced, so no answered call is ever left looking
unanswered."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from domain.envelope import Envelope
from domain.events import SealedPhone
from infra.pii import PhoneErased
from projections import journal
from projections.tracking_store import use_all_brands


def open_sealed(stored: dict[str, Any]) -> tuple[SealedPhone, str]:
    """A sealed phone as the SMS tables keep it: the object and its waybill; PhoneErased when
    only the stub of an erased one is left."""
    if stored.get("erased"):
        raise PhoneErased(f"key {stored.get('key_id')} was destroyed")
    body = {k: v for k, v in stored.items() if k != "waybill"}
    return SealedPhone.model_validate(body), str(stored["waybill"])


@dataclass(frozen=True)
class Outgoing:
    sms_id: str
    sealed_phone: dict[str, Any] | None  # opened only for the provider call (open_sealed)
    phone_ref: str
    phone_masked: str
    brand: str
    template_code: str
    params: dict[str, str]
    first_known_at: datetime
    attempts: int              # calls already made
    uncertain: tuple[tuple[str, datetime], ...]  # (provider, started_at) of calls with no answer
    transient: dict[str, int]  # transient failures per provider
    accepted: bool             # a call was accepted: its sms.submitted is on its way to this state
    first_attempt_at: datetime | None
    waiting: bool              # some parcel it names is still waiting at the point


async def due_messages(conn: asyncpg.Connection, now: datetime, limit: int = 50,
                       skip: Sequence[str] = ()) -> list[Outgoing]:
    """Up to `limit` messages due at `now`, oldest first, but for those in `skip` (in progress)."""
    async with conn.transaction():
        await use_all_brands(conn)
        rows = await conn.fetch(
            "SELECT m.*, (SELECT brand FROM sms_message_parcels p WHERE p.sms_id = m.sms_id LIMIT 1)"
            " AS brand, EXISTS (SELECT 1 FROM sms_message_parcels p JOIN sms_arrivals a"
            " ON a.arrival_id = p.arrival_id WHERE p.sms_id = m.sms_id AND a.waiting) AS waiting"
            " FROM sms_messages m WHERE state = 'requested' AND send_after <= $1"
            " AND next_attempt_at <= $1 AND sms_id <> ALL($3::text[])"
            " ORDER BY send_after, sms_id LIMIT $2", now, limit, list(skip))
        attempts = await conn.fetch(
            "SELECT sms_id, provider, started_at, outcome FROM sms_attempts"
            " WHERE sms_id = ANY($1::text[]) ORDER BY attempt", [r["sms_id"] for r in rows])
    by_id: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for a in attempts:
        by_id[a["sms_id"]].append(a)
    out = []
    for r in rows:
        tried = by_id.get(r["sms_id"], [])
        transient: dict[str, int] = defaultdict(int)
        for a in tried:
            if a["outcome"] == "transient":
                transient[a["provider"]] += 1
        out.append(Outgoing(
            r["sms_id"], r["sealed_phone"], r["phone_ref"], r["phone_masked"], r["brand"] or "",
            r["template_code"],
            dict(r["params"]), r["first_known_at"], len(tried),
            tuple((a["provider"], a["started_at"]) for a in tried if a["outcome"] is None),
            dict(transient), any(a["outcome"] == "ok" for a in tried),
            tried[0]["started_at"] if tried else None, r["waiting"]))
    return out


async def overdue(conn: asyncpg.Connection, before: datetime) -> int:
    """Messages due since before `before` and still not with a provider, of those the caller's
    scope sees (it is the caller's to set: a transaction here would widen it for the rest)."""
    return int(await conn.fetchval(
        "SELECT count(*) FROM sms_messages WHERE state = 'requested' AND send_after < $1", before))


async def sent_today(conn: asyncpg.Connection, phone_ref: str, day_start: datetime) -> int:
    """SMS a provider accepted for this number since the county day began, counted from the
    calls (committed as each is answered, so a batch sees its own sends at once)."""
    async with conn.transaction():
        await use_all_brands(conn)
        return int(await conn.fetchval(
            "SELECT count(DISTINCT a.sms_id) FROM sms_attempts a JOIN sms_messages m"
            " ON m.sms_id = a.sms_id WHERE m.phone_ref = $1 AND a.outcome = 'ok'"
            " AND a.started_at >= $2", phone_ref, day_start))


async def begin_attempt(conn: asyncpg.Connection, sms_id: str, attempt: int, provider: str,
                        now: datetime) -> None:
    """Record a call before making it (committed on return): a crash after this is a call we
    must ask the provider about before calling again."""
    await conn.execute(
        "INSERT INTO sms_attempts (sms_id, attempt, provider, started_at) VALUES ($1, $2, $3, $4)",
        sms_id, attempt, provider, now)


async def end_attempt(conn: asyncpg.Connection, sms_id: str, attempt: int, outcome: str,
                      retry_at: datetime | None = None) -> None:
    async with conn.transaction():
        await use_all_brands(conn)
        await conn.execute("UPDATE sms_attempts SET outcome = $3 WHERE sms_id = $1 AND attempt = $2",
                           sms_id, attempt, outcome)
        if retry_at is not None:
            await conn.execute("UPDATE sms_messages SET next_attempt_at = $2 WHERE sms_id = $1",
                               sms_id, retry_at)


async def defer(conn: asyncpg.Connection, sms_id: str, until: datetime) -> None:
    """Leave a message until `until` (quiet hours, a call to be asked about, a provider down)."""
    async with conn.transaction():
        await use_all_brands(conn)
        await conn.execute("UPDATE sms_messages SET next_attempt_at = $2 WHERE sms_id = $1",
                           sms_id, until)


async def settle_uncertain(conn: asyncpg.Connection, sms_id: str, outcome: str) -> None:
    await conn.execute("UPDATE sms_attempts SET outcome = $2 WHERE sms_id = $1 AND outcome IS NULL",
                       sms_id, outcome)


async def record(conn: asyncpg.Connection, events: Sequence[Envelope], sms_id: str,
                 outcome: str, attempt: int | None = None) -> None:
    """Write the sender's events to the journal and, in the same transaction, the outcome of the
    call they came from (`attempt`; None: every call still unanswered, as when the provider was
    asked about them), so no answered call is ever left looking unanswered, or the other way
    round. The message is not picked again meanwhile."""
    async with conn.transaction():
        await use_all_brands(conn)
        await journal.append(conn, events)
        await conn.execute(
            "UPDATE sms_attempts SET outcome = $3 WHERE sms_id = $1"
            " AND (attempt = $2 OR ($2::int IS NULL AND outcome IS NULL))", sms_id, attempt, outcome)
        await conn.execute(
            "UPDATE sms_messages SET next_attempt_at = 'infinity' WHERE sms_id = $1 AND state = 'requested'",
            sms_id)
