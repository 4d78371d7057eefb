"""The SMS service's state in PostgreSQL, kept by applying the journal in seq order.

Digests group parcels of different waybills (different Kafka partitions) for one phone, so which
parcels share an SMS needs one total order; like the ledger, this reads the journal itself, from a
cursor stored in the same transaction as the rows it produced. Its own decisions (a pickup code,
an SMS requested, submitted, failed) are journal events too, and change this state only when read
back from the journal: a rebuild from the journal arrives at the same state, and an arrival whose
SMS the journal already holds is never announced again.

Rows never hold a phone number: the sealed object from the registration (only the sender opens
it, at the moment of a provider call) and `phone_ref`, a reference to the number the service
derives with its own key, to group digests and count the daily budget (the same across months,
unlike the events' per-month household hash). The number is opened in memory to derive it when a
registration is applied; a number already erased gets the reference `erased:<key id>`."""

from __future__ import annotations

import logging
import re
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import asyncpg

from domain import sms as rules
from domain.county import County
from domain.envelope import Envelope
from domain.events import PickupAssigned, SealedPhone, SmsParcel, SmsRequested
from infra.pii import Keyring, KeyUnavailable, PhoneErased
from projections import journal
from projections.metrics import DEAD_LETTERS
from projections.tracking_store import use_all_brands

SMS_TYPES = ("parcel.registered", "parcel.scanned", "parcel.pickup_assigned", "consent.recorded",
             "sms.requested", "sms.submitted", "sms.delivered", "sms.failed")
SMS_LOCK = 7710005
# A digest names at most this many parcels (a shop or a co-op receiving a wave): more start another.
MAX_DIGEST_PARCELS = 100
log = logging.getLogger("gongpei.sms")
COLLECTING = ("delivered", "returned", "out_for_delivery")
DEVICE = "gongpei-sms"
# What the SMS tables show for a number that was erased (or whose month was shredded).
ERASED = "erased"
_LAST4 = re.compile(r"尾号[0-9]{4}")
TABLES = ("sms_message_parcels", "sms_messages", "sms_digests", "sms_arrivals", "sms_points",
          "sms_recipients", "sms_skipped", "sms_cursor")


def platform_event(event_type: str, payload: Any, event_id: str, brand: str,
                   at: datetime) -> Envelope:
    """An event the SMS service writes to the journal; its id is derived, so writing it twice
    (after a crash, or from a rebuilt state) is one event."""
    return Envelope(event_id=event_id, type=event_type, schema_version=1, occurred_at=at,
                    recorded_at=at, device_id=DEVICE, brand=brand, operator_id="sms-service",
                    payload=payload)


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
            " ORDER BY seq LIMIT $3", cursor, list(SMS_TYPES), page, ["stored", *COLLECTING])
        if not rows:
            return 0
        out: list[Envelope] = []
        for r in rows:
            if not careful:
                await _apply(conn, county, Envelope.from_wire(r["body"]), out, now, keys)
                continue
            mark = len(out)
            try:
                async with conn.transaction():
                    await _apply(conn, county, Envelope.from_wire(r["body"]), out, now, keys)
            except (asyncpg.PostgresConnectionError, asyncpg.InterfaceError, OSError,
                    KeyUnavailable):  # a missing key is the configuration's fault, not the event's
                raise
            except Exception as exc:  # noqa: BLE001 - set aside, named, never swallowed silently
                del out[mark:]
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


