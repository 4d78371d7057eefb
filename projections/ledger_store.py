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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, timedelta, timezone
from typing import Any, ClassVar

import asyncpg

from domain.county import County
from domain.envelope import Envelope
from domain.money import Fen
from domain.settlement.config import Period, SettlementConfig
from domain.settlement.rules import (
    Line,
    parcel_pricing_key,
    parcel_state_lines,
    trip_state_lines,
    volume_discount_lines,
)
from domain.settlement.state import (
    Fact,
    ParcelState,
    Registration,
    TripState,
    fact_from_envelope,
    fact_from_wire,
    fold_parcel,
    fold_trip,
    registration_of,
)
from projections import runtime
from projections.locks import Lock
from projections.runtime import Applied, Base, Source

LEDGER_TYPES = ("parcel.registered", "parcel.handed_in", "parcel.scanned", "vehicle.departed",
                "period.closed")
LEDGER_LOCK = Lock.LEDGER
LEDGER_REBUILD_LOCK = Lock.LEDGER_REBUILD
LINE_COLUMNS = ("entry_id, line_no, period, posting_date, unit, kind, account, brand, ref,"
                " amount_fen, event_ids, adjusts_period, late_event_id")
State = ParcelState | TripState
Step = tuple[Fact, Registration | None]   # an event folded into a unit (a load: with its rider)


class LedgerProjection(Base):
    """The settlement ledger as a projection: reads the journal in seq order (closed periods need
    the total order). A rebuild is compared with the live books, never swapped in: postings in
    closed periods are final (PostgreSQL refuses to change them)."""

    name = "ledger"
    source = Source.JOURNAL
    reads = frozenset(LEDGER_TYPES)
    lock = Lock.LEDGER
    swappable: ClassVar[bool] = False
    tables: ClassVar[Mapping[str, str]] = {"ledger_lines": LINE_COLUMNS,
              "ledger_periods": "period, starts, ends, closed_seq, closed_at, closed_by",
              "ledger_parcels": "*", "ledger_trips": "*", "settlement_events": "*"}

    def __init__(self, county: County) -> None:
        self.county = county

    def decode(self, seq: int, wire: dict[str, Any]) -> Fact:
        return fact_from_wire(seq, wire)

    async def apply(self, conn: asyncpg.Connection, items: Sequence[Fact]) -> Applied:
        segment: list[Fact] = []
        for fact in items:
            if fact.type == "period.closed":
                await _apply_segment(conn, self.county, segment)
                segment = []
                await _close(conn, self.county, fact)
            else:
                segment.append(fact)
        await _apply_segment(conn, self.county, segment)
        return Applied(new=len(items), duplicate=0)

    async def reset(self, conn: asyncpg.Connection) -> None:
        raise RuntimeError("the ledger is never emptied: closed periods are final;"
                           " `gongpei rebuild ledger` replays it beside the live books")

    async def prepare(self, conn: asyncpg.Connection, next_seq: int) -> bool:
        """Books kept before the state tables existed (011) fold the journal up to where they
        were booked, posting nothing, before anything new is applied."""
        row = await conn.fetchrow("SELECT seq, state_seq FROM ledger_cursor WHERE name = 'ledger'")
        if row is None or row["state_seq"] >= row["seq"]:
            return False
        await _backfill_state(conn, self.county, row["state_seq"], row["seq"], 2000)
        return True


async def catch_up(conn: asyncpg.Connection, county: County, page: int = 2000,
                   lock: Lock = LEDGER_LOCK) -> int:
    """Apply every journal event not yet in the ledger; returns how many were applied."""
    return await runtime.catch_up(conn, LedgerProjection(county), page, lock)


async def _backfill_state(conn: asyncpg.Connection, county: County, after: int, upto: int,
                          page: int) -> None:
    """Fold journal events already booked into the per-unit state, posting nothing."""
    rows = await conn.fetch(
        "SELECT seq, body FROM journal WHERE seq > $1 AND seq <= $2 AND type = ANY($3::text[])"
        " ORDER BY seq LIMIT $4", after, upto, list(LEDGER_TYPES), page)
    facts = [f for r in rows if (f := fact_from_wire(r["seq"], r["body"])).type != "period.closed"]
    work = await _Fold.load(conn, county, facts)
    work.run(facts)
    await work.save(conn)
    done = rows[-1]["seq"] if len(rows) == page else upto
    await conn.execute("UPDATE ledger_cursor SET state_seq = $1 WHERE name = 'ledger'", done)


