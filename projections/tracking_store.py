"""Tracking read model in PostgreSQL: the inbox of parcel events and each parcel's derived view.

One transaction per fetched batch: new events are inserted (their event_id dedupes redeliveries),
every touched parcel is re-derived from all its events (so order and duplicates never matter), and
the consumer offsets are stored in the same transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import asyncpg

from domain.county import County
from domain.envelope import Envelope
from domain.phone import last4, mask_phone
from domain.tracking import ParcelView, project_parcel, view_to_dict

PROJECTION = "tracking"


@dataclass(frozen=True)
class Applied:
    new: int
    duplicate: int


async def use_all_brands(conn: asyncpg.Connection) -> None:
    """Workers see every brand's rows (row-level security is scoped per transaction)."""
    await conn.execute("SELECT set_config('gongpei.brand_scope', '*', true)")


async def apply_batch(conn: asyncpg.Connection, county: County, events: Sequence[Envelope],
                      offsets: Mapping[tuple[str, int], int], consumer: str = PROJECTION) -> Applied:
    """Apply a batch of parcel events and record `offsets` (next offset per topic partition)."""
    async with conn.transaction():
        await use_all_brands(conn)
        parcel_events = [e for e in events if e.type.startswith(("parcel.", "consent."))]
        new_ids = await _insert_events(conn, parcel_events)
        touched = {e.payload.waybill for e in parcel_events if e.event_id in new_ids}  # type: ignore[attr-defined]
        if touched:
            await _rederive(conn, county, touched)
        if offsets:
            await conn.executemany(
                "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition) DO UPDATE"
                " SET next_offset = greatest(consumer_offsets.next_offset, EXCLUDED.next_offset),"
                " updated_at = now()",
                [(consumer, t, p, o) for (t, p), o in offsets.items()],
            )
    return Applied(new=len(new_ids), duplicate=len(events) - len(new_ids))


async def _insert_events(conn: asyncpg.Connection, events: Sequence[Envelope]) -> set[str]:
    if not events:
        return set()
    rows = await conn.fetch(
        "INSERT INTO tracking_events (event_id, waybill, brand, occurred_at, body)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::jsonb[])"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        [e.event_id for e in events], [e.payload.waybill for e in events],  # type: ignore[attr-defined]
        [e.brand for e in events], [e.occurred_at for e in events], [e.to_wire() for e in events],
    )
    return {r["event_id"] for r in rows}


async def _rederive(conn: asyncpg.Connection, county: County, waybills: Iterable[str]) -> None:
    rows = await conn.fetch(
        "SELECT waybill, body FROM tracking_events WHERE waybill = ANY($1::text[])", list(waybills)
    )
    by_waybill: dict[str, list[Envelope]] = defaultdict(list)
    for r in rows:
        by_waybill[r["waybill"]].append(Envelope.from_wire(r["body"]))
    params = [_parcel_row(project_parcel(evs, county), evs) for evs in by_waybill.values()]
    await conn.executemany(
        "INSERT INTO parcels (waybill, brand, status, public_code, destination_village,"
        " current_node, misrouted, phone_last4, phone_masked, last_event_at, view, updated_at)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11, now())"
        " ON CONFLICT (waybill) DO UPDATE SET brand = EXCLUDED.brand, status = EXCLUDED.status,"
        " public_code = EXCLUDED.public_code, destination_village = EXCLUDED.destination_village,"
        " current_node = EXCLUDED.current_node, misrouted = EXCLUDED.misrouted,"
        " phone_last4 = EXCLUDED.phone_last4, phone_masked = EXCLUDED.phone_masked,"
        " last_event_at = EXCLUDED.last_event_at, view = EXCLUDED.view, updated_at = now()",
        params,
    )


def _recipient_phone(events: Sequence[Envelope]) -> str | None:
    phones = [e for e in events if e.type == "parcel.registered"]
    if not phones:
        return None
    latest = max(phones, key=lambda e: (e.occurred_at, e.event_id))
    return str(latest.payload.recipient_phone)  # type: ignore[attr-defined]


def _parcel_row(view: ParcelView, events: Sequence[Envelope]) -> tuple[object, ...]:
    phone = _recipient_phone(events)
    return (
        view.waybill, view.brand, str(view.status), view.public_code, view.destination_village,
        view.current_node, view.misrouted, last4(phone) if phone else None,
        mask_phone(phone) if phone else None, view.last_event_at, view_to_dict(view),
    )


async def reset(conn: asyncpg.Connection, consumer: str = PROJECTION) -> None:
    """Empty the tracking read model and its offsets, ready for a rebuild from the journal."""
    async with conn.transaction():
        await use_all_brands(conn)
        await conn.execute("DELETE FROM parcels")
        await conn.execute("DELETE FROM tracking_events")
        await conn.execute("DELETE FROM consumer_offsets WHERE consumer = $1", consumer)


async def stored_offsets(conn: asyncpg.Connection, consumer: str = PROJECTION) -> dict[tuple[str, int], int]:
    rows = await conn.fetch(
        "SELECT topic, partition, next_offset FROM consumer_offsets WHERE consumer = $1", consumer
    )
    return {(r["topic"], r["partition"]): r["next_offset"] for r in rows}