async def _apply(conn: asyncpg.Connection, county: County, e: Envelope, out: list[Envelope],
                 now: datetime, keys: Keyring) -> None:
    p: Any = e.payload
    if e.type == "parcel.registered":
        sealed, ref = await _reference(conn, keys, p.recipient_phone, p.waybill)
        await conn.execute(
            "INSERT INTO sms_recipients (waybill, brand, sealed_phone, phone_ref, registered_at,"
            " known_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (waybill) DO UPDATE"
            " SET brand = $2, sealed_phone = $3, phone_ref = $4, registered_at = $5, known_at = $6"
            " WHERE sms_recipients.registered_at IS NULL OR sms_recipients.registered_at <= $5",
            p.waybill, e.brand, sealed, ref, e.occurred_at, e.recorded_at)
        for a in await conn.fetch(
                "SELECT * FROM sms_arrivals WHERE waybill = $1 AND waiting AND digest_id IS NULL"
                " AND arrival_sms IS NULL", p.waybill):
            await _plan(conn, county, a)  # stored before its manifest arrived
    elif e.type == "consent.recorded":
        await conn.execute(
            "INSERT INTO sms_recipients (waybill, consent, consent_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (waybill) DO UPDATE SET consent = $2, consent_at = $3"
            " WHERE sms_recipients.consent_at IS NULL OR sms_recipients.consent_at <= $3",
            p.waybill, p.consent, e.occurred_at)
    elif e.type == "parcel.scanned":
        action = str(p.action)
        if action == "stored":
            node = county.nodes.get(p.node_id)
            if node is not None and node.tier == "village":
                await _arrive(conn, county, e, out, now)
        elif action in COLLECTING:
            await _collect(conn, p.waybill, action, e.occurred_at)
    elif e.type == "parcel.pickup_assigned":
        await conn.execute("UPDATE sms_arrivals SET pickup_code = $2 WHERE arrival_id = $1",
                           p.arrival_id, p.pickup_code)
    elif e.type == "sms.requested":
        await _requested(conn, county, e)
    elif e.type == "sms.submitted":
        await conn.execute(
            "UPDATE sms_messages SET state = 'submitted', provider = $2, provider_message_id = $3,"
            " submitted_at = $4 WHERE sms_id = $1 AND state = 'requested'",
            p.sms_id, p.provider, p.provider_message_id, e.occurred_at)
        # A receipt may have come first: it keeps its state, and learns when we submitted.
        await conn.execute(
            "UPDATE sms_messages SET submitted_at = coalesce(submitted_at, $2),"
            " provider_message_id = coalesce(provider_message_id, $3) WHERE sms_id = $1",
            p.sms_id, e.occurred_at, p.provider_message_id)
    elif e.type == "sms.delivered":
        # A receipt can beat the sender's own record (a crash between the call and the record):
        # the provider has it, so it was submitted, at the latest when it was delivered.
        await conn.execute(
            "UPDATE sms_messages SET state = 'delivered', delivered_at = $2, provider = $3,"
            " provider_message_id = $4, submitted_at = coalesce(submitted_at, $2) WHERE sms_id = $1",
            p.sms_id, p.delivered_at, p.provider, p.provider_message_id)
    elif e.type == "sms.failed":
        if p.stage == "cancelled":
            await conn.execute(
                "UPDATE sms_messages SET state = 'cancelled', failure_code = $2 WHERE sms_id = $1"
                " AND state = 'requested'", p.sms_id, p.provider_code)
            return
        await conn.execute(
            "UPDATE sms_messages SET state = 'failed', failure_code = $2, permanent = $3,"
            " provider = $4 WHERE sms_id = $1 AND state <> 'delivered'",
            p.sms_id, p.provider_code, p.permanent, p.provider)
        await conn.execute(
            "UPDATE sms_arrivals a SET call_reason = $2 FROM sms_message_parcels m"
            " WHERE m.sms_id = $1 AND a.arrival_id = m.arrival_id AND a.waiting",
            p.sms_id, f"sms_failed:{p.provider_code}")


def erased_stub(key_id: str, waybill: str) -> dict[str, Any]:
    """What the SMS tables keep of a sealed phone whose key is destroyed: which key it was."""
    return {"key_id": key_id, "waybill": waybill, "erased": True}