@dataclass
class _Fold:
    """A segment's events folded into the states of the parcels and trips they touch."""

    county: County
    raw: dict[str, dict[str, Any] | None]          # each unit's state as loaded (for replays)
    states: dict[str, State]
    steps: dict[str, list[Step]] = field(default_factory=lambda: defaultdict(list))
    changed: set[str] = field(default_factory=set)
    copies: set[int] = field(default_factory=set)  # journal seqs the API reads (settlement_events)
    priced: dict[str, tuple[object, ...]] = field(default_factory=dict)  # parcels' keys as loaded

    @classmethod
    async def load(cls, conn: asyncpg.Connection, county: County, facts: Sequence[Fact]) -> _Fold:
        waybills = list({f.waybill for f in facts if f.waybill})
        raw: dict[str, dict[str, Any] | None] = {}
        for r in await conn.fetch("SELECT waybill, state FROM ledger_parcels WHERE waybill = ANY($1)",
                                  waybills):
            raw[f"parcel:{r['waybill']}"] = r["state"]
        trips = {f.trip_id for f in facts if f.trip_id}
        for f in facts:  # a manifest's weight and size change the shares of every trip it rode
            if f.type == "parcel.registered" and (j := raw.get(f"parcel:{f.waybill}")):
                trips.update(j["t"])
        for r in await conn.fetch("SELECT trip_id, state FROM ledger_trips WHERE trip_id = ANY($1)",
                                  list(trips)):
            raw[f"trip:{r['trip_id']}"] = r["state"]
        for w in waybills:
            raw.setdefault(f"parcel:{w}", None)
        for t in trips:
            raw.setdefault(f"trip:{t}", None)
        states = {unit: _state(unit, j) for unit, j in raw.items()}
        priced = {u: parcel_pricing_key(s) for u, s in states.items() if isinstance(s, ParcelState)}
        return cls(county, raw, states, priced=priced)

    def repriced(self, unit: str) -> bool:
        """Whether what the rules read of this unit may have changed (a parcel's key moved)."""
        state = self.states[unit]
        return not isinstance(state, ParcelState) or parcel_pricing_key(state) != self.priced[unit]

    def initial(self, unit: str) -> State:
        return _state(unit, self.raw[unit])

    def _step(self, unit: str, f: Fact, rider: Registration | None = None) -> None:
        self.steps[unit].append((f, rider))
        if _fold(self.states[unit], f, self.county, rider):
            self.changed.add(unit)

    def run(self, facts: Iterable[Fact]) -> None:
        """Fold in seq order: a load takes its parcel's registration as known at that point."""
        for f in facts:
            parcel: ParcelState | None = None
            if f.waybill is not None:
                state = self.states[f"parcel:{f.waybill}"]
                assert isinstance(state, ParcelState)
                parcel = state
                self._step(f"parcel:{f.waybill}", f)
                if f.type == "parcel.registered" and parcel.trips:
                    for t in parcel.trips:
                        self._step(f"trip:{t}", f)
                    self.copies.add(f.seq)
            if f.trip_id is not None:
                rider = parcel.registration if parcel is not None else None
                self._step(f"trip:{f.trip_id}", f, rider)
                self.copies.add(f.seq)
                if rider is not None and f.action == "loaded":
                    self.copies.add(rider.seq)

    async def save(self, conn: asyncpg.Connection) -> None:
        parcels = [(u[7:], s.to_json()) for u in sorted(self.changed)
                   if isinstance(s := self.states[u], ParcelState)]
        trips = [(u[5:], s.to_json()) for u in sorted(self.changed)
                 if isinstance(s := self.states[u], TripState)]
        if parcels:
            await conn.executemany(
                "INSERT INTO ledger_parcels (waybill, state) VALUES ($1, $2)"
                " ON CONFLICT (waybill) DO UPDATE SET state = EXCLUDED.state", parcels)
        if trips:
            await conn.executemany(
                "INSERT INTO ledger_trips (trip_id, state) VALUES ($1, $2)"
                " ON CONFLICT (trip_id) DO UPDATE SET state = EXCLUDED.state", trips)
        if self.copies:
            await conn.execute(
                "INSERT INTO settlement_events (seq, event_id, type, brand, waybill, trip_id, body)"
                " SELECT seq, event_id, type, brand, body->'payload'->>'waybill',"
                " body->'payload'->>'trip_id', body FROM journal WHERE seq = ANY($1::bigint[])"
                " ON CONFLICT DO NOTHING", sorted(self.copies))


def _state(unit: str, j: dict[str, Any] | None) -> State:
    kind, key = unit.split(":", 1)
    if kind == "parcel":
        return ParcelState.from_json(key, j) if j else ParcelState(key)
    return TripState.from_json(key, j) if j else TripState(key)


def _fold(state: State, f: Fact, county: County, rider: Registration | None = None) -> bool:
    if isinstance(state, ParcelState):
        return fold_parcel(state, f)
    return fold_trip(state, f, rider)


def state_lines(state: State, county: County) -> list[Line]:
    """What the rules say a unit owes, given its state."""
    if isinstance(state, ParcelState):
        return parcel_state_lines(state, county)
    return trip_state_lines(state, county)


