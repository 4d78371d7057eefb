"""Tracking: a parcel's status and timeline, derived from its whole history.

Order-independent by construction: the history is de-duplicated by event_id and sorted by event
time (then by where the action sits in the chain, then by id), never by arrival order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any, assert_never

from domain.county import County
from domain.envelope import Envelope
from domain.events import (
    ConsentRecorded,
    ParcelHandedIn,
    ParcelRegistered,
    ParcelRegisteredUpload,
    ParcelScanned,
    ParcelSorted,
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
    type_name,
)
from domain.events import waybill_of as payload_waybill


class Status(StrEnum):
    """A parcel's status in our vocabulary, derived from its latest scan by event time."""

    info_received = "info_received"
    picked_up = "picked_up"
    in_transit = "in_transit"
    out_for_delivery = "out_for_delivery"
    stored_at_point = "stored_at_point"
    delivered = "delivered"
    problem = "problem"
    returned = "returned"


# Our status → 快递100's public code and label. Codes ≥ 100 are its sub-statuses: 101 已下单 sits
# under 1 揽收 (the brand has the manifest, nobody has scanned the parcel yet), and 501 (put into a
# locker or station) under 5 派件. Aggregators that only know the main set divide by 100.
PUBLIC_CODES: dict[Status, tuple[int, str]] = {
    Status.info_received: (101, "已下单"),
    Status.picked_up: (1, "揽收"),
    Status.in_transit: (0, "在途"),
    Status.out_for_delivery: (5, "派件"),
    Status.stored_at_point: (501, "已入站"),
    Status.delivered: (3, "签收"),
    Status.problem: (2, "疑难"),
    Status.returned: (6, "退回"),
}
# Our own label, as staff and villagers read it on our pages.
STATUS_LABELS: dict[Status, str] = {
    Status.info_received: "已登记，待揽收",
    Status.picked_up: "已揽收",
    Status.in_transit: "运输中",
    Status.out_for_delivery: "派送中",
    Status.stored_at_point: "已到服务点，待取件",
    Status.delivered: "已签收",
    Status.problem: "问题件",
    Status.returned: "已退回",
}
# AfterShip's tags, for partners that speak that vocabulary instead.
AFTERSHIP_TAGS: dict[Status, str] = {
    Status.info_received: "InfoReceived",
    Status.picked_up: "InTransit",
    Status.in_transit: "InTransit",
    Status.out_for_delivery: "OutForDelivery",
    Status.stored_at_point: "AvailableForPickup",
    Status.delivered: "Delivered",
    Status.problem: "Exception",
    Status.returned: "Exception",
}

ACTION_STATUS: dict[ScanAction, Status] = {
    ScanAction.received: Status.picked_up,
    ScanAction.arrived: Status.in_transit,
    ScanAction.sorted: Status.in_transit,
    ScanAction.loaded: Status.in_transit,
    ScanAction.unloaded: Status.in_transit,
    ScanAction.out_for_delivery: Status.out_for_delivery,
    ScanAction.stored: Status.stored_at_point,
    ScanAction.delivered: Status.delivered,
    ScanAction.problem: Status.problem,
    ScanAction.returned: Status.returned,
    ScanAction.cold_in: Status.in_transit,
    ScanAction.cold_out: Status.in_transit,
    ScanAction.air_loaded: Status.in_transit,
}
# Where an action sits in the chain: breaks ties between scans stamped in the same second.
ACTION_RANK: dict[str, int] = {a: i for i, a in enumerate((
    "received", "arrived", "unloaded", "sorted", "loaded", "out_for_delivery", "stored", "problem",
    "delivered", "returned", "cold_in", "cold_out", "air_loaded"))}
# The timeline keeps each entry's wire type (it is stored in the view and served as it is).
REGISTERED, CONSENT, PICKUP_ASSIGNED = (type_name(ParcelRegistered), type_name(ConsentRecorded),
                                        type_name(PickupAssigned))
HANDED_IN = type_name(ParcelHandedIn)
SCAN_TYPES = (type_name(ParcelScanned), type_name(ParcelSorted))


