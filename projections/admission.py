"""Admission of validated uploads into the journal: duplicates, conflicting resends and waybill
ownership, all decided under the journal's append lock in the transaction that appends them."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import asyncpg

from domain.county import County
from domain.envelope import Envelope, content_digest
from domain.ownership import (
    OWNED_TYPES,
    Conflict,
    Owner,
    Refusal,
    Writer,
    decide,
    waybill_pattern_refusal,
)
from domain.phone import mask_phone
from infra.pii import Keyring, household, period_of, seal_events
from projections import journal, ownership_store
from projections.ownership_store import ConflictRecord, OwnerChange


class Verdict(StrEnum):
    accepted = "accepted"
    duplicate = "duplicate"
    conflict = "conflict"       # its event_id is in the journal with other content
    refused = "refused"         # ownership: see the Refusal


@dataclass
class Admission:
    """Per event id: the verdict, and the refusal where there is one."""

    verdicts: dict[str, Verdict] = field(default_factory=dict)
    refusals: dict[str, Refusal] = field(default_factory=dict)
    conflicts: list[ConflictRecord] = field(default_factory=list)


@dataclass(frozen=True)
class Uploader:
    """The token behind an upload, as conflicts record it."""

    writer: Writer
    token_id: int
    device_id: str


def _waybill(e: Envelope) -> str | None:
    return getattr(e.payload, "waybill", None) if e.type in OWNED_TYPES else None


def evidence(e: Envelope) -> dict[str, Any]:
    """A refused event as kept for the manager: as sent, but never with a readable phone."""
    wire = e.to_wire()
    payload = dict(wire["payload"])
    for key in ("recipient_phone", "phone"):
        value = payload.get(key)
        if isinstance(value, str):
            payload[key] = mask_phone(value)
        elif isinstance(value, dict):
            payload[key] = value.get("masked")
    return {**wire, "payload": payload}


async def admit(conn: asyncpg.Connection, county: County, uploader: Uploader,
                events: Sequence[Envelope], keyring: Keyring) -> Admission:
    """Decide every event and write what follows: the new events to the journal (phones sealed),
    the owners they make, the conflicts they raise. The caller's transaction makes it one atomic
    step."""
    out = Admission()
    await journal.lock(conn)
    digests = {e.event_id: await _digest(conn, keyring, e) for e in events}
    known = await journal.known_digests(conn, [e.event_id for e in events])
    owners = await ownership_store.owners(conn, filter(None, map(_waybill, events)))
    changes: dict[str, OwnerChange] = {}
    to_append: list[Envelope] = []
    for e in events:
        if e.event_id in known:
            if known[e.event_id] is not None and known[e.event_id] == digests.get(e.event_id):
                out.verdicts[e.event_id] = Verdict.duplicate
                continue
            out.verdicts[e.event_id] = Verdict.conflict
            out.conflicts.append(_record(Conflict.event_id_reused, e, None, uploader))
            continue
        waybill = _waybill(e)
        if waybill is not None:
            refusal = waybill_pattern_refusal(waybill, e.brand, county.waybill_patterns)
            if refusal is None:
                before = owners.get(waybill)
                decision = decide(e.type, e.brand, waybill,
                                  getattr(e.payload, "destination_village", None), before,
                                  uploader.writer)
                refusal = decision.refusal
                if refusal is None and decision.owner is not None and decision.owner != before:
                    owners[waybill] = decision.owner
                    first = changes.get(waybill)
                    changes[waybill] = OwnerChange(decision.owner,
                                                   first.event_id if first else e.event_id,
                                                   e.recorded_at)
                elif refusal is not None and refusal.conflict is not None:
                    out.conflicts.append(_record(refusal.conflict, e, before, uploader))
            if refusal is not None:
                out.verdicts[e.event_id] = Verdict.refused
                out.refusals[e.event_id] = refusal
                continue
        out.verdicts[e.event_id] = Verdict.accepted
        to_append.append(e)
    new = await journal.append(conn, await seal_events(conn, keyring, to_append), digests)
    assert new == {e.event_id for e in to_append}, "appends are serialised: all must be new"
    await ownership_store.save_owners(conn, list(changes.values()))
    await ownership_store.record_conflicts(conn, out.conflicts)
    return out


async def _digest(conn: asyncpg.Connection, keyring: Keyring, e: Envelope) -> bytes:
    """The content digest, a phone entering it as its keyed hash in the month the event happened
    (a resend carries the same occurred_at, so the same month's key, whenever it is sent)."""
    wire = e.to_wire()
    if not e.unsealed:
        return content_digest(wire)
    keys = await keyring.period_keys(conn, period_of(e.occurred_at, keyring.utc_offset_minutes))
    return content_digest(wire, phone_ref=lambda phone: household(keys.hash_key, str(phone)))


def _record(kind: Conflict, e: Envelope, owner: Owner | None, uploader: Uploader) -> ConflictRecord:
    return ConflictRecord(kind, e.event_id, e.type, _waybill(e), owner.brand if owner else None,
                          e.brand, uploader.token_id, uploader.device_id, e.recorded_at, evidence(e))
