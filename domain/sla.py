"""Service levels per leg (the SLA clocks), their outcomes and the cause of every breach. Pure.

A leg starts at a parcel's first scan at a node of one tier and ends at its first later scan at a
node of another tier; its budget is configuration. Whether an unfinished leg is open, at risk or
already late depends on "now", which is passed in, never read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, Generic, TypeVar, assert_never

from domain.county import County, CountyConfigError
from domain.envelope import Envelope
from domain.events import (
    ConsentRecorded,
    Manifest,
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
)

CAUSES = ("problem", "misrouted", "missing_scan", "run_departed_late", "run_arrived_late",
          "missed_run", "not_arrived", "unknown")
CAUSE_LABELS = {"problem": "问题件", "misrouted": "错分", "missing_scan": "漏扫",
                "run_departed_late": "班车晚发", "run_arrived_late": "班车晚到",
                "missed_run": "未赶上班车", "not_arrived": "超时未到", "unknown": "原因不明"}


@dataclass(frozen=True)
class LegRule:
    id: str
    name: str
    direction: str            # "down" (centre → village) or "up" (village hand-in → centre)
    from_tier: str
    to_tier: str
    budget_minutes: int | None
    cutoff: time | None       # upward: handed in before it, due the same day
    expect_actions: tuple[str, ...] = ()


@dataclass(frozen=True)
class SlaConfig:
    legs: tuple[LegRule, ...]
    run_tolerance_minutes: int
    at_risk_permille: int
    target_permille: int


@dataclass(frozen=True)
class LegOutcome:
    waybill: str
    brand: str
    leg: str
    route_id: str | None
    township: str | None
    village: str | None
    start_at: datetime
    due_at: datetime
    at_risk_at: datetime
    end_at: datetime | None
    outcome: str              # on_time | late | open (open legs become at_risk/late with "now")
    minutes_over: int | None
    cause: str | None         # late: why; open: why, should "now" pass its due time unended
    day: date                 # county-local day the outcome counts on (end, else due)
    start_event: str
    end_event: str | None


def parse_sla(doc: dict[str, Any], source: str) -> SlaConfig:
    s = doc.get("sla")
    if not isinstance(s, dict):
        raise CountyConfigError(f"{source}: [sla]: the table is required")
    legs = []
    for i, raw in enumerate(s.get("legs", [])):
        where = f"{source}: sla.legs[{i}]"
        try:
            cutoff = time.fromisoformat(raw["cutoff"]) if "cutoff" in raw else None
            rule = LegRule(str(raw["id"]), str(raw["name"]), str(raw.get("direction", "down")),
                           str(raw["from_tier"]), str(raw["to_tier"]), raw.get("budget_minutes"),
                           cutoff, tuple(raw.get("expect_actions", ())))
        except (KeyError, ValueError) as exc:
            raise CountyConfigError(f"{where}: {exc}") from None
        if (rule.budget_minutes is None) == (rule.cutoff is None):
            raise CountyConfigError(f"{where}: give either budget_minutes or cutoff")
        if rule.budget_minutes is not None and (type(rule.budget_minutes) is not int
                                                or rule.budget_minutes <= 0):
            raise CountyConfigError(f"{where}: budget_minutes must be a positive integer")
        if rule.direction not in ("down", "up"):
            raise CountyConfigError(f"{where}: direction must be 'down' or 'up'")
        legs.append(rule)
    if not legs:
        raise CountyConfigError(f"{source}: [sla]: at least one leg is needed")
    return SlaConfig(tuple(legs), int(s.get("run_tolerance_minutes", 15)),
                     int(s.get("at_risk_permille", 750)), int(s.get("target_permille", 950)))


def _tz(county: County) -> timezone:
    return timezone(timedelta(minutes=county.utc_offset_minutes))


def _due(rule: LegRule, start: datetime, county: County) -> datetime:
    if rule.budget_minutes is not None:
        return start + timedelta(minutes=rule.budget_minutes)
    assert rule.cutoff is not None
    local = start.astimezone(_tz(county))
    day = local.date() if local.time() < rule.cutoff else local.date() + timedelta(days=1)
    return datetime.combine(day + timedelta(days=1), time(0), _tz(county))  # by midnight


P = TypeVar("P", ParcelScanned, Manifest)


@dataclass(frozen=True, slots=True)
class _Seen(Generic[P]):
    """One event of a parcel with its payload narrowed to the class the rules read."""

    occurred_at: datetime
    event_id: str
    brand: str
    payload: P


def _sorted(events: Iterable[Envelope]) -> tuple[list[_Seen[ParcelScanned]],
                                                 list[_Seen[Manifest]]]:
    """The parcel's scans (de-duplicated) and manifests, each in event-time order."""
    scans: dict[str, _Seen[ParcelScanned]] = {}
    regs: list[_Seen[Manifest]] = []
    for e in events:
        p = current(e.payload)
        match p:
            case ParcelScanned():
                scans[e.event_id] = _Seen(e.occurred_at, e.event_id, e.brand, p)
            case ParcelRegistered() | ParcelRegisteredUpload():
                regs.append(_Seen(e.occurred_at, e.event_id, e.brand, p))
            case (ParcelSorted() | PickupAssigned() | ConsentRecorded() | VehicleDeparted()
                  | VehicleArrived() | SmsRequested() | SmsSubmitted() | SmsDelivered()
                  | SmsFailed() | PeriodClosed()):
                pass  # no SLA leg starts or ends on them
            case _:
                assert_never(p)
    order = (lambda s: (s.occurred_at, s.event_id))
    return sorted(scans.values(), key=order), sorted(regs, key=order)