@dataclass(frozen=True)
class TimelineEntry:
    """One event as the timeline shows it: both clocks, where, who, and no phone number."""

    event_id: str
    type: str
    occurred_at: datetime
    recorded_at: datetime
    action: str | None
    node_id: str | None
    node_name: str | None
    brand: str
    operator_id: str
    detail: dict[str, Any] = field(default_factory=dict)
    device_id: str = ""   # the uploading token's device (who recorded it)


@dataclass(frozen=True)
class ParcelView:
    """One parcel's tracking read model: status, where it is, and its whole timeline."""

    waybill: str
    brand: str
    destination_village: str | None
    status: Status
    public_code: int
    public_label: str
    current_node: str | None
    misrouted: bool
    misrouted_nodes: tuple[str, ...]
    pickup_code: str | None
    problem_reason: str | None
    consent_to_station: bool | None
    consent_recorded_by: dict[str, str] | None   # who recorded the latest consent, and how
    last_event_at: datetime | None
    timeline: tuple[TimelineEntry, ...]


def _action_and_node(e: Envelope) -> tuple[str | None, str | None]:
    """What a scan says happened, and at which node the event took place (if either)."""
    p = current(e.payload)
    match p:
        case ParcelScanned(action=action, node_id=node):
            return str(action), node
        case ParcelSorted(node_id=node):
            return str(ScanAction.sorted), node
        case (PickupAssigned(node_id=node) | VehicleDeparted(node_id=node)
              | VehicleArrived(node_id=node) | SmsRequested(node_id=node)):
            return None, node
        case ParcelHandedIn(origin_village=node):
            return None, node
        case (ParcelRegistered() | ParcelRegisteredUpload() | ConsentRecorded() | SmsSubmitted() | SmsDelivered()
              | SmsFailed() | PeriodClosed()):
            return None, None
        case _:
            assert_never(p)


def _detail(e: Envelope) -> dict[str, Any]:
    p = e.payload.model_dump(mode="json", exclude_none=True)
    # The recipient's phone never enters a read model's timeline.
    for key in ("waybill", "recipient_phone", "phone", "action", "node_id"):
        p.pop(key, None)
    return p


def entry_for(e: Envelope, county: County) -> TimelineEntry:
    """The timeline entry an event contributes: everything tracking needs, and no phone."""
    action, node_id = _action_and_node(e)
    node = county.nodes.get(node_id) if node_id else None
    return TimelineEntry(e.event_id, e.type, e.occurred_at, e.recorded_at, action, node_id,
                         node.name if node else None, e.brand, e.operator_id, _detail(e),
                         e.device_id)


def entries_from_view(view: dict[str, Any]) -> list[TimelineEntry]:
    """The timeline of a stored view, read back so new events can be folded into it."""
    return [TimelineEntry(t["event_id"], t["type"], datetime.fromisoformat(t["occurred_at"]),
                          datetime.fromisoformat(t["recorded_at"]), t["action"], t["node_id"],
                          t["node_name"], t["brand"], t["operator_id"], t["detail"],
                          t.get("device_id", ""))
            for t in view["timeline"]]


def _order(t: TimelineEntry) -> tuple[datetime, int, str]:
    return (t.occurred_at, ACTION_RANK.get(t.action or "", -1), t.event_id)


def project_parcel(events: Iterable[Envelope], county: County) -> ParcelView:
    """Derive one parcel's view from its events (any order, any duplicates)."""
    events = list(events)
    return project_entries([entry_for(e, county) for e in events], county, waybill_of(events))


def waybill_of(events: Iterable[Envelope]) -> str:
    """The waybill the events are about (they all name the same one)."""
    for e in events:
        waybill = payload_waybill(e.payload)
        if waybill is None:
            raise ValueError(f"{e.type} {e.event_id} names no parcel")
        return waybill
    raise ValueError("a parcel view needs at least one event")


