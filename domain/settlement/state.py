"""What the settlement rules need to remember of a parcel and of a trip, folded event by event.

The ledger keeps one `ParcelState` per waybill and one `TripState` per trip instead of every
event: a new scan folds into them in O(1) (a trip's loads are a list, as its lines name every
load), and the rules (domain/settlement/rules.py) price the state, never an event history.

Every fold is order-free and idempotent: the state after a set of events does not depend on the
order they arrived in, nor on an event seen twice ("first" means first by (occurred_at,
event_id), as the rules have always read a history), so a live ledger and a replay agree.

`fact_from_wire` reads the few fields the ledger needs from a journal body without validating it
again: the journal only ever holds bodies validated at ingest (domain/envelope.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeAlias, assert_never

from domain.county import County
from domain.envelope import Envelope
from domain.events import (
    CURRENT_VERSION,
    PAYLOADS,
    ConsentRecorded,
    ParcelHandedIn,
    ParcelRegistered,
    ParcelRegisteredUpload,
    ParcelScanned,
    ParcelSorted,
    Payload,
    PeriodClosed,
    PickupAssigned,
    ScanAction,
    SmsDelivered,
    SmsFailed,
    SmsRequested,
    SmsSubmitted,
    VehicleArrived,
    VehicleDeparted,
    current,
)
from domain.upcasting import upcast

STATION_TIERS = ("township", "village")
PayloadClass: TypeAlias = type[Payload]  # spelt here: inside Fact, `type` is a field


@dataclass(frozen=True, slots=True)
class Fact:
    """One journal event as the ledger reads it."""

    seq: int
    event_id: str
    type: str
    occurred_at: datetime
    brand: str
    operator_id: str = ""
    waybill: str | None = None
    trip_id: str | None = None
    action: str | None = None
    node_id: str | None = None
    route_id: str | None = None
    weight_g: int = 0
    length_mm: int | None = None
    width_mm: int | None = None
    height_mm: int | None = None
    destination: str | None = None
    period: str | None = None
    # The registry's payload class for this event (None: a type this code does not know); the
    # folds dispatch on it, never on the type string.
    kind: PayloadClass | None = None
    origin: str | None = None        # a hand-in's village point
    perishable: str | None = None    # a hand-in's perishable class (None: not perishable)

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.occurred_at, self.event_id)


def fact_from_wire(seq: int, d: dict[str, Any]) -> Fact:
    """A journal body (already validated at ingest) as a Fact: no model, no re-validation."""
    event_type = d["type"]
    p = d["payload"]
    version = d["schema_version"]
    if version != CURRENT_VERSION.get(event_type, version):
        version, p = upcast(event_type, version, p)
    return Fact(seq, d["event_id"], event_type, datetime.fromisoformat(d["occurred_at"]),
                d["brand"], d.get("operator_id", ""), p.get("waybill"), p.get("trip_id"),
                p.get("action"), p.get("node_id"), p.get("route_id"), p.get("weight_g", 0),
                p.get("length_mm"), p.get("width_mm"), p.get("height_mm"),
                p.get("destination_village"), p.get("period"), PAYLOADS.get((event_type, version)),
                p.get("origin_village"), p.get("perishable"))


def fact_from_envelope(seq: int, e: Envelope) -> Fact:
    """An envelope as a Fact (tests, and readers that hold envelopes already): the fields
    `fact_from_wire` reads from a body, read from the typed payload."""
    head = (seq, e.event_id, e.type, e.occurred_at, e.brand, e.operator_id)
    kind = PAYLOADS[(e.type, e.schema_version)]
    p = current(e.payload)
    match p:
        case ParcelRegistered() | ParcelRegisteredUpload():
            return Fact(*head, waybill=p.waybill, weight_g=p.weight_g, length_mm=p.length_mm,
                        width_mm=p.width_mm, height_mm=p.height_mm,
                        destination=p.destination_village, kind=kind)
        case ParcelScanned():
            return Fact(*head, waybill=p.waybill, trip_id=p.trip_id, action=str(p.action),
                        node_id=p.node_id, kind=kind)
        case ParcelHandedIn():
            return Fact(*head, waybill=p.waybill, weight_g=p.weight_g, origin=p.origin_village,
                        perishable=p.perishable, kind=kind)
        case ParcelSorted() | PickupAssigned():
            return Fact(*head, waybill=p.waybill, node_id=p.node_id, kind=kind)
        case ConsentRecorded():
            return Fact(*head, waybill=p.waybill, kind=kind)
        case VehicleDeparted() | VehicleArrived():
            return Fact(*head, trip_id=p.trip_id, node_id=p.node_id, route_id=p.route_id,
                        kind=kind)
        case SmsRequested():
            return Fact(*head, node_id=p.node_id, kind=kind)
        case SmsSubmitted() | SmsDelivered() | SmsFailed():
            return Fact(*head, kind=kind)
        case PeriodClosed():
            return Fact(*head, period=p.period, kind=kind)
        case _:
            assert_never(p)


# ------------------------------------------------------------------------------- parcels

@dataclass(frozen=True, slots=True)
class Scan:
    at: datetime
    event_id: str
    node: str
    brand: str

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


@dataclass(frozen=True, slots=True)
class Registration:
    at: datetime
    event_id: str
    brand: str
    weight_g: int
    length_mm: int | None = None
    width_mm: int | None = None
    height_mm: int | None = None
    destination: str | None = None
    seq: int = 0

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


@dataclass(frozen=True, slots=True)
class HandIn:
    """A parcel handed in at a village point for the upward flow (`parcel.handed_in`): what the
    upward tariff prices."""

    at: datetime
    event_id: str
    brand: str
    weight_g: int
    origin: str
    perishable: str | None

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


@dataclass(slots=True)
class ParcelState:
    """The latest registration, the first scan (whose brand stands in for a missing
    registration), its `stored` and `delivered` scans in order (the rules pick the first at a
    station, by the county file they price with; a parcel has one or two), the trips it was
    loaded on (a later registration changes their shares), and its first hand-in (upward parcels:
    charged once, by the first)."""

    waybill: str
    registration: Registration | None = None
    first_scan: Scan | None = None
    stored: list[Scan] = field(default_factory=list)
    delivered: list[Scan] = field(default_factory=list)
    trips: list[str] = field(default_factory=list)
    handed_in: HandIn | None = None

    def to_json(self) -> dict[str, Any]:
        out = {"r": _reg_json(self.registration), "f": _scan_json(self.first_scan),
               "s": [_scan_json(s) for s in self.stored], "d": [_scan_json(s) for s in self.delivered],
               "t": self.trips}
        if self.handed_in is not None:  # absent, not null: states written before hand-ins read alike
            h = self.handed_in
            out["h"] = [h.at, h.event_id, h.brand, h.weight_g, h.origin, h.perishable]
        return out

    @classmethod
    def from_json(cls, waybill: str, d: dict[str, Any]) -> ParcelState:
        h = d.get("h")
        return cls(waybill, _reg(d["r"]), _scan(d["f"]),
                   [s for j in d["s"] if (s := _scan(j)) is not None],
                   [s for j in d["d"] if (s := _scan(j)) is not None], list(d["t"]),
                   HandIn(datetime.fromisoformat(h[0]), *h[1:]) if h else None)


def station_tier(county: County, node_id: str | None) -> str | None:
    node = county.nodes.get(node_id) if node_id else None
    return node.tier if node and node.tier in STATION_TIERS else None


def registration_of(f: Fact) -> Registration:
    return Registration(f.occurred_at, f.event_id, f.brand, f.weight_g, f.length_mm, f.width_mm,
                        f.height_mm, f.destination, f.seq)


def fold_parcel(state: ParcelState, f: Fact) -> bool:
    """Fold one parcel event into its state; True if the state changed. (Which nodes are
    stations the rules judge when they price, by the county file they price with.)"""
    if f.kind is ParcelRegistered:
        if state.registration is None or f.key > state.registration.key:
            state.registration = registration_of(f)
            return True
        return False
    if f.kind is ParcelHandedIn:
        if state.handed_in is None or f.key < state.handed_in.key:
            state.handed_in = HandIn(f.occurred_at, f.event_id, f.brand, f.weight_g,
                                     f.origin or "", f.perishable)
            return True
        return False
    if f.kind is not ParcelScanned:
        return False
    changed = False
    scan = Scan(f.occurred_at, f.event_id, f.node_id or "", f.brand)
    if state.first_scan is None or scan.key < state.first_scan.key:
        state.first_scan, changed = scan, True
    if f.action == ScanAction.loaded and f.trip_id and f.trip_id not in state.trips:
        state.trips.append(f.trip_id)
        changed = True
    if f.action in (ScanAction.stored, ScanAction.delivered):
        scans = state.stored if f.action == ScanAction.stored else state.delivered
        if all(s.event_id != scan.event_id for s in scans):
            scans.append(scan)
            scans.sort(key=lambda s: s.key)
            changed = True
    return changed


# --------------------------------------------------------------------------------- trips

@dataclass(frozen=True, slots=True)
class Departure:
    at: datetime
    event_id: str
    route_id: str

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


@dataclass(frozen=True, slots=True)
class Load:
    at: datetime
    event_id: str
    waybill: str
    brand: str

    @property
    def key(self) -> tuple[datetime, str]:
        return (self.at, self.event_id)


@dataclass(slots=True)
class TripState:
    """A run as the scans saw it: its first departure, every `loaded` scan, the (brand, node) of
    every `unloaded` scan, and the latest registration of each parcel loaded on it."""

    trip_id: str
    departure: Departure | None = None
    loads: list[Load] = field(default_factory=list)
    stops: list[tuple[str, str]] = field(default_factory=list)
    riders: dict[str, Registration] = field(default_factory=dict)
    # derived from `loads`, so that a fold stays O(1) however many parcels the run carries
    load_ids: set[str] = field(default_factory=set, repr=False, compare=False)
    loaded: set[str] = field(default_factory=set, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.load_ids = {x.event_id for x in self.loads}
        self.loaded = {x.waybill for x in self.loads}

    def to_json(self) -> dict[str, Any]:
        dep = self.departure
        return {"dep": [dep.at, dep.event_id, dep.route_id] if dep else None,
                "l": [[x.at, x.event_id, x.waybill, x.brand] for x in self.loads],
                "s": [list(s) for s in self.stops],
                "r": {w: _reg_json(r) for w, r in self.riders.items()}}

    @classmethod
    def from_json(cls, trip_id: str, d: dict[str, Any]) -> TripState:
        dep = d["dep"]
        return cls(trip_id,
                   Departure(datetime.fromisoformat(dep[0]), dep[1], dep[2]) if dep else None,
                   [Load(datetime.fromisoformat(a), e, w, b) for a, e, w, b in d["l"]],
                   [(b, n) for b, n in d["s"]],
                   {w: r for w, j in d["r"].items() if (r := _reg(j)) is not None})


def fold_trip(state: TripState, f: Fact, rider: Registration | None = None) -> bool:
    """Fold one event into a trip: its departure, a scan carrying its trip_id (for a load, with
    the parcel's registration as known at that point), or a registration of a parcel it carried.
    True if the state changed."""
    if f.kind is VehicleDeparted:
        if f.trip_id == state.trip_id and (state.departure is None
                                           or f.key < state.departure.key):
            state.departure = Departure(f.occurred_at, f.event_id, f.route_id or "")
            return True
        return False
    if f.kind is ParcelRegistered:
        if f.waybill in state.loaded:
            return _ride(state, f.waybill or "", registration_of(f))
        return False
    if f.kind is not ParcelScanned or f.trip_id != state.trip_id:
        return False
    if f.action == ScanAction.loaded:
        if f.event_id in state.load_ids:
            return False
        state.loads.append(Load(f.occurred_at, f.event_id, f.waybill or "", f.brand))
        state.load_ids.add(f.event_id)
        state.loaded.add(f.waybill or "")
        if rider is not None:
            _ride(state, f.waybill or "", rider)
        return True
    if f.action == ScanAction.unloaded and (f.brand, f.node_id or "") not in state.stops:
        state.stops.append((f.brand, f.node_id or ""))
        return True
    return False


def _ride(state: TripState, waybill: str, reg: Registration) -> bool:
    known = state.riders.get(waybill)
    if known is None or reg.key > known.key:
        state.riders[waybill] = reg
        return True
    return False


# ------------------------------------------------------------------------------ encoding

# Datetimes are left to the JSON encoder (orjson writes RFC 3339 fast; the stdlib would refuse).

def _scan_json(s: Scan | None) -> list[Any] | None:
    return [s.at, s.event_id, s.node, s.brand] if s else None


def _scan(j: list[str] | None) -> Scan | None:
    return Scan(datetime.fromisoformat(j[0]), j[1], j[2], j[3]) if j else None


def _reg_json(r: Registration | None) -> list[Any] | None:
    return ([r.at, r.event_id, r.brand, r.weight_g, r.length_mm, r.width_mm,
             r.height_mm, r.destination, r.seq] if r else None)


def _reg(j: list[Any] | None) -> Registration | None:
    return Registration(datetime.fromisoformat(j[0]), *j[1:]) if j else None
