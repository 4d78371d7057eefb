"""Service levels per leg (the SLA clocks), their outcomes and the cause of every breach. Pure.

A leg starts at a parcel's first scan at a node of one tier and ends at its first later scan at a
node of another tier; its budget is configuration. Whether an unfinished leg is open, at risk or
already late depends on "now", which is passed in, never read."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any, assert_never

from domain.county import County, CountyConfigError
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
    SmsDelivered,
    SmsFailed,
    SmsRequested,
    SmsSubmitted,
    VehicleArrived,
    VehicleDeparted,
    current,
)

CAUSES = ("problem", "misrouted", "missing_scan", "run_departed_late", "run_arrived_late",
          "missed_run", "not_arrived", "unknown",
          "late_to_cold_store", "cold_chain_broken", "missed_air_cutoff")
CAUSE_LABELS = {"problem": "问题件", "misrouted": "错分", "missing_scan": "漏扫",
                "run_departed_late": "班车晚发", "run_arrived_late": "班车晚到",
                "missed_run": "未赶上班车", "not_arrived": "超时未到", "unknown": "原因不明",
                "late_to_cold_store": "入冷库超时", "cold_chain_broken": "冷链中断超时",
                "missed_air_cutoff": "未赶上航班截载"}
# The perishable clocks of upward produce: not in [sla.legs], but ruled by the county's
# [perishables.*] and [air] (docs/sla.md, "Upward produce"). Each has one cause of its own.
UP_COLD_STORE, COLD_CHAIN, AIR_CUTOFF = "up_cold_store", "cold_chain", "air_cutoff"
UPWARD_LEGS = {UP_COLD_STORE: "村收寄→县冷库", COLD_CHAIN: "冷链脱冷时长", AIR_CUTOFF: "航空截载"}
UPWARD_CAUSES = {UP_COLD_STORE: "late_to_cold_store", COLD_CHAIN: "cold_chain_broken",
                 AIR_CUTOFF: "missed_air_cutoff"}


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


@dataclass(frozen=True)
class ScanFact:
    """What the SLA clocks read of one scan: when, where, what was done, on which trip."""

    event_id: str
    occurred_at: datetime
    brand: str
    node_id: str
    action: str
    trip_id: str | None = None


@dataclass(frozen=True)
class RegistrationFact:
    """What the SLA clocks read of one manifest line: where the parcel should end up."""

    event_id: str
    occurred_at: datetime
    brand: str
    destination_village: str | None


@dataclass(frozen=True)
class HandInFact:
    """What the SLA clocks read of an upward hand-in: when, where, and its perishable class."""

    event_id: str
    occurred_at: datetime
    brand: str
    origin_village: str
    perishable: str | None
    weight_g: int


@dataclass(frozen=True)
class MoveFact:
    """One fixed run's departure or arrival (kind "departed" or "arrived") against its timetable."""

    event_id: str
    kind: str
    occurred_at: datetime
    scheduled_at: datetime


def parcel_facts(events: Iterable[Envelope]) -> tuple[list[ScanFact], list[RegistrationFact]]:
    """The facts the SLA rules read from a parcel's events (any order, any duplicates)."""
    scans: list[ScanFact] = []
    regs: list[RegistrationFact] = []
    for e in events:
        p = current(e.payload)
        match p:
            case ParcelScanned():
                scans.append(ScanFact(e.event_id, e.occurred_at, e.brand, p.node_id,
                                      str(p.action), p.trip_id))
            case ParcelRegistered() | ParcelRegisteredUpload():
                regs.append(RegistrationFact(e.event_id, e.occurred_at, e.brand,
                                             p.destination_village))
            case ParcelHandedIn():
                pass  # read by handin_facts
            case (ParcelSorted() | PickupAssigned() | ConsentRecorded() | VehicleDeparted()
                  | VehicleArrived() | SmsRequested() | SmsSubmitted() | SmsDelivered()
                  | SmsFailed() | PeriodClosed()):
                pass  # no SLA leg starts or ends on them
            case _:
                assert_never(p)
    return scans, regs


