"""Tracking read model in PostgreSQL: the inbox of parcel events and each parcel's derived view.

One transaction per fetched batch: new events' ids are inserted into the inbox (their event_id
dedupes redeliveries; the inbox keeps no body, the timeline lives in the view),
every touched parcel's view is re-derived from its stored timeline plus the new events (the reducer
sorts by event time, so order and duplicates never matter), and the consumer offsets are stored in
the same transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import asyncpg

from domain.county import County
from domain.envelope import Envelope
from domain.events import PAYLOADS, SealedPhone
from domain.tracking import ParcelView, entries_from_view, entry_for, project_entries, view_to_dict
from projections.locks import Lock
from projections.runtime import Applied, EnvelopeProjection, use_all_brands

__all__ = ["Applied", "TrackingProjection", "apply_events", "reset", "use_all_brands"]

PROJECTION = "tracking"
# Every event about a parcel: the manifests, scans, sorting, pickup codes and consent.
TRACKING_TYPES = frozenset(t for t, _ in PAYLOADS if t.startswith(("parcel.", "consent.")))
PARCEL_COLUMNS = ("waybill, brand, status, public_code, destination_village, current_node,"
                  " misrouted, phone_last4, phone_masked, phone_key_id, last_event_at, view")


class TrackingProjection(EnvelopeProjection):
    """Each parcel's view (status, where it is, its timeline), fed from Kafka."""

    name = PROJECTION
    reads = TRACKING_TYPES
    lock = Lock.TRACKING_SWAP
    tables: ClassVar[Mapping[str, str]] = {"parcels": PARCEL_COLUMNS, "tracking_events": "*"}

    async def fold(self, conn: asyncpg.Connection, county: County,
                   events: Sequence[Envelope]) -> Applied:
        return await apply_events(conn, county, events)

    async def reset(self, conn: asyncpg.Connection) -> None:
        await reset(conn)


async def apply_events(conn: asyncpg.Connection, county: County,
                       events: Sequence[Envelope]) -> Applied:
    """Fold a batch of parcel events into the views (the caller's transaction)."""
    parcel_events = [e for e in events if e.type in TRACKING_TYPES]
    new_ids = await _insert_events(conn, parcel_events)
    fresh: dict[str, list[Envelope]] = defaultdict(list)
    for e in parcel_events:
        if e.event_id in new_ids:
            fresh[e.payload.waybill].append(e)  # type: ignore[attr-defined]
            new_ids.discard(e.event_id)  # a redelivery inside the batch counts once
    if fresh:
        await _fold(conn, county, fresh)
    applied = sum(map(len, fresh.values()))
    return Applied(new=applied, duplicate=len(events) - applied)


async def _insert_events(conn: asyncpg.Connection, events: Sequence[Envelope]) -> set[str]:
    if not events:
        return set()
    rows = await conn.fetch(
        "INSERT INTO tracking_events (event_id, waybill, brand, occurred_at)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        [e.event_id for e in events], [e.payload.waybill for e in events],  # type: ignore[attr-defined]
        [e.brand for e in events], [e.occurred_at for e in events],
    )
    return {r["event_id"] for r in rows}


async def _fold(conn: asyncpg.Connection, county: County,
                fresh: Mapping[str, Sequence[Envelope]]) -> None:
    """Fold new events into each parcel's stored view; the view's timeline is its whole history
    (kept in step with tracking_events in the same transaction), so nothing is re-read."""
    rows = await conn.fetch(
        "SELECT waybill, view, phone_last4, phone_masked, phone_key_id FROM parcels"
        " WHERE waybill = ANY($1)", list(fresh))
    stored = {r["waybill"]: r for r in rows}
    live = await _live_keys(conn, fresh)
    out: list[tuple[Any, ...]] = []
    for waybill, events in fresh.items():
        row = stored.get(waybill)
        entries = entries_from_view(row["view"]) if row else []
        view = project_entries(entries + [entry_for(e, county) for e in events], county, waybill)
        phone_last4, phone_masked, key_id = _phone_columns(view, events, row, live)
        out.append((view.waybill, view.brand, str(view.status), view.public_code,
                    view.destination_village, view.current_node, view.misrouted, phone_last4,
                    phone_masked, key_id, view.last_event_at, view_to_dict(view)))
    await conn.execute(
        "INSERT INTO parcels (waybill, brand, status, public_code, destination_village,"
        " current_node, misrouted, phone_last4, phone_masked, phone_key_id, last_event_at, view)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[], $5::text[],"
        " $6::text[], $7::bool[], $8::text[], $9::text[], $10::text[], $11::timestamptz[],"
        " $12::jsonb[])"
        " ON CONFLICT (waybill) DO UPDATE SET brand = EXCLUDED.brand, status = EXCLUDED.status,"
        " public_code = EXCLUDED.public_code, destination_village = EXCLUDED.destination_village,"
        " current_node = EXCLUDED.current_node, misrouted = EXCLUDED.misrouted,"
        " phone_last4 = EXCLUDED.phone_last4, phone_masked = EXCLUDED.phone_masked,"
        " phone_key_id = EXCLUDED.phone_key_id,"
        " last_event_at = EXCLUDED.last_event_at, view = EXCLUDED.view, updated_at = now()",
        *map(list, zip(*out)),
    )


def _sealed(e: Envelope) -> SealedPhone | None:
    if e.type != "parcel.registered":  # only manifests carry a phone; asking others is slow
        return None
    phone = getattr(e.payload, "recipient_phone", None)
    return phone if isinstance(phone, SealedPhone) else None


async def _live_keys(conn: asyncpg.Connection,
                     fresh: Mapping[str, Sequence[Envelope]]) -> set[str]:
    """Which of the new registrations' data keys still exist: a number erased or shredded must
    not come back into the read model when its registration is folded again (a rebuild)."""
    key_ids = [s.key_id for events in fresh.values() for e in events if (s := _sealed(e))]
    if not key_ids:
        return set()
    rows = await conn.fetch("SELECT key_id FROM pii_keys WHERE key_id = ANY($1::text[])", key_ids)
    return {r["key_id"] for r in rows}


def _phone_columns(view: ParcelView, events: Sequence[Envelope], row: asyncpg.Record | None,
                   live: set[str]) -> tuple[str | None, str | None, str | None]:
    """Last 4, masked phone and data key id from the registration the view follows (the latest
    one), taken from its readable `masked` form: tracking never opens a phone. A registration
    whose key was destroyed leaves them empty."""
    registrations = [t for t in view.timeline if t.type == "parcel.registered"]
    if registrations:
        latest_id = registrations[-1].event_id
        for e in events:
            sealed = _sealed(e)
            if e.event_id == latest_id and sealed is not None:
                if sealed.key_id not in live:
                    return None, None, sealed.key_id
                return sealed.masked[-4:], sealed.masked, sealed.key_id
    return ((row["phone_last4"], row["phone_masked"], row["phone_key_id"]) if row
            else (None, None, None))


async def reset(conn: asyncpg.Connection) -> None:
    """Empty the tracking read model (the runtime forgets its offsets)."""
    async with conn.transaction():
        await use_all_brands(conn)
        await conn.execute("DELETE FROM parcels")
        await conn.execute("DELETE FROM tracking_events")