async def _reference(conn: asyncpg.Connection, keys: Keyring, sealed: SealedPhone,
                     waybill: str) -> tuple[dict[str, Any], str]:
    """The sealed phone as the SMS tables keep it (with the waybill it is bound to) and its
    grouping reference. The number is opened only to derive the reference, and not kept."""
    try:
        ref = keys.phone_ref(await keys.open(conn, sealed, waybill))
    except PhoneErased:
        return erased_stub(sealed.key_id, waybill), f"erased:{sealed.key_id}"
    return {**sealed.model_dump(), "waybill": waybill}, ref


def open_sealed(stored: dict[str, Any]) -> tuple[SealedPhone, str]:
    """A sealed phone as the SMS tables keep it: the object and its waybill; PhoneErased when
    only the stub of an erased one is left."""
    if stored.get("erased"):
        raise PhoneErased(f"key {stored.get('key_id')} was destroyed")
    body = {k: v for k, v in stored.items() if k != "waybill"}
    return SealedPhone.model_validate(body), str(stored["waybill"])


async def _arrive(conn: asyncpg.Connection, county: County, e: Envelope, out: list[Envelope],
                  now: datetime) -> None:
    p: Any = e.payload
    if await conn.fetchval("SELECT 1 FROM sms_arrivals WHERE waybill = $1 AND node_id = $2"
                           " AND waiting", p.waybill, p.node_id):
        return  # the same parcel scanned onto the shelf again: still one arrival
    # Stored somewhere else since: the parcel moved on, the old arrival is over.
    await _close(conn, p.waybill, e.occurred_at, "moved")
    recipient = await conn.fetchrow("SELECT * FROM sms_recipients WHERE waybill = $1", p.waybill)
    # A scan uploaded late, after the parcel was already collected: it announces nothing.
    collected = (recipient is not None and recipient["collected_at"] is not None
                 and recipient["collected_at"] >= e.occurred_at)
    arrival = rules.arrival_id(p.waybill, p.node_id, e.event_id)
    code = p.pickup_code
    policy = county.sms
    if code is None and not collected:
        await conn.execute("INSERT INTO sms_points (node_id) VALUES ($1) ON CONFLICT DO NOTHING",
                           p.node_id)
        next_n = await conn.fetchval("SELECT next_n FROM sms_points WHERE node_id = $1 FOR UPDATE",
                                     p.node_id)
        in_use = {r["pickup_code"] for r in await conn.fetch(
            "SELECT pickup_code FROM sms_arrivals WHERE node_id = $1 AND waiting"
            " AND pickup_code IS NOT NULL", p.node_id)}
        code, next_n = rules.allocate_code(next_n, in_use, policy)
        await conn.execute("UPDATE sms_points SET next_n = $2 WHERE node_id = $1", p.node_id, next_n)
        out.append(platform_event(
            "parcel.pickup_assigned",
            PickupAssigned(waybill=p.waybill, node_id=p.node_id, arrival_id=arrival, pickup_code=code),
            rules.derived_id("pickup_assigned", arrival), e.brand, now))
    row = await conn.fetchrow(
        "INSERT INTO sms_arrivals (arrival_id, waybill, brand, node_id, stored_at, known_at,"
        " pickup_code, waiting, closed_at, closed_by) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
        " ON CONFLICT (arrival_id) DO NOTHING RETURNING *",
        arrival, p.waybill, e.brand, p.node_id, e.occurred_at, e.recorded_at, code, not collected,
        recipient["collected_at"] if collected else None,
        recipient["collected_by"] if collected else None)
    if row is not None and not collected:
        await _plan(conn, county, row)