def handin_facts(events: Iterable[Envelope]) -> list[HandInFact]:
    """The hand-ins among a parcel's events (any order, any duplicates)."""
    return [HandInFact(e.event_id, e.occurred_at, e.brand, e.payload.origin_village,
                       e.payload.perishable, e.payload.weight_g)
            for e in events if isinstance(e.payload, ParcelHandedIn)]


def move_fact(e: Envelope) -> MoveFact:
    """A vehicle.departed or vehicle.arrived event as the breach causes read it."""
    p = e.payload
    if isinstance(p, VehicleDeparted):
        return MoveFact(e.event_id, "departed", e.occurred_at, p.scheduled_at)
    if isinstance(p, VehicleArrived):
        return MoveFact(e.event_id, "arrived", e.occurred_at, p.scheduled_at)
    raise TypeError(f"{type(p).__name__} is no vehicle movement")


def _ordered(facts: Iterable[Any]) -> list[Any]:
    unique = {f.event_id: f for f in facts}
    return sorted(unique.values(), key=lambda f: (f.occurred_at, f.event_id))


def _tier(county: County, node_id: str) -> str | None:
    node = county.nodes.get(node_id)
    return node.tier if node else None


def route_for(county: County, village: str | None) -> str | None:
    return next((r.id for r in county.routes if village and village in r.stops), None)


def evaluate_parcel(waybill: str, events: Iterable[Envelope],
                    trips: Mapping[str, Sequence[Envelope]], county: County,
                    sla: SlaConfig) -> list[LegOutcome]:
    """Every SLA leg this parcel has started, with its outcome and, if late, why."""
    evs = list(events)
    scans, regs = parcel_facts(evs)
    moves = {trip: [move_fact(m) for m in ms] for trip, ms in trips.items()}
    return evaluate_facts(waybill, scans, regs, moves, county, sla, handin_facts(evs))


def evaluate_facts(waybill: str, scans: Iterable[ScanFact], regs: Iterable[RegistrationFact],
                   trips: Mapping[str, Sequence[MoveFact]], county: County,
                   sla: SlaConfig, handins: Iterable[HandInFact] = ()) -> list[LegOutcome]:
    """The whole rule, over the facts a store keeps (any order, any duplicates): every SLA leg
    this parcel has started, with its outcome and, if late, why."""
    scans = _ordered(scans)
    hands = _ordered(handins)
    if not scans and not hands:
        return []
    regs = _ordered(regs)
    village = regs[-1].destination_village if regs else None
    # A hand-in makes the parcel upward and starts its clocks; without one, a first scan
    # `received` at a village point does (the older way to say it).
    hand = hands[0] if hands else None
    first = (ScanFact(hand.event_id, hand.occurred_at, hand.brand, hand.origin_village,
                      "handed_in") if hand else scans[0])
    upward = _tier(county, first.node_id) == "village" and first.action in ("received",
                                                                              "handed_in")
    if upward:
        village = first.node_id
    township = county.nodes[village].parent if village in county.nodes else None
    brand = (hand.brand if hand else regs[-1].brand if regs else first.brand)
    # Where a leg may start and end: the parcel's own centre, township or village, once its
    # destination is known. A scan at another township (misrouted) starts and ends nothing: the
    # township → village leg is that of the parcel's own station, filed under it; the detour
    # shows as the cause of the legs it delays.
    own = dict(zip(("county", "township", "village"), county.planned_chain(village))) \
        if village in county.nodes and not upward else {}
    route = route_for(county, village)

    def ours(s: ScanFact, tier: str) -> bool:
        return _tier(county, s.node_id) == tier and s.node_id == own.get(tier, s.node_id)

    out = []
    for rule in sla.legs:
        if (rule.direction == "up") != upward:
            continue
        if hand is not None:
            # A hand-in's upward leg starts at the hand-in and ends at `received` at the centre.
            start = first if rule.from_tier == "village" else None
        else:
            start = next((s for s in scans if ours(s, rule.from_tier)), None)
        if start is None:
            continue
        end = next((s for s in scans if s.occurred_at >= start.occurred_at
                    and ours(s, rule.to_tier) and s.action != "problem"
                    and (hand is None or s.action == "received")), None)
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
        out.append(LegOutcome(waybill, brand, rule.id, route, township,
                              village, start.occurred_at, due, at_risk_at,
                              end.occurred_at if end else None, outcome, over, cause, counted,
                              start.event_id, end.event_id if end else None))
    if hand is not None:
        out += perishable_legs(waybill, hand, scans, county, sla.at_risk_permille,
                               (route, township, village))
    return out


