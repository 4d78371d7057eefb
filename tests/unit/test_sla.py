"""SLA legs: every outcome and every breach cause from a small narrated scenario."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.envelope import Envelope
from domain.events import PAYLOADS
from domain.sla import LegOutcome, evaluate_parcel, live_status
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from tests.fixtures.phones import sealed

COUNTY = load_county(DEMO_COUNTY)
SLA = COUNTY.sla
CST = timezone(timedelta(hours=8))
DAY = datetime(2026, 11, 11, 0, 0, tzinfo=CST)
SCRIPT_DAY = datetime(2026, 9, 15, tzinfo=CST)
W = "ZT7300012345678"
_n = iter(range(10**6))


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def ev(event_type: str, when: datetime, **payload: Any) -> Envelope:
    version = 2 if event_type == "parcel.registered" else 1
    return Envelope(event_id=f"00000000-0000-7000-8000-{next(_n):012d}", type=event_type,
                    schema_version=version, occurred_at=when, recorded_at=when, device_id="d",
                    brand="ZTO", operator_id="op",
                    payload=PAYLOADS[(event_type, version)].model_validate(payload))


def reg() -> Envelope:
    return ev("parcel.registered", at(-2), waybill=W, recipient_phone=sealed("13812345678"),
              destination_village="VIL-XILIU-01", weight_g=900)


def scan(hours: float, action: str, node: str, **kw: Any) -> Envelope:
    return ev("parcel.scanned", at(hours), waybill=W, action=action, node_id=node, **kw)


def run(kind: str, hours: float, scheduled: float, node: str = "CTY-HAICHENG") -> Envelope:
    return ev(f"vehicle.{kind}", at(hours), trip_id="T1", route_id="R-XILIU", run_id="R-XILIU-AM",
              node_id=node, scheduled_at=at(scheduled).isoformat())


def legs(events: list[Envelope], trips: list[Envelope] | None = None) -> dict[str, LegOutcome]:
    return {o.leg: o for o in evaluate_parcel(W, events, {"T1": trips or []}, COUNTY, SLA)}


def down(to_township: float, to_village: float, *extra: Envelope, loaded: bool = True) -> list[Envelope]:
    events = [reg(), scan(6, "received", "CTY-HAICHENG")]
    if loaded:
        events.append(scan(7.5, "loaded", "CTY-HAICHENG", trip_id="T1"))
    return events + [scan(to_township, "arrived", "TWN-XILIU"),
                     scan(to_village, "stored", "VIL-XILIU-01", pickup_code="1-1-1"), *extra]


def test_given_a_parcel_that_keeps_every_clock_then_all_downward_legs_are_on_time() -> None:
    # received at the centre 06:00, at the township 10:00, stored in the village 16:00
    result = legs(down(10, 16))
    assert {k: v.outcome for k, v in result.items()} == {
        "county_to_township": "on_time", "township_to_village": "on_time",
        "centre_to_village": "on_time"}
    assert result["county_to_township"].route_id == "R-XILIU"


def test_given_a_parcel_still_on_its_way_then_open_then_at_risk_then_late_as_time_passes() -> None:
    leg = legs([reg(), scan(6, "received", "CTY-HAICHENG")])["county_to_township"]
    assert leg.outcome == "open" and leg.end_at is None
    assert live_status(leg, at(10)) == "open"        # 4 of 12 hours used
    assert live_status(leg, at(15.5)) == "at_risk"   # past 75 % (9 h)
    assert live_status(leg, at(18.5)) == "late"      # past 12 h, with no scan at the township


def test_given_a_late_run_departure_then_the_breach_is_run_departed_late() -> None:
    result = legs(down(20, 30), [run("departed", 11, 8)])  # the 08:00 run left at 11:00
    leg = result["county_to_township"]
    assert (leg.outcome, leg.minutes_over, leg.cause) == ("late", 120, "run_departed_late")


def test_given_a_late_run_arrival_then_the_breach_is_run_arrived_late() -> None:
    result = legs(down(20, 30), [run("departed", 8.1, 8), run("arrived", 20, 11, "TWN-XILIU")])
    assert result["county_to_township"].cause == "run_arrived_late"


def test_given_a_parcel_that_missed_its_run_then_the_breach_is_missed_run() -> None:
    # at the centre at 06:00, but it rode the 14:30 run (on time), not the 08:00 one
    trips = [ev("vehicle.departed", at(14.5), trip_id="T1", route_id="R-XILIU", run_id="R-XILIU-PM",
                node_id="CTY-HAICHENG", scheduled_at=at(14.5).isoformat())]
    result = legs(down(19, 30), trips)
    assert result["county_to_township"].cause == "missed_run"


def test_given_no_loaded_scan_then_the_breach_is_a_missing_scan() -> None:
    assert legs(down(20, 30, loaded=False))["county_to_township"].cause == "missing_scan"


def test_given_a_problem_scan_then_the_breach_is_a_problem_parcel() -> None:
    events = down(20, 30, scan(9, "problem", "CTY-HAICHENG", problem_reason="damaged"))
    assert legs(events)["county_to_township"].cause == "problem"


def test_given_a_detour_through_another_township_then_the_breach_is_misrouting() -> None:
    events = down(20, 30, scan(12, "arrived", "TWN-TENGAO"))
    assert legs(events)["county_to_township"].cause == "misrouted"


def test_given_nothing_explains_the_delay_then_the_cause_is_unknown() -> None:
    assert legs(down(20, 30))["county_to_township"].cause == "unknown"


def test_given_a_parcel_misrouted_and_still_at_the_wrong_township_then_its_legs_are_misrouted() -> None:
    # loaded at 07:30, scanned in at 腾鳌 (not its township) at 10:00, nothing since
    events = [reg(), scan(6, "received", "CTY-HAICHENG"), scan(7.5, "loaded", "CTY-HAICHENG"),
              scan(10, "arrived", "TWN-TENGAO")]
    result = legs(events)
    # the township → village leg never started: it starts only at the parcel's own station
    assert set(result) == {"county_to_township", "centre_to_village"}
    for leg in result.values():
        assert (leg.outcome, leg.end_at, leg.cause) == ("open", None, "misrouted")
    assert live_status(result["county_to_township"], at(18.5)) == "late"


def test_given_an_unfinished_leg_nothing_explains_then_its_cause_is_not_arrived() -> None:
    # loaded on a punctual run, never scanned again; another parcel never even loaded
    rode = legs([reg(), scan(6, "received", "CTY-HAICHENG"),
                 scan(7.5, "loaded", "CTY-HAICHENG", trip_id="T1")], [run("departed", 8, 8)])
    sat = legs([reg(), scan(6, "received", "CTY-HAICHENG")])
    assert rode["county_to_township"].cause == sat["county_to_township"].cause == "not_arrived"


def test_given_a_misrouted_parcel_forwarded_then_its_township_leg_starts_at_its_own_station() -> None:
    # 腾鳌 by mistake at 10:00, its own 西柳 at 20:00, stored in its village at 22:00
    events = down(20, 22, scan(10, "arrived", "TWN-TENGAO"))
    result = legs(events)
    t2v = result["township_to_village"]
    assert (t2v.start_at, t2v.end_at, t2v.outcome) == (at(20), at(22), "on_time")
    assert (t2v.township, t2v.village) == ("TWN-XILIU", "VIL-XILIU-01")
    assert (result["county_to_township"].outcome, result["county_to_township"].cause) == (
        "late", "misrouted")


def test_every_cause_the_rules_give_is_documented_and_labelled() -> None:
    from pathlib import Path

    from domain.sla import CAUSE_LABELS, CAUSES

    doc = (Path(__file__).resolve().parents[2] / "docs" / "sla.md").read_text(encoding="utf-8")
    for cause in CAUSES:
        assert f"| `{cause}` | {CAUSE_LABELS[cause]} |" in doc, cause


def upward(hand_in: datetime, at_county: datetime) -> LegOutcome:
    events = [ev("parcel.scanned", hand_in, waybill=W, action="received", node_id="VIL-XILIU-01"),
              ev("parcel.scanned", at_county, waybill=W, action="arrived", node_id="CTY-HAICHENG")]
    return {o.leg: o for o in evaluate_parcel(W, events, {}, COUNTY, SLA)}["village_to_county"]


def test_the_14_00_cutoff_on_both_sides_of_the_minute() -> None:
    # handed in at 13:59: due the same day; at 14:00: due the next day
    assert upward(at(13 + 59 / 60), at(23.5)).outcome == "on_time"
    assert upward(at(13 + 59 / 60), at(24.5)).outcome == "late"
    assert upward(at(14), at(24.5)).outcome == "on_time"
    assert upward(at(14), at(48.5)).outcome == "late"


def test_the_cutoff_across_midnight_and_the_utc_date_boundary() -> None:
    # 07:30 county time is 23:30 UTC the day before: the county's day decides, not UTC's
    early = upward(at(7.5), at(23.9))
    assert early.outcome == "on_time" and early.due_at == DAY + timedelta(days=1)
    assert early.day == DAY.date()
    # handed in at 23:00 (after the cut-off), reaching the centre at 01:00: due the next midnight
    late_evening = upward(at(23), at(25))
    assert late_evening.due_at == DAY + timedelta(days=2) and late_evening.outcome == "on_time"


LIFE = down(20, 30, scan(33, "delivered", "VIL-XILIU-01"))
TRIPS = [run("departed", 11, 8), run("arrived", 13, 11, "TWN-XILIU")]


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.lists(st.integers(0, len(LIFE) - 1), max_size=6))
def test_property_shuffled_and_duplicated_events_give_the_same_outcomes(
        rnd: random.Random, dups: list[int]) -> None:
    events = LIFE + [LIFE[i] for i in dups]
    trips = TRIPS + TRIPS[:1]
    rnd.shuffle(events)
    rnd.shuffle(trips)
    assert legs(events, trips) == legs(LIFE, TRIPS)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from([
    ("received", "CTY-HAICHENG"), ("loaded", "CTY-HAICHENG"), ("problem", "CTY-HAICHENG"),
    ("arrived", "TWN-XILIU"), ("arrived", "TWN-TENGAO"), ("stored", "VIL-XILIU-01"),
    ("stored", "VIL-TENGAO-01")]), min_size=1, max_size=6), st.lists(st.floats(0, 60), min_size=6,
                                                                      max_size=6))
def test_property_every_leg_not_on_time_has_a_documented_cause(
        steps: list[tuple[str, str]], hours: list[float]) -> None:
    from domain.sla import CAUSES

    events = [reg()] + [scan(h, a, n, **({"problem_reason": "damaged"} if a == "problem" else {}))
                        for (a, n), h in zip(steps, hours)]
    for leg in legs(events).values():
        assert (leg.cause in CAUSES) if leg.outcome != "on_time" else leg.cause is None, leg


def _envelopes_of(raw_events: list[dict[str, Any]]) -> list[Envelope]:
    from domain.validation import validate_batch

    envs = validate_batch(raw_events, county=COUNTY, permitted_brands=frozenset(COUNTY.brands),
                          device_id="d", recorded_at=datetime(2026, 9, 20, tzinfo=CST))
    assert all(isinstance(e, Envelope) for e in envs)
    return envs  # type: ignore[return-value]


def _day_counts(envs: list[Envelope]) -> dict[tuple[Any, ...], int]:
    """Evaluate every parcel of a day and count outcomes per (day, leg, brand, outcome, cause)."""
    from collections import Counter, defaultdict

    by_waybill: dict[str, list[Envelope]] = defaultdict(list)
    trips: dict[str, list[Envelope]] = defaultdict(list)
    for e in envs:
        key = getattr(e.payload, "waybill", None)
        if key is not None:
            by_waybill[key].append(e)
        else:
            trips[e.payload.trip_id].append(e)  # type: ignore[attr-defined]
    return Counter((o.day, o.leg, o.brand, o.outcome, o.cause)
                   for w, evs in by_waybill.items()
                   for o in evaluate_parcel(w, evs, trips, COUNTY, SLA))


def test_property_a_whole_day_shuffled_and_duplicated_counts_the_same() -> None:
    from tests.fixtures.sla import day as script

    regs, scans = script.day()
    envs = _envelopes_of([e for evs in regs.values() for e in evs] + scans)
    expected = _day_counts(envs)
    assert expected[(SCRIPT_DAY.date(), "county_to_township", "ZTO", "late", "missed_run")] == 15
    rnd = random.Random(20260915)
    for _ in range(3):
        redelivered = envs + rnd.sample(envs, 400)  # the same events again, same event_ids
        rnd.shuffle(redelivered)
        assert _day_counts(redelivered) == expected