def _tier(county: County, node_id: str) -> str | None:
    node = county.nodes.get(node_id)
    return node.tier if node else None


def route_for(county: County, village: str | None) -> str | None:
    return next((r.id for r in county.routes if village and village in r.stops), None)


def evaluate_parcel(waybill: str, events: Iterable[Envelope],
                    trips: Mapping[str, Sequence[Envelope]], county: County,
                    sla: SlaConfig) -> list[LegOutcome]:
    """Every SLA leg this parcel has started, with its outcome and, if late, why."""
    scans, regs = _sorted(events)
    if not scans:
        return []
    village = regs[-1].payload.destination_village if regs else None
    first = scans[0]
    upward = (_tier(county, first.payload.node_id) == "village"
              and first.payload.action == ScanAction.received)
    if upward:
        village = first.payload.node_id
    township = county.nodes[village].parent if village in county.nodes else None
    brand = (regs[-1].brand if regs else first.brand)
    # Where a leg may start and end: the parcel's own centre, township or village, once its
    # destination is known. A scan at another township (misrouted) starts and ends nothing: the
    # township → village leg is that of the parcel's own station, filed under it; the detour
    # shows as the cause of the legs it delays.
    own = dict(zip(("county", "township", "village"), county.planned_chain(village))) \
        if village in county.nodes and not upward else {}

    def ours(s: _Seen[ParcelScanned], tier: str) -> bool:
        return (_tier(county, s.payload.node_id) == tier
                and s.payload.node_id == own.get(tier, s.payload.node_id))

    out = []
    for rule in sla.legs:
        if (rule.direction == "up") != upward:
            continue
        start = next((s for s in scans if ours(s, rule.from_tier)), None)
        if start is None:
            continue
        end = next((s for s in scans if s.occurred_at >= start.occurred_at
                    and ours(s, rule.to_tier) and s.payload.action != ScanAction.problem), None)
        due = _due(rule, start.occurred_at, county)
        span = due - start.occurred_at
        at_risk_at = start.occurred_at + span * sla.at_risk_permille / 1000
        if end is None:
            # Why it would be late if "now" passes its due time: what its scans show so far.
            outcome, over = "open", None
            cause = breach_cause(rule, start, None, scans, regs, trips, county, sla)
        elif end.occurred_at <= due:
            outcome, over, cause = "on_time", None, None
        else:
            outcome = "late"
            over = int((end.occurred_at - due).total_seconds() // 60)
            cause = breach_cause(rule, start, end, scans, regs, trips, county, sla)
        counted = (end.occurred_at if end else due).astimezone(_tz(county)).date()
        out.append(LegOutcome(waybill, brand, rule.id, route_for(county, village), township,
                              village, start.occurred_at, due, at_risk_at,
                              end.occurred_at if end else None, outcome, over, cause, counted,
                              start.event_id, end.event_id if end else None))
    return out


def _run_moves(moves: Iterable[Envelope]) -> tuple[list[tuple[Envelope, VehicleDeparted]],
                                                   list[tuple[Envelope, VehicleArrived]]]:
    """A run's departures and arrivals, in the order given."""
    departed: list[tuple[Envelope, VehicleDeparted]] = []
    arrived: list[tuple[Envelope, VehicleArrived]] = []
    for m in moves:
        p = current(m.payload)
        match p:
            case VehicleDeparted():
                departed.append((m, p))
            case VehicleArrived():
                arrived.append((m, p))
            case (ParcelRegistered() | ParcelRegisteredUpload() | ParcelScanned() | ParcelSorted()
                  | PickupAssigned()
                  | ConsentRecorded() | SmsRequested() | SmsSubmitted() | SmsDelivered()
                  | SmsFailed() | PeriodClosed()):
                pass  # not a vehicle movement
            case _:
                assert_never(p)
    return departed, arrived


def breach_cause(rule: LegRule, start: _Seen[ParcelScanned], end: _Seen[ParcelScanned] | None,
                 scans: Sequence[_Seen[ParcelScanned]], regs: Sequence[_Seen[Manifest]],
                 trips: Mapping[str, Sequence[Envelope]], county: County,
                 sla: SlaConfig) -> str:
    """The first cause the events show, in order of how directly they explain the delay.

    `end` is None for a leg that has not ended: its scans so far are read, a scan it has not
    had yet is not "missing", and if nothing explains it the cause is `not_arrived`."""
    window = [s.payload for s in scans if start.occurred_at <= s.occurred_at
              and (end is None or s.occurred_at <= end.occurred_at)]
    if any(s.action == ScanAction.problem for s in window):
        return "problem"
    if regs:
        dest = regs[-1].payload.destination_village
        if dest in county.nodes:
            chain = county.planned_chain(dest)
            if any(s.node_id not in chain for s in window):
                return "misrouted"
    actions = {str(s.action) for s in window}
    tiers = {_tier(county, s.node_id) for s in window}
    skipped = rule.from_tier == "county" and rule.to_tier == "village" and "township" not in tiers
    if end is not None and (skipped or any(a not in actions for a in rule.expect_actions)):
        return "missing_scan"
    tolerance = timedelta(minutes=sla.run_tolerance_minutes)
    trip_id = next((s.trip_id for s in window
                    if s.action == ScanAction.loaded and s.trip_id), None)
    departures, arrivals = _run_moves(trips.get(trip_id, ()) if trip_id else ())
    departed = departures[0] if departures else None
    if departed and departed[0].occurred_at - departed[1].scheduled_at > tolerance:
        return "run_departed_late"
    if any(m.occurred_at - p.scheduled_at > tolerance for m, p in arrivals):
        return "run_arrived_late"
    if departed is not None:
        expected = next_run(county, route_for(county, regs[-1].payload.destination_village
                                              if regs else None), start.occurred_at)
        if expected is not None and departed[1].scheduled_at > expected + tolerance:
            return "missed_run"
    return "unknown" if end is not None else "not_arrived"


def next_run(county: County, route_id: str | None, after: datetime) -> datetime | None:
    """The first scheduled departure of the route at or after `after` (today or tomorrow)."""
    route = county.route(route_id) if route_id else None
    if route is None:
        return None
    local = after.astimezone(_tz(county))
    for offset in (0, 1):
        day = local.date() + timedelta(days=offset)
        for run in sorted(route.runs, key=lambda r: r.departs):
            at = datetime.combine(day, time.fromisoformat(run.departs), _tz(county))
            if at >= local:
                return at
    return None


def live_status(leg: LegOutcome, now: datetime) -> str:
    """An unfinished leg is late once past due, at risk past its share of the budget, else open."""
    if leg.outcome != "open":
        return leg.outcome
    if now > leg.due_at:
        return "late"
    return "at_risk" if now >= leg.at_risk_at else "open"