def _leg(waybill: str, brand: str, leg: str, where: tuple[str | None, str | None, str | None],
         start: ScanFact, due: datetime, end: ScanFact | None, late: bool, minutes_over: int | None,
         permille: int, county: County) -> LegOutcome:
    """One upward perishable leg: open (no end), on time or late, its fixed cause if not on time."""
    outcome = "open" if end is None else "late" if late else "on_time"
    at_risk_at = start.occurred_at + (due - start.occurred_at) * permille / 1000
    counted = (end.occurred_at if end else due).astimezone(_tz(county)).date()
    return LegOutcome(waybill, brand, leg, *where, start.occurred_at, due, at_risk_at,
                      end.occurred_at if end else None, outcome,
                      minutes_over if outcome == "late" else None,
                      None if outcome == "on_time" else UPWARD_CAUSES[leg], counted,
                      start.event_id, end.event_id if end else None)


def perishable_legs(waybill: str, hand: HandInFact, scans: Sequence[ScanFact], county: County,
                    permille: int, where: tuple[str | None, str | None, str | None]
                    ) -> list[LegOutcome]:
    """The clocks of a perishable hand-in (docs/sla.md, "Upward produce"): to the cold store,
    outside the cold chain, and the air cut-off for classes that fly. `scans` in order."""
    cls = county.perishables.get(hand.perishable or "")
    if cls is None:
        return []
    out = []
    brand, centre = hand.brand, county.centre.id
    start = ScanFact(hand.event_id, hand.occurred_at, hand.brand, hand.origin_village, "handed_in")
    due = hand.occurred_at + timedelta(hours=cls.cold_store_within_hours)
    end = next((s for s in scans if s.action == "cold_in" and s.node_id == centre
                and s.occurred_at >= hand.occurred_at), None)
    out.append(_leg(waybill, brand, UP_COLD_STORE, where, start, due, end,
                    end is not None and end.occurred_at > due,
                    _over(end.occurred_at, due) if end else None, permille, county))
    first_cold = next((s for s in scans if s.action == "cold_in"
                       and s.occurred_at >= hand.occurred_at), None)
    if first_cold is None:
        return out
    out.append(_cold_chain(waybill, brand, where, first_cold, scans, cls.max_outside_cold_minutes,
                           permille, county))
    if cls.air and county.air is not None:
        cutoff = time.fromisoformat(county.air.cutoff)
        local = first_cold.occurred_at.astimezone(_tz(county))
        day = local.date() if local.time() <= cutoff else local.date() + timedelta(days=1)
        due = datetime.combine(day, cutoff, _tz(county))
        end = next((s for s in scans if s.action == "air_loaded" and s.node_id == centre
                    and s.occurred_at >= first_cold.occurred_at), None)
        out.append(_leg(waybill, brand, AIR_CUTOFF, where, first_cold, due, end,
                        end is not None and end.occurred_at > due,
                        _over(end.occurred_at, due) if end else None, permille, county))
    return out