async def _apply_segment(conn: asyncpg.Connection, county: County, segment: Sequence[Fact]) -> None:
    if not segment:
        return
    work = await _Fold.load(conn, county, segment)
    work.run(segment)
    await work.save(conn)
    if not work.changed:
        return
    periods = {r["period"]: r for r in await conn.fetch("SELECT * FROM ledger_periods")}
    closed = {p for p, r in periods.items() if r["closed_seq"] is not None}
    frozen: set[str] = set()
    if closed:
        frozen = {r["unit"] for r in await conn.fetch(
            "SELECT DISTINCT unit FROM ledger_lines WHERE unit = ANY($1) AND period = ANY($2)",
            list(work.changed), list(closed))}

    rewrite: list[str] = []
    inserts: list[Line] = []
    adjustments: list[tuple[Line, str, str]] = []
    for unit in sorted(u for u in work.changed if work.repriced(u)):
        desired = state_lines(work.states[unit], county)
        late = unit in frozen or any(line.period in closed for line in desired)
        if not late and (not desired or isinstance(work.states[unit], TripState)) and (
                desired == state_lines(work.initial(unit), county)):
            continue  # the books already hold these lines (a parcel's moved key rarely leaves
            # its lines as they were unless it owes nothing yet: only then is it worth asking)
        rewrite.append(unit)
        inserts += [line for line in desired if line.period not in closed]
        if late:
            adjustments += late_adjustments(unit, work.initial(unit), work.steps[unit], closed,
                                            county)
    if not rewrite:
        return
    open_periods = [p for p in periods if p not in closed]
    await conn.execute(
        "DELETE FROM ledger_lines WHERE unit = ANY($1) AND adjusts_period IS NULL"
        " AND period = ANY($2)", rewrite, open_periods + [line.period for line in inserts])
    plain: list[tuple[Line, str | None, str | None]] = [(line, None, None) for line in inserts]
    await _insert(conn, county, plain + list(adjustments), periods)


def _net(lines: Iterable[Line], periods: set[str]) -> dict[tuple[str, str, str, str | None, str | None], int]:
    out: dict[tuple[str, str, str, str | None, str | None], int] = defaultdict(int)
    for line in lines:
        if line.period in periods:
            out[(line.period, line.kind, line.account, line.brand, line.ref)] += line.amount.value
    return out


def late_adjustments(unit: str, state: State, steps: Sequence[Step], closed: set[str],
                     county: County) -> list[tuple[Line, str, str]]:
    """One adjustment entry per late event: what it changed in closed periods, event by event
    (folded into `state` in seq order), so the entries do not depend on how events were batched."""
    out: list[tuple[Line, str, str]] = []
    before = _net(state_lines(state, county), closed)
    for f, rider in sorted(steps, key=lambda s: s[0].seq):
        if not _fold(state, f, county, rider):
            continue
        after = _net(state_lines(state, county), closed)
        deltas = {k: after.get(k, 0) - before.get(k, 0) for k in set(before) | set(after)}
        for (period, kind, account, brand, ref), amount in sorted(deltas.items(), key=str):
            if amount:
                line = Line(f"adj:{f.event_id}:{unit}", "", date.min, unit, kind, account,
                            brand, ref, Fen(amount), (f.event_id,))
                out.append((line, period, f.event_id))
        before = after
    return out


# Event-list forms of the above, for tests that hold envelopes: (seq, envelope) pairs.
Seqd = tuple[int, Envelope]


def _steps(unit: str, inputs: Sequence[Seqd]) -> list[Step]:
    """A unit's inputs as steps in seq order: a trip's loads ride with their parcels' latest
    registrations among the inputs before them."""
    regs: dict[str, Registration] = {}
    out: list[Step] = []
    for f in sorted((fact_from_envelope(s, e) for s, e in inputs), key=lambda f: f.seq):
        rider = regs.get(f.waybill or "") if unit.startswith("trip:") else None
        if f.type == "parcel.registered" and f.waybill:
            reg = registration_of(f)
            if f.waybill not in regs or reg.key > regs[f.waybill].key:
                regs[f.waybill] = reg
        out.append((f, rider))
    return out


def compute(unit: str, inputs: Sequence[Seqd], county: County) -> list[Line]:
    """What the rules say a unit owes, given its inputs (in any order)."""
    state = _state(unit, None)
    for f, rider in _steps(unit, inputs):
        _fold(state, f, county, rider)
    return state_lines(state, county)


def _late_adjustments(unit: str, inputs: Sequence[Seqd], new: Sequence[Seqd], closed: set[str],
                      county: County) -> list[tuple[Line, str, str]]:
    """`late_adjustments` given every input of a unit and the new ones among them (the last)."""
    fresh = {s for s, _ in new}
    steps = _steps(unit, inputs)
    state = _state(unit, None)
    for f, rider in steps:
        if f.seq not in fresh:
            _fold(state, f, county, rider)
    return late_adjustments(unit, state, [s for s in steps if s[0].seq in fresh], closed, county)


def _open_period_after(county: County, period_key: str,
                       periods: dict[str, asyncpg.Record]) -> Period:
    cfg: SettlementConfig = county.settlement
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


async def _close(conn: asyncpg.Connection, county: County, event: Fact) -> None:
    """Close a period: post its volume discounts, then freeze it (PostgreSQL keeps it frozen)."""
    period = county.settlement.period_by_key(str(event.period))
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
        period.key, event.seq, event.occurred_at, event.operator_id)