def project_entries(entries: Iterable[TimelineEntry], county: County, waybill: str) -> ParcelView:
    """Derive the view from timeline entries (any order, any duplicates): the whole rule."""
    history = sorted({t.event_id: t for t in entries}.values(), key=_order)
    if not history:
        raise ValueError("a parcel view needs at least one event")
    # Ingest lets only the owner write into a parcel (domain/ownership.py); should another brand's
    # event be in the history all the same, it shows nothing and changes nothing here.
    owner = owner_brand(history)
    history = [t for t in history if t.brand == owner]
    registrations = [t for t in history if t.type == REGISTERED]
    registration = registrations[-1] if registrations else None
    destination = registration.detail.get("destination_village") if registration else None
    scans = [t for t in history if t.type in SCAN_TYPES]
    latest = scans[-1] if scans else None

    status = ACTION_STATUS[ScanAction(latest.action)] if latest and latest.action else Status.info_received
    code, label = PUBLIC_CODES[status]

    chain: tuple[str, ...] = ()
    if destination in county.nodes and county.nodes[destination].tier == "village":
        chain = county.planned_chain(destination)
    off_chain = tuple(dict.fromkeys(
        t.node_id for t in scans if chain and t.node_id and t.node_id not in chain))

    stored = [t for t in scans if t.action == "stored"]
    consents = [t for t in history if t.type == CONSENT]
    problem = latest.detail.get("problem_reason") if latest and latest.action == "problem" else None
    return ParcelView(
        waybill=waybill,
        brand=owner,
        destination_village=destination,
        status=status, public_code=code, public_label=label,
        current_node=latest.node_id if latest is not None else None,
        misrouted=bool(off_chain), misrouted_nodes=off_chain,
        pickup_code=_pickup_code(stored, history),
        problem_reason=problem,
        consent_to_station=consents[-1].detail.get("consent") if consents else None,
        consent_recorded_by=_recorded_by(consents[-1]) if consents else None,
        last_event_at=history[-1].occurred_at,
        timeline=tuple(history),
    )


def owner_brand(history: list[TimelineEntry]) -> str:
    """The brand a parcel belongs to: its first manifest's or hand-in's (by when the platform
    heard of it), else, before any, the brand of its first scan."""
    registrations = [t for t in history if t.type in (REGISTERED, HANDED_IN)]
    if registrations:
        return min(registrations, key=lambda t: (t.recorded_at, t.event_id)).brand
    return min(history, key=lambda t: (t.recorded_at, t.event_id)).brand


def _recorded_by(t: TimelineEntry) -> dict[str, str]:
    return {"brand": t.brand, "device_id": t.device_id, "operator_id": t.operator_id,
            "channel": str(t.detail.get("channel", "")), "at": t.occurred_at.isoformat()}


def _pickup_code(stored: list[TimelineEntry], history: list[TimelineEntry]) -> str | None:
    """The code of the latest storing: the scan's own, or the one the platform assigned to it."""
    if not stored:
        return None
    latest = stored[-1]
    if latest.detail.get("pickup_code"):
        return str(latest.detail["pickup_code"])
    assigned = [t for t in history if t.type == PICKUP_ASSIGNED
                and t.node_id == latest.node_id]
    return str(assigned[-1].detail["pickup_code"]) if assigned else None


def view_to_dict(view: ParcelView) -> dict[str, Any]:
    """The JSON-able form stored in the read model and served by the API (no phone in it)."""
    return {
        "waybill": view.waybill, "brand": view.brand,
        "destination_village": view.destination_village, "status": str(view.status),
        "status_label": STATUS_LABELS[view.status],
        "public_code": view.public_code, "public_label": view.public_label,
        "aftership_tag": AFTERSHIP_TAGS[view.status],
        "current_node": view.current_node, "misrouted": view.misrouted,
        "misrouted_nodes": list(view.misrouted_nodes), "pickup_code": view.pickup_code,
        "problem_reason": view.problem_reason, "consent_to_station": view.consent_to_station,
        "consent_recorded_by": view.consent_recorded_by,
        "last_event_at": view.last_event_at.isoformat() if view.last_event_at else None,
        "timeline": [{
            "event_id": t.event_id, "type": t.type, "occurred_at": t.occurred_at.isoformat(),
            "recorded_at": t.recorded_at.isoformat(), "action": t.action, "node_id": t.node_id,
            "node_name": t.node_name, "brand": t.brand, "operator_id": t.operator_id,
            "detail": t.detail, "device_id": t.device_id,
        } for t in view.timeline],
    }
