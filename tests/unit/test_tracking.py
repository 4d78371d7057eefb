"""The tracking reducer: status derived from event time, misrouting, problems; order-independent."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.envelope import Envelope
from domain.events import PAYLOADS
from domain.tracking import Status, project_parcel, view_to_dict
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from tests.fixtures.phones import sealed

COUNTY = load_county(DEMO_COUNTY)
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 11, 11, 6, 0, tzinfo=CST)
WAYBILL = "ZT7300012345678"


def event(n: int, event_type: str, at: datetime, **payload: Any) -> Envelope:
    version = 2 if event_type == "parcel.registered" else 1
    return Envelope(
        event_id=f"00000000-0000-7000-8000-{n:012d}", type=event_type, schema_version=version,
        occurred_at=at, recorded_at=at + timedelta(hours=3), device_id="pda-1", brand="ZTO",
        operator_id="op-1",
        payload=PAYLOADS[(event_type, version)].model_validate({"waybill": WAYBILL, **payload}))


def registered(n: int = 0, village: str = "VIL-XILIU-01") -> Envelope:
    return event(n, "parcel.registered", T0 - timedelta(hours=12), recipient_phone=sealed("13812345678"),
                 destination_village=village, weight_g=900)


def scan(n: int, hours: float, action: str, node: str, **extra: Any) -> Envelope:
    return event(n, "parcel.scanned", T0 + timedelta(hours=hours), action=action, node_id=node, **extra)


LIFECYCLE = [
    registered(0),
    scan(1, 0, "received", "CTY-HAICHENG"),
    event(2, "parcel.sorted", T0 + timedelta(hours=0.5), node_id="CTY-HAICHENG", chute="C-17"),
    scan(3, 1, "loaded", "CTY-HAICHENG", trip_id="T-1"),
    scan(4, 3, "arrived", "TWN-XILIU", trip_id="T-1"),
    scan(5, 4, "out_for_delivery", "TWN-XILIU"),
    scan(6, 6, "stored", "VIL-XILIU-01", pickup_code="10-2-7507"),
    scan(7, 30, "delivered", "VIL-XILIU-01"),
]


def test_the_lifecycle_of_a_village_parcel_told_scan_by_scan() -> None:
    # Given a ZTO parcel registered for 王家村 in 西柳镇
    view = project_parcel(LIFECYCLE[:1], COUNTY)
    assert view.status == Status.info_received and view.public_code == 101
    # When it is received and sorted at the county centre, it has been picked up and is in transit
    assert project_parcel(LIFECYCLE[:2], COUNTY).status == Status.picked_up
    assert project_parcel(LIFECYCLE[:3], COUNTY).status == Status.in_transit
    # When it reaches the township and goes out to the village, it is out for delivery
    assert project_parcel(LIFECYCLE[:6], COUNTY).status == Status.out_for_delivery
    # When the village point stores it, the villager can collect it with the pickup code
    stored = project_parcel(LIFECYCLE[:7], COUNTY)
    assert (stored.status, stored.public_code, stored.pickup_code) == (
        Status.stored_at_point, 501, "10-2-7507")
    assert stored.current_node == "VIL-XILIU-01"
    # Then, signed for, it is delivered, and its timeline reads in event time
    done = project_parcel(LIFECYCLE, COUNTY)
    assert (done.status, done.public_code, done.public_label) == (Status.delivered, 3, "签收")
    assert [t.action for t in done.timeline] == [None, "received", "sorted", "loaded", "arrived",
                                                 "out_for_delivery", "stored", "delivered"]
    assert not done.misrouted


def test_given_a_scan_off_the_planned_chain_then_the_parcel_is_misrouted() -> None:
    view = project_parcel([registered(), scan(1, 0, "received", "CTY-HAICHENG"),
                           scan(2, 3, "arrived", "TWN-TENGAO")], COUNTY)
    assert view.misrouted and view.misrouted_nodes == ("TWN-TENGAO",)


def test_given_scans_before_the_manifest_arrives_then_misrouting_is_decided_once_it_does() -> None:
    scans = [scan(1, 0, "received", "CTY-HAICHENG"), scan(2, 3, "arrived", "TWN-TENGAO")]
    assert not project_parcel(scans, COUNTY).misrouted
    assert project_parcel(scans + [registered()], COUNTY).misrouted


def test_given_a_problem_then_tracking_continues_and_a_later_scan_clears_it() -> None:
    problem = scan(8, 5, "problem", "TWN-XILIU", problem_reason="address_unknown")
    view = project_parcel(LIFECYCLE[:6] + [problem], COUNTY)
    assert (view.status, view.problem_reason, view.public_code) == (Status.problem, "address_unknown", 2)
    later = project_parcel(LIFECYCLE[:7] + [problem], COUNTY)
    assert later.status == Status.stored_at_point and later.problem_reason is None


def test_given_a_late_upload_then_status_follows_event_time_not_arrival() -> None:
    # The stored scan arrives after the delivery scan (the village handheld was offline all day).
    view = project_parcel(LIFECYCLE[:6] + [LIFECYCLE[7], LIFECYCLE[6]], COUNTY)
    assert view.status == Status.delivered


def test_the_read_model_never_holds_the_phone() -> None:
    assert "13812345678" not in str(view_to_dict(project_parcel(LIFECYCLE, COUNTY)))


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.lists(st.integers(0, len(LIFECYCLE) - 1), max_size=10),
       st.integers(1, len(LIFECYCLE)))
def test_property_shuffled_and_duplicated_history_projects_the_same(
        rnd: random.Random, dup_idx: list[int], prefix: int) -> None:
    events = LIFECYCLE[:prefix] + [LIFECYCLE[i] for i in dup_idx if i < prefix]
    shuffled = events[:]
    rnd.shuffle(shuffled)
    assert project_parcel(shuffled, COUNTY) == project_parcel(LIFECYCLE[:prefix], COUNTY)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.sampled_from(["received", "arrived", "sorted", "loaded", "unloaded", "stored",
                                 "out_for_delivery", "delivered", "returned"]), min_size=1,
                max_size=8),
       st.lists(st.integers(0, 3), min_size=8, max_size=8), st.randoms(use_true_random=False))
def test_property_any_scans_with_tied_times_project_order_independently(
        actions: list[str], hours: list[int], rnd: random.Random) -> None:
    nodes = {"stored": "VIL-XILIU-01", "delivered": "VIL-XILIU-01"}
    events = [registered()] + [
        scan(i + 1, hours[i], a, nodes.get(a, "TWN-XILIU"),
             **({"pickup_code": "1-1-1"} if a == "stored" else {}))
        for i, a in enumerate(actions)]
    shuffled = events + events[: rnd.randrange(len(events))]
    rnd.shuffle(shuffled)
    assert view_to_dict(project_parcel(shuffled, COUNTY)) == view_to_dict(project_parcel(events, COUNTY))


@settings(max_examples=200, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, len(LIFECYCLE)))
def test_property_folding_new_events_into_a_stored_view_equals_projecting_all(
        rnd: random.Random, cut: int) -> None:
    from domain.tracking import entries_from_view, entry_for, project_entries

    events = LIFECYCLE + [scan(9, 5, "problem", "TWN-TENGAO", problem_reason="damaged")]
    rnd.shuffle(events)
    seen, new = events[:cut], events[cut:] + events[: cut // 2]  # redeliveries included
    whole = view_to_dict(project_parcel(events, COUNTY))
    if not seen:
        return
    stored = view_to_dict(project_parcel(seen, COUNTY))
    folded = project_entries(entries_from_view(stored) + [entry_for(e, COUNTY) for e in new],
                             COUNTY, WAYBILL)
    assert view_to_dict(folded) == whole


def test_every_status_has_a_public_code_a_chinese_label_and_an_aftership_tag() -> None:
    from domain.tracking import AFTERSHIP_TAGS, PUBLIC_CODES, STATUS_LABELS

    assert set(PUBLIC_CODES) == set(STATUS_LABELS) == set(AFTERSHIP_TAGS) == set(Status)
    assert PUBLIC_CODES[Status.in_transit] == (0, "在途")
    assert PUBLIC_CODES[Status.returned] == (6, "退回")
    # Sub-statuses sit under a main 快递100 code: 101 under 1 揽收, 501 under 5 派件.
    assert PUBLIC_CODES[Status.info_received][0] // 100 == 1
    assert PUBLIC_CODES[Status.stored_at_point][0] // 100 == 5


def test_given_a_combined_arrive_and_dispatch_scan_then_dispatch_wins_the_tie() -> None:
    # 到派合一: both scans carry the same second; the chain's order decides, not the upload order.
    both = [scan(11, 3, "out_for_delivery", "TWN-XILIU"), scan(12, 3, "arrived", "TWN-XILIU")]
    for events in (both, both[::-1]):
        view = project_parcel([registered(), *events], COUNTY)
        assert view.status == Status.out_for_delivery and not view.misrouted


def test_given_a_problem_when_the_parcel_is_returned_then_the_reason_is_cleared() -> None:
    problem = scan(8, 5, "problem", "VIL-XILIU-01", problem_reason="refused")
    returned = scan(9, 7, "returned", "TWN-XILIU")
    view = project_parcel(LIFECYCLE[:6] + [problem, returned], COUNTY)
    assert (view.status, view.public_code, view.problem_reason) == (Status.returned, 6, None)
    assert [t.action for t in view.timeline][-2:] == ["problem", "returned"]


def test_the_serialised_view_is_json_with_iso_offsets() -> None:
    import orjson

    d = view_to_dict(project_parcel(LIFECYCLE, COUNTY))
    assert orjson.loads(orjson.dumps(d)) == d
    assert d["status_label"] == "已签收"
    assert d["last_event_at"] == "2026-11-12T12:00:00+08:00"
