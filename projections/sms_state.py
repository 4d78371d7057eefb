"""The SMS planner's state in PostgreSQL: the `PlanStore` of domain/sms_planning.py over one
connection, inside the planner's transaction. SQL only; what to do is decided in the domain.

Rows never hold a phone number: the sealed object from the registration (only the sender opens
it, at the moment of a provider call) and `phone_ref`, a reference to the number the service
derives with its own key, to group digests and count the daily budget (the same across months,
unlike the events' per-month household hash). The number is opened in memory to derive it when a
registration is applied; a number already erased gets the reference `erased:<key id>`."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import asyncpg

from domain.events import SealedPhone, SmsDelivered, SmsFailed, SmsRequested, SmsSubmitted
from domain.sms_planning import ERASED, Arrival, Candidate, Digest, Recipient, without_last4
from infra.pii import Keyring, KeyUnavailable, PhoneErased

log = logging.getLogger("gongpei.sms")
# Every table of the planner's state (not the log of provider calls, `sms_attempts`).
TABLES = ("sms_message_parcels", "sms_messages", "sms_digests", "sms_arrivals", "sms_points",
          "sms_recipients")


def erased_stub(key_id: str, waybill: str) -> dict[str, Any]:
    """What the SMS tables keep of a sealed phone whose key is destroyed: which key it was."""
    return {"key_id": key_id, "waybill": waybill, "erased": True}


def _arrival(r: asyncpg.Record) -> Arrival:
    return Arrival(r["arrival_id"], r["waybill"], r["brand"], r["node_id"], r["stored_at"],
                   r["known_at"], r["pickup_code"])


def _candidate(r: asyncpg.Record) -> Candidate:
    return Candidate(r["arrival_id"], r["waybill"], r["brand"], r["node_id"], r["pickup_code"],
                     r["stored_at"], r["known_at"], r["consent"], r["sealed_phone"],
                     r.get("phone_ref") or "", r["reminders"], r.get("last_sms_at"))


class PgPlanStore:
    """The planner's state over `conn` (the caller holds the transaction and the planner's
    lock). `keys` open a registration's phone, once, to derive its reference (None: this store
    applies no registration)."""

    def __init__(self, conn: asyncpg.Connection, keys: Keyring | None) -> None:
        self.conn = conn
        self.keys = keys

    # ----------------------------------------------------------------------------- recipients

    async def register(self, waybill: str, brand: str, sealed: SealedPhone,
                       registered_at: datetime, known_at: datetime) -> None:
        stored, ref = await self._reference(sealed, waybill)
        await self.conn.execute(
            "INSERT INTO sms_recipients (waybill, brand, sealed_phone, phone_ref, registered_at,"
            " known_at) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (waybill) DO UPDATE"
            " SET brand = $2, sealed_phone = $3, phone_ref = $4, registered_at = $5, known_at = $6"
            " WHERE sms_recipients.registered_at IS NULL OR sms_recipients.registered_at <= $5",
            waybill, brand, stored, ref, registered_at, known_at)

    async def _reference(self, sealed: SealedPhone, waybill: str) -> tuple[dict[str, Any], str]:
        """The sealed phone as the SMS tables keep it (with the waybill it is bound to) and its
        grouping reference. The number is opened only to derive the reference, and not kept."""
        if self.keys is None:
            raise KeyUnavailable("no keys to derive a phone reference with")
        try:
            ref = self.keys.phone_ref(await self.keys.open(self.conn, sealed, waybill))
        except PhoneErased:
            return erased_stub(sealed.key_id, waybill), f"erased:{sealed.key_id}"
        return {**sealed.model_dump(), "waybill": waybill}, ref

    async def record_consent(self, waybill: str, consent: bool, at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO sms_recipients (waybill, consent, consent_at) VALUES ($1, $2, $3)"
            " ON CONFLICT (waybill) DO UPDATE SET consent = $2, consent_at = $3"
            " WHERE sms_recipients.consent_at IS NULL OR sms_recipients.consent_at <= $3",
            waybill, consent, at)

    async def record_collection(self, waybill: str, by: str, at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO sms_recipients (waybill, collected_at, collected_by) VALUES ($1, $2, $3)"
            " ON CONFLICT (waybill) DO UPDATE SET collected_at = $2, collected_by = $3"
            " WHERE sms_recipients.collected_at IS NULL OR sms_recipients.collected_at <= $2",
            waybill, at, by)

    async def recipient(self, waybill: str) -> Recipient | None:
        r = await self.conn.fetchrow(
            "SELECT phone_ref, known_at, collected_at, collected_by FROM sms_recipients"
            " WHERE waybill = $1", waybill)
        return None if r is None else Recipient(r["phone_ref"], r["known_at"], r["collected_at"],
                                                r["collected_by"])

    # ----------------------------------------------------------------- arrivals and pickup codes

    async def waiting_at(self, waybill: str, node_id: str) -> bool:
        return bool(await self.conn.fetchval(
            "SELECT 1 FROM sms_arrivals WHERE waybill = $1 AND node_id = $2 AND waiting",
            waybill, node_id))

    async def add_arrival(self, arrival: Arrival, closed_at: datetime | None,
                          closed_by: str | None) -> bool:
        a = arrival
        return await self.conn.fetchval(
            "INSERT INTO sms_arrivals (arrival_id, waybill, brand, node_id, stored_at, known_at,"
            " pickup_code, waiting, closed_at, closed_by)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"
            " ON CONFLICT (arrival_id) DO NOTHING RETURNING true",
            a.arrival_id, a.waybill, a.brand, a.node_id, a.stored_at, a.known_at, a.pickup_code,
            closed_at is None, closed_at, closed_by) is not None

    async def unplanned(self, waybill: str) -> list[Arrival]:
        return [_arrival(r) for r in await self.conn.fetch(
            "SELECT * FROM sms_arrivals WHERE waybill = $1 AND waiting AND digest_id IS NULL"
            " AND arrival_sms IS NULL", waybill)]

    async def close_arrivals(self, waybill: str, at: datetime, by: str) -> None:
        """End the parcel's waiting arrivals stored by `at` (no more SMS or reminders for them),
        and drop the digests that they leave empty."""
        rows = await self.conn.fetch(
            "UPDATE sms_arrivals a SET waiting = false, closed_at = $2, closed_by = $3,"
            " digest_id = NULL FROM sms_arrivals old WHERE old.arrival_id = a.arrival_id"
            " AND a.waybill = $1 AND a.waiting AND a.stored_at <= $2 RETURNING old.digest_id",
            waybill, at, by)
        await self._drop_if_empty([r["digest_id"] for r in rows if r["digest_id"]])

    async def _drop_if_empty(self, digest_ids: list[str]) -> None:
        if digest_ids:
            await self.conn.execute(
                "DELETE FROM sms_digests d WHERE d.digest_id = ANY($1::text[]) AND NOT EXISTS"
                " (SELECT 1 FROM sms_arrivals a WHERE a.digest_id = d.digest_id)", digest_ids)

    async def reserve_codes(self, node_id: str) -> tuple[int, set[str]]:
        """The point's next running number (its row locked until the commit) and the codes of
        the parcels still waiting there."""
        await self.conn.execute(
            "INSERT INTO sms_points (node_id) VALUES ($1) ON CONFLICT DO NOTHING", node_id)
        next_n = await self.conn.fetchval(
            "SELECT next_n FROM sms_points WHERE node_id = $1 FOR UPDATE", node_id)
        in_use = {r["pickup_code"] for r in await self.conn.fetch(
            "SELECT pickup_code FROM sms_arrivals WHERE node_id = $1 AND waiting"
            " AND pickup_code IS NOT NULL", node_id)}
        return int(next_n), in_use

    async def set_next_code(self, node_id: str, next_n: int) -> None:
        await self.conn.execute("UPDATE sms_points SET next_n = $2 WHERE node_id = $1",
                                node_id, next_n)

    async def set_pickup_code(self, arrival_id: str, code: str) -> None:
        await self.conn.execute("UPDATE sms_arrivals SET pickup_code = $2 WHERE arrival_id = $1",
                                arrival_id, code)

    # -------------------------------------------------------------------------------- digests

    async def latest_digest(self, phone_ref: str, node_id: str) -> Digest | None:
        r = await self.conn.fetchrow(
            "SELECT digest_id, node_id, closes_at FROM sms_digests WHERE phone_ref = $1"
            " AND node_id = $2 ORDER BY closes_at DESC LIMIT 1", phone_ref, node_id)
        return None if r is None else Digest(r["digest_id"], r["node_id"], r["closes_at"])

    async def digest_size(self, digest_id: str) -> int:
        return int(await self.conn.fetchval(
            "SELECT count(*) FROM sms_arrivals WHERE digest_id = $1", digest_id))

    async def open_digest(self, digest: Digest, phone_ref: str, opened_at: datetime) -> None:
        await self.conn.execute(
            "INSERT INTO sms_digests (digest_id, node_id, phone_ref, opened_at, closes_at)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            digest.digest_id, digest.node_id, phone_ref, opened_at, digest.closes_at)

    async def put_in_digest(self, arrival_id: str, digest_id: str, known_at: datetime) -> None:
        await self.conn.execute(
            "UPDATE sms_arrivals SET digest_id = $2, known_at = $3 WHERE arrival_id = $1",
            arrival_id, digest_id, known_at)

    async def due_digests(self, before: datetime) -> list[Digest]:
        return [Digest(r["digest_id"], r["node_id"], r["closes_at"]) for r in await self.conn.fetch(
            "SELECT digest_id, node_id, closes_at FROM sms_digests WHERE closes_at <= $1"
            " ORDER BY closes_at", before)]

    async def next_close(self) -> datetime | None:
        closes: datetime | None = await self.conn.fetchval(
            "SELECT min(closes_at) FROM sms_digests")
        return closes

    async def digest_parcels(self, digest_id: str) -> list[Candidate]:
        return [_candidate(r) for r in await self.conn.fetch(
            "SELECT a.*, r.consent, r.sealed_phone FROM sms_arrivals a"
            " JOIN sms_recipients r USING (waybill)"
            " WHERE a.digest_id = $1 AND a.waiting AND a.arrival_sms IS NULL", digest_id)]

    async def drop_digest(self, digest_id: str) -> None:
        await self.conn.execute("DELETE FROM sms_digests WHERE digest_id = $1", digest_id)

    async def reminder_candidates(self, stages: int, stored_by: datetime) -> list[Candidate]:
        """Waiting parcels already announced, with fewer than `stages` reminders, stored by
        `stored_by`, and when the last SMS about each reached a provider."""
        return [_candidate(r) for r in await self.conn.fetch(
            "SELECT a.*, r.consent, r.phone_ref, r.sealed_phone, (SELECT max(m.submitted_at)"
            "  FROM sms_messages m"
            "  JOIN sms_message_parcels mp ON mp.sms_id = m.sms_id"
            "  WHERE mp.arrival_id = a.arrival_id AND m.state IN ('submitted', 'delivered')"
            " ) AS last_sms_at FROM sms_arrivals a JOIN sms_recipients r USING (waybill)"
            " WHERE a.waiting AND a.arrival_sms IS NOT NULL AND a.reminders < $1"
            " AND a.stored_at <= $2", stages, stored_by)]

    async def cannot_compose(self, digest_id: str, arrival_ids: list[str], reason: str,
                             error: str) -> None:
        log.log(logging.INFO if reason == "phone_erased" else logging.ERROR,
                "digest %s: cannot compose its SMS (%s); its parcels go on the call list",
                digest_id, error)
        await self.conn.execute(
            "UPDATE sms_arrivals SET digest_id = NULL, call_reason = coalesce(call_reason, $2)"
            " WHERE arrival_id = ANY($1::text[])", arrival_ids, reason)
        await self.drop_digest(digest_id)

    # ------------------------------------------------------------------------------- messages

    async def add_message(self, p: SmsRequested, requested_at: datetime) -> bool:
        """The requested SMS as the sender's queue holds it; False if it was already there."""
        # The number of the message is its first parcel's (every parcel in it has the same one).
        recipient = await self.conn.fetchrow(
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
            text = without_last4(text)
            params = {k: without_last4(v) for k, v in params.items()}
        inserted = await self.conn.fetchval(
            "INSERT INTO sms_messages (sms_id, kind, stage, node_id, sealed_phone, phone_ref,"
            " phone_masked, text, template_code, params, segments, consented, send_after,"
            " first_known_at, requested_at, state, next_attempt_at) VALUES ($1, $2, $3, $4, $5,"
            " $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, 'requested', $13)"
            " ON CONFLICT (sms_id) DO NOTHING RETURNING 1",
            p.sms_id, p.kind, p.stage, p.node_id, sealed, ref, masked, text, p.template_code,
            params, p.segments, p.consented, p.send_after, p.first_known_at, requested_at)
        if not inserted:
            return False
        await self.conn.executemany(
            "INSERT INTO sms_message_parcels (sms_id, waybill, brand, arrival_id, pickup_code)"
            " VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
            [(p.sms_id, x.waybill, x.brand, x.arrival_id, x.pickup_code) for x in p.parcels])
        return True

    async def announced(self, sms_id: str, arrival_ids: list[str]) -> list[Arrival]:
        """Mark the arrivals as announced by `sms_id` and close its digest; returns the parcels
        that were in that digest but not in the SMS (they need a digest of their own)."""
        rows = await self.conn.fetch(
            "UPDATE sms_arrivals a SET arrival_sms = $1, digest_id = NULL FROM sms_arrivals old"
            " WHERE old.arrival_id = a.arrival_id AND a.arrival_id = ANY($2::text[])"
            " AND a.arrival_sms IS NULL RETURNING old.digest_id", sms_id, arrival_ids)
        await self.drop_digest(sms_id)
        await self._drop_if_empty([r["digest_id"] for r in rows if r["digest_id"]])
        return [_arrival(r) for r in await self.conn.fetch(
            "UPDATE sms_arrivals SET digest_id = NULL WHERE digest_id = $1 AND waiting"
            " AND arrival_sms IS NULL RETURNING *", sms_id)]

    async def reminded(self, arrival_ids: list[str], reminders: int) -> None:
        await self.conn.execute(
            "UPDATE sms_arrivals SET reminders = greatest(reminders, $1)"
            " WHERE arrival_id = ANY($2::text[])", reminders, arrival_ids)

    async def to_call_list(self, arrival_ids: list[str], reason: str) -> None:
        await self.conn.execute(
            "UPDATE sms_arrivals SET call_reason = coalesce(call_reason, $2)"
            " WHERE arrival_id = ANY($1::text[]) AND waiting", arrival_ids, reason)

    async def submitted(self, p: SmsSubmitted, at: datetime) -> None:
        await self.conn.execute(
            "UPDATE sms_messages SET state = 'submitted', provider = $2, provider_message_id = $3,"
            " submitted_at = $4 WHERE sms_id = $1 AND state = 'requested'",
            p.sms_id, p.provider, p.provider_message_id, at)
        # A receipt may have come first: it keeps its state, and learns when we submitted.
        await self.conn.execute(
            "UPDATE sms_messages SET submitted_at = coalesce(submitted_at, $2),"
            " provider_message_id = coalesce(provider_message_id, $3) WHERE sms_id = $1",
            p.sms_id, at, p.provider_message_id)

    async def delivered(self, p: SmsDelivered) -> None:
        # A receipt can beat the sender's own record (a crash between the call and the record):
        # the provider has it, so it was submitted, at the latest when it was delivered.
        await self.conn.execute(
            "UPDATE sms_messages SET state = 'delivered', delivered_at = $2, provider = $3,"
            " provider_message_id = $4, submitted_at = coalesce(submitted_at, $2)"
            " WHERE sms_id = $1", p.sms_id, p.delivered_at, p.provider, p.provider_message_id)

    async def failed(self, p: SmsFailed) -> None:
        if p.stage == "cancelled":
            await self.conn.execute(
                "UPDATE sms_messages SET state = 'cancelled', failure_code = $2 WHERE sms_id = $1"
                " AND state = 'requested'", p.sms_id, p.provider_code)
            return
        await self.conn.execute(
            "UPDATE sms_messages SET state = 'failed', failure_code = $2, permanent = $3,"
            " provider = $4 WHERE sms_id = $1 AND state <> 'delivered'",
            p.sms_id, p.provider_code, p.permanent, p.provider)
        await self.conn.execute(
            "UPDATE sms_arrivals a SET call_reason = $2 FROM sms_message_parcels m"
            " WHERE m.sms_id = $1 AND a.arrival_id = m.arrival_id AND a.waiting",
            p.sms_id, f"sms_failed:{p.provider_code}")
