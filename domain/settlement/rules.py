"""What each parcel and each trip owes, as balanced ledger lines. Pure: compact state in
(domain/settlement/state.py), lines out; `parcel_lines` and `trip_lines` fold events first.

Accounts: `brand:B` (what brand B owes the operator), `revenue:*` (the operator's), `station:NODE`
(what the network owes a station), `carrier:ROUTE` (what it owes for the run; `carrier:LINE` for
a bus line's run), and `operator:unallocated` (a run that carried nothing). Every entry's lines
sum to zero."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone

from domain.county import County
from domain.envelope import Envelope
from domain.money import Fen, allocate
from domain.settlement.config import SettlementVersion, TripCost
from domain.settlement.state import (
    STATION_TIERS,
    Fact,
    HandIn,
    Load,
    ParcelState,
    Registration,
    Scan,
    TripState,
    fact_from_envelope,
    fold_parcel,
    fold_trip,
    registration_of,
    station_tier,
)
from domain.settlement.upward import upward_charges

__all__ = ["STATION_TIERS", "Line", "TripManifest", "parcel_lines", "parcel_pricing_key",
           "parcel_state_lines",
           "trip_lines", "trip_state_lines", "volume_discount_lines"]


@dataclass(frozen=True)
class Line:
    entry_id: str
    period: str
    posting_date: date
    unit: str
    kind: str
    account: str
    brand: str | None
    ref: str | None            # tier for fees, node for commissions, route for trips
    amount: Fen
    event_ids: tuple[str, ...]


def local_date(e: Envelope, county: County) -> date:
    return e.occurred_at.astimezone(timezone(timedelta(minutes=county.utc_offset_minutes))).date()


def _entry(county: County, entry_id: str, unit: str, kind: str, day: date,
           legs: Sequence[tuple[str, str | None, str | None, Fen, tuple[str, ...]]]) -> list[Line]:
    period = county.settlement.period_of(day).key
    lines = [Line(entry_id, period, day, unit, kind, account, brand, ref, amount, ids)
             for account, brand, ref, amount, ids in legs]
    assert Fen.total(line.amount for line in lines) == Fen(0), entry_id
    return lines


def _ordered(events: Iterable[Envelope]) -> list[Envelope]:
    return sorted({e.event_id: e for e in events}.values(), key=lambda e: (e.occurred_at, e.event_id))


def _facts(events: Iterable[Envelope]) -> list[Fact]:
    return [fact_from_envelope(0, e) for e in _ordered(events)]


def parcel_lines(waybill: str, events: Iterable[Envelope], county: County) -> list[Line]:
    """`parcel_state_lines` of the state these events fold into (any order, duplicates too)."""
    state = ParcelState(waybill)
    for f in _facts(events):
        fold_parcel(state, f)
    return parcel_state_lines(state, county)


def parcel_pricing_key(state: ParcelState) -> tuple[object, ...]:
    """Everything of a parcel's state that `parcel_state_lines` reads: equal keys, equal lines.
    (The trips it rode are not priced here; the first scan only stands in for a missing
    registration.)"""
    first = state.first_scan if state.registration is None else state.first_scan is not None
    return (state.registration, first, tuple(state.stored), tuple(state.delivered),
            state.handed_in)


def parcel_state_lines(state: ParcelState, county: County) -> list[Line]:
    """The upward tariff once the parcel is handed in at a village point; delivery fee (+ weight
    surcharge) when it reaches a station or is delivered; station commissions when it is stored
    at a point and when it is picked up from there."""
    lines = _upward_lines(state.waybill, state.handed_in, county)
    if state.first_scan is None:
        return lines
    waybill, registration = state.waybill, state.registration
    brand = (registration or state.handed_in or state.first_scan).brand
    unit = f"parcel:{waybill}"
    stored = next((s for s in state.stored if station_tier(county, s.node)), None)
    delivered = [s for s in state.delivered if station_tier(county, s.node)]
    candidates = ([stored] if stored else []) + delivered[:1]
    arrival = min(candidates, key=lambda s: s.key) if candidates else None
    if arrival is not None:
        tier = str(station_tier(county, arrival.node))
        day = _local(arrival.at, county)
        version = county.settlement.version_on(day)
        fee = Fen(version.fee_for(brand, tier))
        lines += _entry(county, f"fee:{waybill}", unit, "delivery_fee", day, [
            (f"brand:{brand}", brand, tier, fee, (arrival.event_id,)),
            ("revenue:delivery_fee", brand, tier, -fee, (arrival.event_id,))])
        if registration is not None:
            surcharge = Fen(version.surcharge_for(registration.weight_g))
            if surcharge.value:
                ids = (arrival.event_id, registration.event_id)
                lines += _entry(county, f"surcharge:{waybill}", unit, "weight_surcharge", day, [
                    (f"brand:{brand}", brand, None, surcharge, ids),
                    ("revenue:weight_surcharge", brand, None, -surcharge, ids)])
    if stored is not None:
        lines += _commission(county, waybill, brand, stored, "commission_stored")
        picked = next((s for s in delivered
                       if s.node == stored.node and s.at >= stored.at), None)
        if picked is not None:
            lines += _commission(county, waybill, brand, picked, "commission_picked_up")
    return lines


def _upward_lines(waybill: str, hand_in: HandIn | None, county: County) -> list[Line]:
    """The upward tariff (农产品上行), charged to the brand that handed the parcel in, once, on the
    county day of its first hand-in: one entry per fee kind, each owed to the operator's revenue."""
    tariff = county.upward_tariff
    if hand_in is None or tariff is None:
        return []
    day = _local(hand_in.at, county)
    brand, ids = hand_in.brand, (hand_in.event_id,)
    lines: list[Line] = []
    for kind, ref, fen in upward_charges(tariff, hand_in.weight_g, hand_in.perishable,
                                         hand_in.origin):
        lines += _entry(county, f"{kind}:{waybill}", f"parcel:{waybill}", kind, day, [
            (f"brand:{brand}", brand, ref, fen, ids), (f"revenue:{kind}", brand, ref, -fen, ids)])
    return lines