async def _plan(conn: asyncpg.Connection, county: County, arrival: asyncpg.Record) -> None:
    """Put a waiting arrival into its phone's open digest at the point, or open one."""
    recipient = await conn.fetchrow(
        "SELECT phone_ref, known_at FROM sms_recipients WHERE waybill = $1", arrival["waybill"])
    if recipient is None or recipient["phone_ref"] is None:
        return  # no manifest yet: planned when it comes
    known_at = max(arrival["known_at"], recipient["known_at"])
    digest = await conn.fetchrow(
        "SELECT digest_id, closes_at FROM sms_digests WHERE phone_ref = $1 AND node_id = $2"
        " ORDER BY closes_at DESC LIMIT 1", recipient["phone_ref"], arrival["node_id"])
    if digest is not None and rules.joins_digest(digest["closes_at"], known_at) and (
            await conn.fetchval("SELECT count(*) FROM sms_arrivals WHERE digest_id = $1",
                                digest["digest_id"]) < MAX_DIGEST_PARCELS):
        digest_id = digest["digest_id"]
    else:
        digest_id = rules.derived_id("digest", arrival["arrival_id"])
        await conn.execute(
            "INSERT INTO sms_digests (digest_id, node_id, phone_ref, opened_at, closes_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            digest_id, arrival["node_id"], recipient["phone_ref"], known_at,
            rules.digest_closes_at(known_at, county.sms, county.utc_offset_minutes))
    await conn.execute("UPDATE sms_arrivals SET digest_id = $2, known_at = $3 WHERE arrival_id = $1",
                       arrival["arrival_id"], digest_id, known_at)


async def _collect(conn: asyncpg.Connection, waybill: str, action: str, at: datetime) -> None:
    await conn.execute(
        "INSERT INTO sms_recipients (waybill, collected_at, collected_by) VALUES ($1, $2, $3)"
        " ON CONFLICT (waybill) DO UPDATE SET collected_at = $2, collected_by = $3"
        " WHERE sms_recipients.collected_at IS NULL OR sms_recipients.collected_at <= $2",
        waybill, at, action)
    await _close(conn, waybill, at, action)


async def _close(conn: asyncpg.Connection, waybill: str, at: datetime, by: str) -> None:
    """End the parcel's waiting arrivals stored by `at` (no more SMS or reminders for them),
    and drop the digests that they leave empty."""
    rows = await conn.fetch(
        "UPDATE sms_arrivals a SET waiting = false, closed_at = $2, closed_by = $3, digest_id = NULL"
        " FROM sms_arrivals old WHERE old.arrival_id = a.arrival_id AND a.waybill = $1"
        " AND a.waiting AND a.stored_at <= $2 RETURNING old.digest_id", waybill, at, by)
    await _drop_if_empty(conn, [r["digest_id"] for r in rows if r["digest_id"]])


async def _drop_if_empty(conn: asyncpg.Connection, digest_ids: list[str]) -> None:
    if digest_ids:
        await conn.execute(
            "DELETE FROM sms_digests d WHERE d.digest_id = ANY($1::text[]) AND NOT EXISTS"
            " (SELECT 1 FROM sms_arrivals a WHERE a.digest_id = d.digest_id)", digest_ids)


