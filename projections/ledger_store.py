"""The settlement ledger in PostgreSQL, kept by applying the journal in seq order.

Closed periods need a total order (did an event come before or after the close?); Kafka gives
order per key only, so this projection reads the journal itself, from a cursor stored in the same
transaction as the lines it produced. Live and rebuilt ledgers are the same function of the same
ordered input, hence identical.

Per unit (a parcel or a trip) the lines in open periods are replaced by what the rules say now.
Lines in closed periods never change (PostgreSQL refuses); each event that changes what a closed
period should have held gets its own adjustment entry in the earliest open period after it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import date, timedelta, timezone
from typing import Any

import asyncpg

from domain.county import County
from domain.envelope import Envelope
from domain.money import Fen
from domain.settlement.config import Period
from domain.settlement.rules import (
    Line,
    TripManifest,
    parcel_lines,
    trip_lines,
    volume_discount_lines,
)
from projections.tracking_store import use_all_brands

LEDGER_TYPES = ("parcel.registered", "parcel.scanned", "vehicle.departed", "period.closed")
LEDGER_LOCK = 7710004
Seqd = tuple[int, Envelope]


async def catch_up(conn: asyncpg.Connection, county: County, page: int = 2000,
                   lock: int = LEDGER_LOCK) -> int:
    """Apply every journal event not yet in the ledger; returns how many were applied."""
    total = 0
    while (n := await _apply_page(conn, county, page, lock)) > 0:
        total += n
        if n < page:
            break
    return total


async def _apply_page(conn: asyncpg.Connection, county: County, page: int, lock: int) -> int:
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", lock):
            return 0  # another worker is at it
        await use_all_brands(conn)
        await conn.execute("INSERT INTO ledger_cursor (name) VALUES ('ledger') ON CONFLICT DO NOTHING")
        cursor = await conn.fetchval("SELECT seq FROM ledger_cursor WHERE name = 'ledger'")
        rows = await conn.fetch(
            "SELECT seq, type, body FROM journal WHERE seq > $1 AND type = ANY($2::text[])"
            " ORDER BY seq LIMIT $3", cursor, list(LEDGER_TYPES), page)
        if not rows:
            return 0
        segment: list[Seqd] = []
        for r in rows:
            event = Envelope.from_wire(r["body"])
            if event.type == "period.closed":
                await _apply_segment(conn, county, segment)
                segment = []
                await _close(conn, county, r["seq"], event)
            else:
                segment.append((r["seq"], event))
        await _apply_segment(conn, county, segment)
        await conn.execute("UPDATE ledger_cursor SET seq = $1 WHERE name = 'ledger'", rows[-1]["seq"])
        return len(rows)


def _waybill(e: Envelope) -> str | None:
    return getattr(e.payload, "waybill", None)


def _trip(e: Envelope) -> str | None:
    return getattr(e.payload, "trip_id", None)


async def _apply_segment(conn: asyncpg.Connection, county: County, segment: Sequence[Seqd]) -> None:
    if not segment:
        return
    await conn.executemany(
        "INSERT INTO settlement_events (seq, event_id, type, brand, waybill, trip_id, body)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (event_id) DO NOTHING",
        [(s, e.event_id, e.type, e.brand, _waybill(e), _trip(e), e.to_wire()) for s, e in segment])
    new: dict[str, list[Seqd]] = defaultdict(list)
    registered: dict[str, list[Seqd]] = defaultdict(list)
    for s, e in segment:
        if (w := _waybill(e)) is not None:
            new[f"parcel:{w}"].append((s, e))
            if e.type == "parcel.registered":
                registered[w].append((s, e))
        if (t := _trip(e)) is not None:
            new[f"trip:{t}"].append((s, e))
    if registered:  # a manifest's weight and size change the shares of every trip it rode
        for r in await conn.fetch(
                "SELECT DISTINCT waybill, trip_id FROM settlement_events WHERE waybill = ANY($1)"
                " AND trip_id IS NOT NULL", list(registered)):
            new[f"trip:{r['trip_id']}"].extend(registered[r["waybill"]])
    inputs = await _load_inputs(conn, list(new))
    periods = {r["period"]: r for r in await conn.fetch("SELECT * FROM ledger_periods")}
    closed = {p for p, r in periods.items() if r["closed_seq"] is not None}
    current = await conn.fetch("SELECT * FROM ledger_lines WHERE unit = ANY($1)", list(new))
    by_unit: dict[str, list[asyncpg.Record]] = defaultdict(list)
    for r in current:
        by_unit[r["unit"]].append(r)

    inserts: list[Line] = []
    adjustments: list[tuple[Line, str, str]] = []
    for unit in sorted(new):
        desired = compute(unit, inputs[unit], county)
        inserts += [line for line in desired if line.period not in closed]
        frozen = [r for r in by_unit[unit] if r["period"] in closed]
        if frozen or any(line.period in closed for line in desired):
            adjustments += _late_adjustments(unit, inputs[unit], new[unit], closed, county)
    open_periods = [p for p in periods if p not in closed]
    await conn.execute(
        "DELETE FROM ledger_lines WHERE unit = ANY($1) AND adjusts_period IS NULL"
        " AND period = ANY($2)", list(new), open_periods + [line.period for line in inserts])
    plain: list[tuple[Line, str | None, str | None]] = [(line, None, None) for line in inserts]
    await _insert(conn, county, plain + list(adjustments), periods)


def compute(unit: str, inputs: Sequence[Seqd], county: County) -> list[Line]:
    """What the rules say a unit owes, given its inputs."""
    kind, key = unit.split(":", 1)
    events = [e for _, e in inputs]
    if kind == "parcel":
        return parcel_lines(key, events, county)
    trip_events = [e for e in events if _trip(e) == key]
    registrations: dict[str, Envelope] = {}
    for e in sorted((e for e in events if e.type == "parcel.registered"),
                    key=lambda e: (e.occurred_at, e.event_id)):
        registrations[str(_waybill(e))] = e
    return trip_lines(TripManifest.from_events(key, trip_events), registrations, county)


def _net(lines: Iterable[Line], periods: set[str]) -> dict[tuple[str, str, str, str | None, str | None], int]:
    out: dict[tuple[str, str, str, str | None, str | None], int] = defaultdict(int)
    for line in lines:
        if line.period in periods:
            out[(line.period, line.kind, line.account, line.brand, line.ref)] += line.amount.value
    return out


def _late_adjustments(unit: str, inputs: Sequence[Seqd], new: Sequence[Seqd], closed: set[str],
                      county: County) -> list[tuple[Line, str, str]]:
    """One adjustment entry per late event: what it changed in closed periods, event by event,
    so the entries do not depend on how events were batched."""
    out: list[tuple[Line, str, str]] = []
    for seq, event in sorted(new, key=lambda x: x[0]):
        before = _net(compute(unit, [i for i in inputs if i[0] < seq], county), closed)
        after = _net(compute(unit, [i for i in inputs if i[0] <= seq], county), closed)
        deltas = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
        for (period, kind, account, brand, ref), amount in sorted(deltas.items(), key=str):
            if amount:
                line = Line(f"adj:{event.event_id}:{unit}", "", date.min, unit, kind, account,
                            brand, ref, Fen(amount), (event.event_id,))
                out.append((line, period, event.event_id))
    return out


async def _load_inputs(conn: asyncpg.Connection, units: Sequence[str]) -> dict[str, list[Seqd]]:
    waybills = [u.split(":", 1)[1] for u in units if u.startswith("parcel:")]
    trips = [u.split(":", 1)[1] for u in units if u.startswith("trip:")]
    out: dict[str, list[Seqd]] = defaultdict(list)
    for r in await conn.fetch("SELECT seq, waybill, body FROM settlement_events"
                              " WHERE waybill = ANY($1) AND type LIKE 'parcel.%'", waybills):
        out[f"parcel:{r['waybill']}"].append((r["seq"], Envelope.from_wire(r["body"])))
    trip_rows = await conn.fetch("SELECT seq, trip_id, waybill, body FROM settlement_events"
                                 " WHERE trip_id = ANY($1)", trips)
    riders: dict[str, set[str]] = defaultdict(set)
    for r in trip_rows:
        out[f"trip:{r['trip_id']}"].append((r["seq"], Envelope.from_wire(r["body"])))
        if r["waybill"]:
            riders[r["waybill"]].add(r["trip_id"])
    for r in await conn.fetch("SELECT seq, waybill, body FROM settlement_events WHERE"
                              " type = 'parcel.registered' AND waybill = ANY($1)", list(riders)):
        for trip in riders[r["waybill"]]:
            out[f"trip:{trip}"].append((r["seq"], Envelope.from_wire(r["body"])))
    return out


def _open_period_after(county: County, period_key: str,
                       periods: dict[str, asyncpg.Record]) -> Period:
    cfg = county.settlement
    p = cfg.period_after(cfg.period_by_key(period_key))
    while p.key in periods and periods[p.key]["closed_seq"] is not None:
        p = cfg.period_after(p)
    return p


async def _insert(conn: asyncpg.Connection, county: County,
                  lines: Sequence[tuple[Line, str | None, str | None]],
                  periods: dict[str, asyncpg.Record]) -> None:
    """Insert lines; adjustments (adjusted period and late event given) land in the open period
    after the one they adjust, dated by when the late event was recorded (kept inside it)."""
    rows: list[tuple[Any, ...]] = []
    numbering: dict[str, int] = defaultdict(int)
    tz = timezone(timedelta(minutes=county.utc_offset_minutes))
    recorded: dict[str, date] = {}
    if any(adj for _, adj, _ in lines):
        late_ids = list({late for _, _, late in lines if late})
        for r in await conn.fetch("SELECT event_id, recorded_at FROM journal WHERE event_id = ANY($1)",
                                  late_ids):
            recorded[r["event_id"]] = r["recorded_at"].astimezone(tz).date()
    for line, adjusts, late in lines:
        period, day = line.period, line.posting_date
        if adjusts is not None and late is not None:
            target = _open_period_after(county, adjusts, periods)
            period = target.key
            day = min(max(recorded.get(late, target.start), target.start), target.end)
        rows.append((line.entry_id, numbering[line.entry_id], period, day, line.unit, line.kind,
                     line.account, line.brand, line.ref, line.amount.value, list(line.event_ids),
                     adjusts, late))
        numbering[line.entry_id] += 1
    needed = {r[2]: r[3] for r in rows}
    cfg = county.settlement
    for key, day in needed.items():
        p = cfg.period_of(day)
        await conn.execute("INSERT INTO ledger_periods (period, starts, ends) VALUES ($1, $2, $3)"
                           " ON CONFLICT DO NOTHING", key, p.start, p.end)
    await conn.executemany(
        "INSERT INTO ledger_lines (entry_id, line_no, period, posting_date, unit, kind, account,"
        " brand, ref, amount_fen, event_ids, adjusts_period, late_event_id)"
        " VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12,$13)"
        " ON CONFLICT (entry_id, line_no) DO NOTHING", rows)


async def _close(conn: asyncpg.Connection, county: County, seq: int, event: Envelope) -> None:
    """Close a period: post its volume discounts, then freeze it (PostgreSQL keeps it frozen)."""
    period = county.settlement.period_by_key(event.payload.period)  # type: ignore[attr-defined]
    await conn.execute("INSERT INTO ledger_periods (period, starts, ends) VALUES ($1, $2, $3)"
                       " ON CONFLICT DO NOTHING", period.key, period.start, period.end)
    if await conn.fetchval("SELECT closed_seq FROM ledger_periods WHERE period = $1", period.key):
        return  # closed already: a second close changes nothing
    counts = await conn.fetch(
        "SELECT brand, count(*) AS n FROM ledger_lines WHERE period = $1 AND kind = 'delivery_fee'"
        " AND account LIKE 'brand:%' AND adjusts_period IS NULL GROUP BY brand ORDER BY brand",
        period.key)
    lines = [line for r in counts
             for line in volume_discount_lines(county, period.key, period.end, r["brand"], r["n"])]
    periods = {r["period"]: r for r in await conn.fetch("SELECT * FROM ledger_periods")}
    await _insert(conn, county, [(line, None, None) for line in lines], periods)
    await conn.execute(
        "UPDATE ledger_periods SET closed_seq = $2, closed_at = $3, closed_by = $4 WHERE period = $1",
        period.key, seq, event.occurred_at, event.operator_id)