def _local(at: datetime, county: County) -> date:
    return at.astimezone(timezone(timedelta(minutes=county.utc_offset_minutes))).date()


def _commission(county: County, waybill: str, brand: str, scan: Scan, kind: str) -> list[Line]:
    day = _local(scan.at, county)
    version = county.settlement.version_on(day)
    fen = Fen(version.commission_stored_fen if kind == "commission_stored"
              else version.commission_picked_up_fen)
    node = scan.node
    return _entry(county, f"{kind}:{waybill}", f"parcel:{waybill}", kind, day, [
        (f"brand:{brand}", brand, node, fen, (scan.event_id,)),
        (f"station:{node}", brand, node, -fen, (scan.event_id,))])


class TripManifest:
    """A run as the scans saw it: its departure, what was loaded, where things were unloaded."""

    @staticmethod
    def from_events(trip_id: str, events: Iterable[Envelope]) -> TripState:
        state = TripState(trip_id)
        for f in _facts(events):
            fold_trip(state, f)
        return state


def trip_cost(county: County, cost: TripCost, route_id: str) -> Fen:
    route = county.route(route_id)
    metres = route.distance_m if route else 0
    return Fen(cost.fixed_fen + (cost.per_km_fen * metres + 500) // 1000)  # half a fen rounds up


def _loads(trip: TripState) -> list[Load]:
    return sorted(trip.loads, key=lambda x: x.key)


def brand_weights(trip: TripState, basis: str) -> dict[str, int]:
    """Each brand's integer weight on the run under an allocation basis (its riders' latest
    registrations give weights and sizes)."""
    parcels: dict[str, str] = {}
    for x in _loads(trip):
        parcels.setdefault(x.waybill, x.brand)
    weights: dict[str, int] = defaultdict(int)
    for waybill, brand in parcels.items():
        p = trip.riders.get(waybill)
        actual = p.weight_g if p else 0
        volume = ((p.length_mm or 0) * (p.width_mm or 0) * (p.height_mm or 0)) if p else 0
        weights[brand] += {
            "parcel_count": 1, "fixed_plus_variable": 1, "actual_weight": actual,
            "chargeable_weight": max(actual, volume // 6000),  # 6000 cm³/kg, in mm³ → g
            "volume": volume, "stops": 0,
        }[basis]
    if basis == "stops":
        stops: dict[str, set[str]] = defaultdict(set)
        for brand, node in trip.stops:
            stops[brand].add(node)
        weights = defaultdict(int, {b: len(stops.get(b, ())) for b in parcels.values()})
    return dict(weights)


def trip_lines(manifest: TripState, registrations: Mapping[str, Envelope], county: County,
               basis: str | None = None) -> list[Line]:
    """`trip_state_lines` of a manifest, its riders' registrations given as events."""
    riders: dict[str, Registration] = {}
    for waybill, e in registrations.items():
        riders[waybill] = registration_of(fact_from_envelope(0, e))
    state = TripState(manifest.trip_id, manifest.departure, list(manifest.loads),
                      list(manifest.stops), {**manifest.riders, **riders})
    return trip_state_lines(state, county, basis)


def trip_state_lines(trip: TripState, county: County, basis: str | None = None) -> list[Line]:
    """The run's cost, owed to its carrier, shared among the brands whose parcels rode on it."""
    dep = trip.departure
    if dep is None:
        return []
    day = _local(dep.at, county)
    version: SettlementVersion = county.settlement.version_on(day)
    bus = county.bus_line_of(trip.trip_id)
    if bus is not None:
        # A bus line's run (城乡客运 / 客货邮): the line's price per trip, shared by the county's
        # sharing rule, booked to the line whatever route the departure named.
        route_id, cost_rule = bus.id, version.trip_cost
        cost = Fen(bus.cost_per_trip_fen)
    else:
        route_id = dep.route_id
        cost_rule = version.cost_for(route_id)
        cost = trip_cost(county, cost_rule, route_id)
    basis = basis or cost_rule.basis
    weights = brand_weights(trip, basis)
    unit = f"trip:{trip.trip_id}"
    legs: list[tuple[str, str | None, str | None, Fen, tuple[str, ...]]] = [
        (f"carrier:{route_id}", None, route_id, -cost, (dep.event_id,))]
    if not weights:
        legs.append(("operator:unallocated", None, route_id, cost, (dep.event_id,)))
    else:
        if basis == "fixed_plus_variable":
            fixed = Fen(cost.value * cost_rule.fixed_share_permille // 1000)
            equal = allocate(fixed, {b: 1 for b in weights})
            variable = allocate(cost - fixed, weights)
            shares = {b: equal[b] + variable[b] for b in weights}
        else:
            shares = allocate(cost, weights)
        loads = _loads(trip)
        for brand, share in sorted(shares.items()):
            ids = (dep.event_id,) + tuple(x.event_id for x in loads if x.brand == brand)
            legs.append((f"brand:{brand}", brand, route_id, share, ids))
    return _entry(county, f"trip:{trip.trip_id}", unit, "trip_cost", day, legs)


def volume_discount_lines(county: County, period_key: str, period_end: date, brand: str,
                          parcels: int) -> list[Line]:
    """At close: the period's volume tier, as a discount on every delivery fee of the period."""
    per_parcel = county.settlement.version_on(period_end).discount_for(parcels)
    if not per_parcel or not parcels:
        return []
    amount = Fen(per_parcel).times(parcels)
    lines = [Line(f"volume:{brand}:{period_key}", period_key, period_end, f"tier:{brand}",
                  "volume_discount", f"brand:{brand}", brand, str(parcels), -amount, ()),
             Line(f"volume:{brand}:{period_key}", period_key, period_end, f"tier:{brand}",
                  "volume_discount", "revenue:delivery_fee", brand, str(parcels), amount, ())]
    return lines