async def _requested(conn: asyncpg.Connection, county: County, e: Envelope) -> None:
    p: Any = e.payload
    # The number of the message is its first parcel's (every parcel in it has the same one).
    recipient = await conn.fetchrow(
        "SELECT sealed_phone, phone_ref FROM sms_recipients WHERE waybill = $1",
        p.parcels[0].waybill)
    sealed = recipient["sealed_phone"] if recipient else None
    ref = (recipient["phone_ref"] if recipient else None) or f"unknown:{p.sms_id}"
    # A number erased since the SMS was decided: its masked form and last four (in a long
    # SMS's "凭尾号5678取件") are not shown again either.
    erased = sealed is None or bool(sealed.get("erased"))
    masked = ERASED if erased else p.phone_masked
    text, params = p.text, dict(p.params)
    if erased:
        text = _LAST4.sub("尾号****", text)
        params = {k: _LAST4.sub("尾号****", v) for k, v in params.items()}
    inserted = await conn.fetchval(
        "INSERT INTO sms_messages (sms_id, kind, stage, node_id, sealed_phone, phone_ref,"
        " phone_masked, text, template_code, params, segments, consented, send_after,"
        " first_known_at, requested_at, state, next_attempt_at) VALUES ($1, $2, $3, $4, $5, $6,"
        " $7, $8, $9, $10, $11, $12, $13, $14, $15, 'requested', $13)"
        " ON CONFLICT (sms_id) DO NOTHING RETURNING 1",
        p.sms_id, p.kind, p.stage, p.node_id, sealed, ref, masked, text, p.template_code,
        params, p.segments, p.consented, p.send_after, p.first_known_at, e.occurred_at)
    if not inserted:
        return
    await conn.executemany(
        "INSERT INTO sms_message_parcels (sms_id, waybill, brand, arrival_id, pickup_code)"
        " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
        [(p.sms_id, x.waybill, x.brand, x.arrival_id, x.pickup_code) for x in p.parcels])
    ids = [x.arrival_id for x in p.parcels]
    if p.kind == "arrival":
        rows = await conn.fetch(
            "UPDATE sms_arrivals a SET arrival_sms = $1, digest_id = NULL FROM sms_arrivals old"
            " WHERE old.arrival_id = a.arrival_id AND a.arrival_id = ANY($2::text[])"
            " AND a.arrival_sms IS NULL RETURNING old.digest_id", p.sms_id, ids)
        await conn.execute("DELETE FROM sms_digests WHERE digest_id = $1", p.sms_id)
        await _drop_if_empty(conn, [r["digest_id"] for r in rows if r["digest_id"]])
        # A parcel that joined this digest after its SMS was decided (it reached the journal in
        # the moment between) is not in it: it starts a digest of its own.
        for late in await conn.fetch(
                "UPDATE sms_arrivals SET digest_id = NULL WHERE digest_id = $1 AND waiting"
                " AND arrival_sms IS NULL RETURNING *", p.sms_id):
            await _plan(conn, county, late)
    else:
        await conn.execute(
            "UPDATE sms_arrivals SET reminders = greatest(reminders, $1) WHERE arrival_id = ANY($2::text[])",
            p.stage + 1, ids)
        if p.stage + 1 >= len(county.sms.reminder_hours):  # the last one: over to the keeper
            await conn.execute(
                "UPDATE sms_arrivals SET call_reason = coalesce(call_reason, 'no_pickup_after_reminders')"
                " WHERE arrival_id = ANY($1::text[]) AND waiting", ids)


# ------------------------------------------------------------------------------ decisions (now)


