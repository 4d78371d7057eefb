"""SLA read models in PostgreSQL: legs per parcel, a daily aggregate per slice, run punctuality.

One transaction per fetched batch: the inbox dedupes by event_id; every parcel touched (directly,
or through a run it rode) is re-evaluated from all its events by the pure rules in domain/sla.py;
the daily slices those parcels count in are recounted; offsets are stored in the same transaction."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import timedelta, timezone
from typing import Any, ClassVar

import asyncpg

from domain.county import County
from domain.envelope import Envelope
from domain.sla import evaluate_parcel
from projections.locks import Lock
from projections.runtime import Applied, Base, Source, decode_envelope

CONSUMER = "sla"
SLA_TYPES = frozenset({"parcel.registered", "parcel.scanned", "vehicle.departed", "vehicle.arrived"})
_DIMS = ("day", "leg", "route_id", "township", "village", "brand")


class SlaProjection(Base):
    """The on-time legs of each parcel, their daily slices and the runs' punctuality, fed from
    Kafka (parcel and vehicle events)."""

    name = CONSUMER
    source = Source.KAFKA
    reads = SLA_TYPES
    lock = Lock.SLA_SWAP
    tables: ClassVar[Mapping[str, str]] = {"sla_events": "*", "sla_legs": "*", "sla_daily": "*", "sla_runs": "*"}

    def __init__(self, county: County) -> None:
        self.county = county

    def decode(self, seq: int, wire: dict[str, Any]) -> Envelope:
        return decode_envelope(seq, wire)

    async def apply(self, conn: asyncpg.Connection, items: Sequence[Envelope]) -> Applied:
        return await apply_events(conn, self.county, items)

    async def reset(self, conn: asyncpg.Connection) -> None:
        for table in self.tables:
            await conn.execute(f"DELETE FROM {table}")


async def apply_events(conn: asyncpg.Connection, county: County,
                       events: Sequence[Envelope]) -> Applied:
    """Fold a batch into the SLA read models (the caller's transaction)."""
    relevant = [e for e in events if e.type in SLA_TYPES]
    rows = await conn.fetch(
        "INSERT INTO sla_events (event_id, brand, waybill, trip_id, body)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::jsonb[])"
        " ON CONFLICT (event_id) DO NOTHING RETURNING event_id",
        [e.event_id for e in relevant], [e.brand for e in relevant],
        [getattr(e.payload, "waybill", None) for e in relevant],
        [getattr(e.payload, "trip_id", None) for e in relevant], [e.to_wire() for e in relevant])
    new_ids = {r["event_id"] for r in rows}
    new = [e for e in relevant if e.event_id in new_ids]
    moves = [e for e in new if e.type.startswith("vehicle.")]
    if moves:
        await _record_runs(conn, county, moves)
    dirty = {e.payload.waybill for e in new if e.type.startswith("parcel.")}  # type: ignore[attr-defined]
    if moves:
        dirty |= {r["waybill"] for r in await conn.fetch(
            "SELECT DISTINCT waybill FROM sla_events WHERE trip_id = ANY($1)"
            " AND waybill IS NOT NULL", list({e.payload.trip_id for e in moves}))}  # type: ignore[attr-defined]
    if dirty:
        await _reevaluate(conn, county, sorted(dirty))
    return Applied(new=len(new), duplicate=len(events) - len(new))


async def _record_runs(conn: asyncpg.Connection, county: County, moves: Sequence[Envelope]) -> None:
    tz = timezone(timedelta(minutes=county.utc_offset_minutes))
    await conn.executemany(
        "INSERT INTO sla_runs (trip_id, kind, node_id, route_id, run_id, scheduled_at, occurred_at,"
        " day, delay_minutes) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9)"
        " ON CONFLICT (trip_id, kind, node_id) DO NOTHING",
        [(m.payload.trip_id, m.type.split(".")[1], m.payload.node_id,  # type: ignore[attr-defined]
          m.payload.route_id, m.payload.run_id, m.payload.scheduled_at, m.occurred_at,  # type: ignore[attr-defined]
          m.payload.scheduled_at.astimezone(tz).date(),  # type: ignore[attr-defined]
          int((m.occurred_at - m.payload.scheduled_at).total_seconds() // 60))  # type: ignore[attr-defined]
         for m in moves])


async def _reevaluate(conn: asyncpg.Connection, county: County, waybills: list[str]) -> None:
    by_waybill: dict[str, list[Envelope]] = defaultdict(list)
    for r in await conn.fetch("SELECT waybill, body FROM sla_events WHERE waybill = ANY($1)", waybills):
        by_waybill[r["waybill"]].append(Envelope.from_wire(r["body"]))
    trip_ids = {getattr(e.payload, "trip_id", None) for evs in by_waybill.values() for e in evs} - {None}
    trips: dict[str, list[Envelope]] = defaultdict(list)
    for r in await conn.fetch("SELECT trip_id, body FROM sla_events WHERE trip_id = ANY($1)"
                              " AND waybill IS NULL", list(trip_ids)):
        trips[r["trip_id"]].append(Envelope.from_wire(r["body"]))
    legs = [o for w in waybills for o in evaluate_parcel(w, by_waybill[w], trips, county, county.sla)]
    old = await conn.fetch(f"SELECT DISTINCT {', '.join(_DIMS)} FROM sla_legs WHERE waybill = ANY($1)",
                           waybills)
    groups = {tuple(r[d] for d in _DIMS) for r in old}
    groups |= {(o.day, o.leg, o.route_id or "", o.township or "", o.village or "", o.brand) for o in legs}
    await conn.execute("DELETE FROM sla_legs WHERE waybill = ANY($1)", waybills)
    cols: list[list[Any]] = [[] for _ in range(16)]
    for o in legs:
        for col, v in zip(cols, (o.waybill, o.leg, o.brand, o.route_id or "", o.township or "",
                                 o.village or "", o.start_at, o.due_at, o.at_risk_at, o.end_at,
                                 o.outcome, o.minutes_over, o.cause, o.day, o.start_event,
                                 o.end_event)):
            col.append(v)
    await conn.execute(
        "INSERT INTO sla_legs (waybill, leg, brand, route_id, township, village, start_at, due_at,"
        " at_risk_at, end_at, outcome, minutes_over, cause, day, start_event, end_event)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
        " $6::text[], $7::timestamptz[], $8::timestamptz[], $9::timestamptz[], $10::timestamptz[],"
        " $11::text[], $12::int[], $13::text[], $14::date[], $15::text[], $16::text[])", *cols)
    keys = [list(k) for k in zip(*sorted(groups, key=str))] if groups else [[] for _ in _DIMS]
    slice_ = ("SELECT * FROM unnest($1::date[], $2::text[], $3::text[], $4::text[], $5::text[],"
              " $6::text[]) AS g(day, leg, route_id, township, village, brand)")
    await conn.execute(f"DELETE FROM sla_daily d USING ({slice_}) g WHERE "
                       + " AND ".join(f"d.{c} = g.{c}" for c in _DIMS), *keys)
    await conn.execute(
        f"INSERT INTO sla_daily SELECT l.day, l.leg, l.route_id, l.township, l.village, l.brand,"
        f" count(*) FILTER (WHERE l.outcome = 'on_time'), count(*) FILTER (WHERE l.outcome = 'late')"
        f" FROM sla_legs l JOIN ({slice_}) g ON " + " AND ".join(f"l.{c} = g.{c}" for c in _DIMS)
        + " WHERE l.outcome <> 'open' GROUP BY 1, 2, 3, 4, 5, 6", *keys)
