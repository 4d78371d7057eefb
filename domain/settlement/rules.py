"""What each parcel and each trip owes, as balanced ledger lines. Pure: events in, lines out.

Accounts: `brand:B` (what brand B owes the operator), `revenue:*` (the operator's), `station:NODE`
(what the network owes a station), `carrier:ROUTE` (what it owes for the run), and
`operator:unallocated` (a run that carried nothing). Every entry's lines sum to zero."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, timedelta, timezone

from domain.county import County
from domain.envelope import Envelope
from domain.money import Fen, allocate
from domain.settlement.config import SettlementVersion, TripCost

STATION_TIERS = ("township", "village")


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


def parcel_lines(waybill: str, events: Iterable[Envelope], county: County) -> list[Line]:
    """Delivery fee (+ weight surcharge) when the parcel reaches a station or is delivered;
    station commissions when it is stored at a point and when it is picked up from there."""
    history = _ordered(events)
    regs = [e for e in history if e.type == "parcel.registered"]
    registration = regs[-1] if regs else None
    scans = [e for e in history if e.type == "parcel.scanned"]
    if not scans:
        return []
    brand = (registration or scans[0]).brand
    unit = f"parcel:{waybill}"
    lines: list[Line] = []

    def tier(e: Envelope) -> str | None:
        node = county.nodes.get(e.payload.node_id)  # type: ignore[attr-defined]
        return node.tier if node and node.tier in STATION_TIERS else None

    arrival = next((e for e in scans if e.payload.action in ("stored", "delivered")  # type: ignore[attr-defined]
                    and tier(e)), None)
    if arrival is not None:
        day = local_date(arrival, county)
        version = county.settlement.version_on(day)
        fee = Fen(version.fee_for(brand, tier(arrival)))
        lines += _entry(county, f"fee:{waybill}", unit, "delivery_fee", day, [
            (f"brand:{brand}", brand, tier(arrival), fee, (arrival.event_id,)),
            ("revenue:delivery_fee", brand, tier(arrival), -fee, (arrival.event_id,))])
        if registration is not None:
            surcharge = Fen(version.surcharge_for(registration.payload.weight_g))  # type: ignore[attr-defined]
            if surcharge.value:
                ids = (arrival.event_id, registration.event_id)
                lines += _entry(county, f"surcharge:{waybill}", unit, "weight_surcharge", day, [
                    (f"brand:{brand}", brand, None, surcharge, ids),
                    ("revenue:weight_surcharge", brand, None, -surcharge, ids)])
    stored = next((e for e in scans if e.payload.action == "stored" and tier(e)), None)  # type: ignore[attr-defined]
    if stored is not None:
        lines += _commission(county, waybill, brand, stored, "commission_stored")
        node = stored.payload.node_id  # type: ignore[attr-defined]
        picked = next((e for e in scans if e.payload.action == "delivered"  # type: ignore[attr-defined]
                       and e.payload.node_id == node and e.occurred_at >= stored.occurred_at), None)  # type: ignore[attr-defined]
        if picked is not None:
            lines += _commission(county, waybill, brand, picked, "commission_picked_up")
    return lines


def _commission(county: County, waybill: str, brand: str, scan: Envelope, kind: str) -> list[Line]:
    day = local_date(scan, county)
    version = county.settlement.version_on(day)
    fen = Fen(version.commission_stored_fen if kind == "commission_stored"
              else version.commission_picked_up_fen)
    node = scan.payload.node_id  # type: ignore[attr-defined]
    return _entry(county, f"{kind}:{waybill}", f"parcel:{waybill}", kind, day, [
        (f"brand:{brand}", brand, node, fen, (scan.event_id,)),
        (f"station:{node}", brand, node, -fen, (scan.event_id,))])


@dataclass(frozen=True)
class TripManifest:
    """A run as the scans saw it: its departure, what was loaded, where things were unloaded."""

    trip_id: str
    departure: Envelope | None
    loads: tuple[Envelope, ...]
    unloads: tuple[Envelope, ...]

    @classmethod
    def from_events(cls, trip_id: str, events: Iterable[Envelope]) -> TripManifest:
        history = _ordered(events)
        departures = [e for e in history if e.type == "vehicle.departed"]
        return cls(trip_id, departures[0] if departures else None,
                   tuple(e for e in history if e.type == "parcel.scanned"
                         and e.payload.action == "loaded"),  # type: ignore[attr-defined]
                   tuple(e for e in history if e.type == "parcel.scanned"
                         and e.payload.action == "unloaded"))  # type: ignore[attr-defined]


def trip_cost(county: County, cost: TripCost, route_id: str) -> Fen:
    route = county.route(route_id)
    metres = route.distance_m if route else 0
    return Fen(cost.fixed_fen + (cost.per_km_fen * metres + 500) // 1000)  # half a fen rounds up


def brand_weights(manifest: TripManifest, registrations: Mapping[str, Envelope],
                  basis: str) -> dict[str, int]:
    """Each brand's integer weight on the run under an allocation basis."""
    parcels: dict[str, str] = {}
    for e in manifest.loads:
        parcels.setdefault(e.payload.waybill, e.brand)  # type: ignore[attr-defined]
    weights: dict[str, int] = defaultdict(int)
    for waybill, brand in parcels.items():
        reg = registrations.get(waybill)
        p = reg.payload if reg else None
        actual = p.weight_g if p else 0  # type: ignore[attr-defined]
        volume = ((p.length_mm or 0) * (p.width_mm or 0) * (p.height_mm or 0)) if p else 0  # type: ignore[attr-defined]
        weights[brand] += {
            "parcel_count": 1, "fixed_plus_variable": 1, "actual_weight": actual,
            "chargeable_weight": max(actual, volume // 6000),  # 6000 cm³/kg, in mm³ → g
            "volume": volume, "stops": 0,
        }[basis]
    if basis == "stops":
        stops: dict[str, set[str]] = defaultdict(set)
        for e in manifest.unloads:
            stops[e.brand].add(e.payload.node_id)  # type: ignore[attr-defined]
        weights = defaultdict(int, {b: len(stops.get(b, ())) for b in parcels.values()})
    return dict(weights)


def trip_lines(manifest: TripManifest, registrations: Mapping[str, Envelope], county: County,
               basis: str | None = None) -> list[Line]:
    """The run's cost, owed to its carrier, shared among the brands whose parcels rode on it."""
    dep = manifest.departure
    if dep is None:
        return []
    day = local_date(dep, county)
    version: SettlementVersion = county.settlement.version_on(day)
    route_id = dep.payload.route_id  # type: ignore[attr-defined]
    cost_rule = version.cost_for(route_id)
    basis = basis or cost_rule.basis
    cost = trip_cost(county, cost_rule, route_id)
    weights = brand_weights(manifest, registrations, basis)
    unit = f"trip:{manifest.trip_id}"
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
        for brand, share in sorted(shares.items()):
            ids = (dep.event_id,) + tuple(e.event_id for e in manifest.loads if e.brand == brand)
            legs.append((f"brand:{brand}", brand, route_id, share, ids))
    return _entry(county, f"trip:{manifest.trip_id}", unit, "trip_cost", day, legs)


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