async def close_due(conn: asyncpg.Connection, county: County, now: datetime,
                    grace: timedelta = timedelta(seconds=2)) -> int:
    """Request the SMS of every digest that has closed and every reminder that is due; returns
    how many were requested. The requests land in the journal; state follows when read back."""
    policy = county.sms
    out: list[Envelope] = []
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", SMS_LOCK):
            return 0
        await use_all_brands(conn)
        for d in await conn.fetch("SELECT * FROM sms_digests WHERE closes_at <= $1 ORDER BY closes_at",
                                  now - grace):
            arrivals = await conn.fetch(
                "SELECT a.*, r.consent, r.sealed_phone FROM sms_arrivals a"
                " JOIN sms_recipients r USING (waybill)"
                " WHERE a.digest_id = $1 AND a.waiting AND a.arrival_sms IS NULL", d["digest_id"])
            if not arrivals:
                await conn.execute("DELETE FROM sms_digests WHERE digest_id = $1", d["digest_id"])
                continue
            try:
                out.append(_request(county, "arrival", 0, d["digest_id"], d["node_id"],
                                    arrivals, now))
            except (ValueError, KeyError, PhoneErased) as exc:  # ValidationError is a ValueError
                await _cannot_compose(conn, d["digest_id"], [a["arrival_id"] for a in arrivals], exc)
        rows = await conn.fetch(
            "SELECT a.*, r.consent, r.phone_ref, r.sealed_phone, (SELECT max(m.submitted_at)"
            "  FROM sms_messages m"
            "  JOIN sms_message_parcels mp ON mp.sms_id = m.sms_id"
            "  WHERE mp.arrival_id = a.arrival_id AND m.state IN ('submitted', 'delivered')"
            " ) AS last_sms_at FROM sms_arrivals a JOIN sms_recipients r USING (waybill)"
            " WHERE a.waiting AND a.arrival_sms IS NOT NULL AND a.reminders < $1"
            " AND a.stored_at <= $2", len(policy.reminder_hours),
            now - timedelta(hours=policy.reminder_hours[0]))
        by_id = {r["arrival_id"]: r for r in rows}
        waiting = [rules.Waiting(r["arrival_id"], r["phone_ref"], r["node_id"], r["stored_at"],
                                 r["reminders"], r["last_sms_at"]) for r in rows]
        for (_ref, node_id, stage), group in rules.due_reminders(
                waiting, now, policy, county.utc_offset_minutes).items():
            first = min(w.arrival_id for w in group)
            try:
                out.append(_request(county, "reminder", stage,
                                    rules.derived_id("reminder", str(stage), first), node_id,
                                    [by_id[w.arrival_id] for w in group], now))
            except (ValueError, KeyError, PhoneErased) as exc:
                await _cannot_compose(conn, "", [w.arrival_id for w in group], exc)
        await journal.append(conn, out)
    return len(out)


async def _cannot_compose(conn: asyncpg.Connection, digest_id: str, arrival_ids: list[str],
                          exc: Exception) -> None:
    """An SMS that cannot be composed (a point gone from the county file, say) would fail every
    round: its parcels go to the keeper's call list instead, and the digest is dropped."""
    erased = isinstance(exc, PhoneErased)
    log.log(logging.INFO if erased else logging.ERROR,
            "digest %s: cannot compose its SMS (%s); its parcels go on the call list",
            digest_id, type(exc).__name__)
    await conn.execute(
        "UPDATE sms_arrivals SET digest_id = NULL, call_reason = coalesce(call_reason, $2)"
        " WHERE arrival_id = ANY($1::text[])",
        arrival_ids, "phone_erased" if erased else "sms_not_composed")
    await conn.execute("DELETE FROM sms_digests WHERE digest_id = $1", digest_id)


def _request(county: County, kind: str, stage: int, sms_id: str, node_id: str,
             arrivals: Sequence[asyncpg.Record], now: datetime) -> Envelope:
    """The SMS for these arrivals (of one number). Its masked form and last four come from the
    sealed object's readable `masked`; an erased number cannot be composed (KeyError): its
    parcels go to the keeper."""
    policy = county.sms
    stored = arrivals[0]["sealed_phone"] or {}
    if stored.get("erased") or "masked" not in stored:
        raise PhoneErased("the number was erased")
    masked = str(stored["masked"])
    parcels = [rules.Parcel(a["waybill"], a["brand"], a["pickup_code"]) for a in arrivals]
    consented = all(a["consent"] is True for a in arrivals)
    oldest = min(a["stored_at"] for a in arrivals)
    message = rules.compose(kind, parcels, county.nodes[node_id].name, policy, consented=consented,
                            days=max(1, (now - oldest).days), phone_last4=masked[-4:])
    payload = SmsRequested(
        sms_id=sms_id, kind=kind, stage=stage, node_id=node_id,  # type: ignore[arg-type]
        phone_masked=masked,
        parcels=tuple(SmsParcel(waybill=a["waybill"], brand=a["brand"], arrival_id=a["arrival_id"],
                                pickup_code=a["pickup_code"]) for a in arrivals),
        consented=consented, template_code=message.template, params=message.params,
        text=message.text, segments=message.segments,
        send_after=rules.release_at(now, policy, county.utc_offset_minutes),
        first_known_at=min(a["known_at"] for a in arrivals))
    return platform_event("sms.requested", payload, rules.derived_id("sms.requested", sms_id),
                          arrivals[0]["brand"], now)