def _over(end: datetime, due: datetime) -> int:
    return int((end - due).total_seconds() // 60)


def _cold_chain(waybill: str, brand: str, where: tuple[str | None, str | None, str | None],
                first_cold: ScanFact, scans: Sequence[ScanFact], max_minutes: int, permille: int,
                county: County) -> LegOutcome:
    """Time outside the cold chain from the first `cold_in`: each `cold_out` to the next `cold_in`
    or `air_loaded` (the airline takes it: the chain ends there). Over budget: late, counted when
    the spell that broke it closed; out now within budget: open, due when the budget runs out;
    else on time, counted at its last return to the cold (or its first cold_in)."""
    budget = timedelta(minutes=max_minutes)
    used = timedelta()
    out_since: ScanFact | None = None
    closed = first_cold          # the latest scan that put it (back) in the cold
    breach: tuple[datetime, ScanFact] | None = None   # when the budget ran out, the closing scan
    for s in scans:
        if s.occurred_at < first_cold.occurred_at or s is first_cold:
            continue
        if s.action == "cold_out" and out_since is None:
            out_since = s
        elif s.action in ("cold_in", "air_loaded") and out_since is not None:
            spell = s.occurred_at - out_since.occurred_at
            if breach is None and used + spell > budget:
                breach = (out_since.occurred_at + (budget - used), s)
            used += spell
            out_since, closed = None, s
        if s.action == "air_loaded":
            break
    if breach is not None:
        return _leg(waybill, brand, COLD_CHAIN, where, first_cold, breach[0], breach[1], True,
                    int((used - budget).total_seconds() // 60), permille, county)
    if out_since is not None:
        return _leg(waybill, brand, COLD_CHAIN, where, first_cold,
                    out_since.occurred_at + (budget - used), None, False, None, permille, county)
    return _leg(waybill, brand, COLD_CHAIN, where, first_cold, closed.occurred_at + (budget - used),
                closed, False, None, permille, county)


def breach_cause(rule: LegRule, start: ScanFact, end: ScanFact | None, scans: Sequence[ScanFact],
                 regs: Sequence[RegistrationFact], trips: Mapping[str, Sequence[MoveFact]],
                 county: County, sla: SlaConfig) -> str:
    """The first cause the events show, in order of how directly they explain the delay.

    `end` is None for a leg that has not ended: its scans so far are read, a scan it has not
    had yet is not "missing", and if nothing explains it the cause is `not_arrived`."""
    window = [s for s in scans if start.occurred_at <= s.occurred_at
              and (end is None or s.occurred_at <= end.occurred_at)]
    if any(s.action == "problem" for s in window):
        return "problem"
    if regs:
        dest = regs[-1].destination_village
        if dest in county.nodes:
            chain = county.planned_chain(dest)
            if any(s.node_id not in chain for s in window):
                return "misrouted"
    actions = {s.action for s in window}
    tiers = {_tier(county, s.node_id) for s in window}
    skipped = rule.from_tier == "county" and rule.to_tier == "village" and "township" not in tiers
    if end is not None and (skipped or any(a not in actions for a in rule.expect_actions)):
        return "missing_scan"
    tolerance = timedelta(minutes=sla.run_tolerance_minutes)
    trip_id = next((s.trip_id for s in window if s.action == "loaded" and s.trip_id), None)
    moves = _ordered(trips.get(trip_id, ())) if trip_id else []
    departed = next((m for m in moves if m.kind == "departed"), None)
    if departed and departed.occurred_at - departed.scheduled_at > tolerance:
        return "run_departed_late"
    if any(m.kind == "arrived" and m.occurred_at - m.scheduled_at > tolerance for m in moves):
        return "run_arrived_late"
    if departed is not None:
        bus = county.bus_line_of(trip_id) if trip_id else None
        if bus is not None:
            # A bus line's run: its plan is the line's timetable, which gives departures from
            # its first stop only (a leg that starts elsewhere has no plan to have missed).
            expected = (next_departure(county, bus.departures, start.occurred_at)
                        if start.node_id == bus.stops[0] else None)
        else:
            expected = next_run(county, route_for(county, regs[-1].destination_village
                                                  if regs else None), start.occurred_at)
        if expected is not None and departed.scheduled_at > expected + tolerance:
            return "missed_run"
    return "unknown" if end is not None else "not_arrived"


def next_run(county: County, route_id: str | None, after: datetime) -> datetime | None:
    """The first scheduled departure of the route at or after `after` (today or tomorrow)."""
    route = county.route(route_id) if route_id else None
    if route is None:
        return None
    return next_departure(county, [run.departs for run in route.runs], after)


def next_departure(county: County, departs: Iterable[str], after: datetime) -> datetime | None:
    """The first of these timetabled departures ("HH:MM", county time) at or after `after`
    (today or tomorrow)."""
    local, times = after.astimezone(_tz(county)), sorted(departs)
    for offset in (0, 1):
        day = local.date() + timedelta(days=offset)
        for hhmm in times:
            at = datetime.combine(day, time.fromisoformat(hhmm), _tz(county))
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