# ------------------------------------------------------------------------------------- sending


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


async def due_messages(conn: asyncpg.Connection, now: datetime, limit: int = 50) -> list[Outgoing]:
    async with conn.transaction():
        await use_all_brands(conn)
        rows = await conn.fetch(
            "SELECT m.*, (SELECT brand FROM sms_message_parcels p WHERE p.sms_id = m.sms_id LIMIT 1)"
            " AS brand, EXISTS (SELECT 1 FROM sms_message_parcels p JOIN sms_arrivals a"
            " ON a.arrival_id = p.arrival_id WHERE p.sms_id = m.sms_id AND a.waiting) AS waiting"
            " FROM sms_messages m WHERE state = 'requested' AND send_after <= $1"
            " AND next_attempt_at <= $1 ORDER BY send_after, sms_id LIMIT $2", now, limit)
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


async def reset(conn: asyncpg.Connection) -> None:
    """Empty the SMS state (not the log of provider calls), ready to be rebuilt from the journal."""
    async with conn.transaction():
        await use_all_brands(conn)
        for table in TABLES:
            await conn.execute(f"DELETE FROM {table}")  # table names come from TABLES


# ------------------------------------------------------------------------------------- receipts


@dataclass(frozen=True)
class Receipt:
    """A provider's delivery report, as every provider's push is read into. Aliyun's names our
    message (out_id); Tencent's only its own id for it (SerialNo), out_id is then empty."""

    out_id: str
    message_id: str
    success: bool
    code: str
    at: datetime


async def receipt_events(conn: asyncpg.Connection, provider: str, receipts: Sequence[Receipt],
                         now: datetime) -> tuple[list[Envelope], int]:
    """Journal events for delivery receipts, and how many named no SMS of ours. A receipt
    repeated (providers resend them for up to 72 h) derives the same event id: one event."""
    from domain.events import SmsDelivered, SmsFailed

    async with conn.transaction(readonly=True):
        await use_all_brands(conn)
        rows = await conn.fetch(
            "SELECT m.sms_id, m.provider_message_id, (SELECT brand FROM sms_message_parcels p"
            " WHERE p.sms_id = m.sms_id LIMIT 1) AS brand FROM sms_messages m"
            " WHERE m.sms_id = ANY($1::text[])"
            " OR (split_part(m.provider, '-', 1) = $2 AND m.provider_message_id = ANY($3::text[]))",
            list({r.out_id for r in receipts if r.out_id}), provider,
            list({r.message_id for r in receipts if not r.out_id}))
    brands = {r["sms_id"]: r["brand"] or "" for r in rows}
    by_message = {r["provider_message_id"]: r["sms_id"] for r in rows if r["provider_message_id"]}
    out: list[Envelope] = []
    unknown = 0
    for r in receipts:
        sms_id = r.out_id or by_message.get(r.message_id, "")
        if sms_id not in brands:
            unknown += 1
            continue
        r = Receipt(sms_id, r.message_id, r.success, r.code, r.at)
        if r.success:
            payload: Any = SmsDelivered(sms_id=r.out_id, provider=provider,
                                        provider_message_id=r.message_id, delivered_at=r.at)
            event_id = rules.derived_id("sms.delivered", r.out_id)
        else:
            payload = SmsFailed(sms_id=r.out_id, provider=provider, provider_code=r.code,
                                permanent=True, stage="delivery")
            event_id = rules.derived_id("sms.failed", r.out_id, "delivery")
        event_type = "sms.delivered" if r.success else "sms.failed"
        out.append(platform_event(event_type, payload, event_id, brands[r.out_id], now))
    return out, unknown
