"""The fault harness's oracle and plan (loadtest/faults): pure, no platform. The oracle must see
each way an acknowledged event can be lost or doubled, and a seed must replay the same run."""

from __future__ import annotations

from collections import Counter

from infra.settings import DEMO_COUNTY
from loadtest.faults.harness import TIERS, fault_schedule, plan_traffic
from loadtest.faults.oracle import Observed, Record, SentParcel, compare, expect, tariff_of

TARIFF = tariff_of(DEMO_COUNTY)
CHAIN = ("received", "sorted", "loaded", "arrived", "out_for_delivery", "stored", "delivered")


def _record() -> Record:
    """Three parcels: delivered (heavy), left stored at its point, and only registered."""
    record = Record()
    for n, (weight, last) in enumerate(((5000, 6), (1200, 5), (800, -1))):
        p = SentParcel(f"JT{n:013d}", "JT", f"1380000000{n}", weight, f"reg-{n}")
        p.scans = [(f"scan-{n}-{i}", action) for i, action in enumerate(CHAIN[:last + 1])]
        record.parcels[p.waybill] = p
        record.acked |= {p.registration, *(e for e, _ in p.scans)}
    return record


def _observed(record: Record) -> Observed:
    """What a platform that got everything right would hold."""
    exp = expect(record, TARIFF)
    parcels = {w: (exp.status[w], sorted(ids)) for w, ids in exp.timeline.items()}
    lines = [(f"parcel:{w}", kind, "brand:JT", fen) for (w, kind), fen in exp.ledger.items()]
    return Observed(journal=Counter(record.acked), parcels=parcels,
                    tracking_inbox=Counter(record.acked), ledger_lines=lines,
                    sms_phones=Counter(["13800000001"]), set_aside=[])


def test_tariff_is_read_from_the_county_file() -> None:
    assert (TARIFF.delivery_fee("JT", "village"), TARIFF.surcharge(3000), TARIFF.surcharge(3001),
            TARIFF.stored_fen, TARIFF.picked_up_fen) == (100, 0, 50, 40, 10)


def test_expected_answers_follow_what_was_acknowledged() -> None:
    exp = expect(_record(), TARIFF)
    assert exp.status == {"JT0000000000000": "delivered", "JT0000000000001": "stored_at_point",
                          "JT0000000000002": "info_received"}
    assert [len(exp.timeline[w]) for w in sorted(exp.timeline)] == [8, 7, 1]
    assert exp.brand_totals == {"JT": (100 + 50 + 40 + 10) + (100 + 40)}
    assert exp.sms_exactly_one == {"13800000001"} and exp.sms_at_most_one == {"13800000000"}


def test_a_platform_that_got_everything_right_is_clean() -> None:
    record = _record()
    assert compare(record, expect(record, TARIFF), _observed(record)).clean


def test_each_kind_of_loss_and_double_is_seen() -> None:
    record = _record()
    exp = expect(record, TARIFF)
    right = _observed(record)

    def verdict(**changes: object):  # type: ignore[no-untyped-def]
        return compare(record, exp, Observed(**{**right.__dict__, **changes}))

    journal = Counter(right.journal)
    del journal["scan-0-3"]
    assert verdict(journal=journal).lost == {"journal": 1}
    assert verdict(journal=right.journal + Counter(["reg-1"])).doubled == {"journal": 1}
    parcels = dict(right.parcels)
    parcels["JT0000000000000"] = ("delivered", [*parcels["JT0000000000000"][1], "scan-0-2"])
    assert verdict(parcels=parcels).doubled == {"tracking": 1}
    parcels["JT0000000000001"] = ("in_transit", parcels["JT0000000000001"][1][:-1])
    v = verdict(parcels=parcels)
    assert v.lost == {"tracking": 1} and v.wrong == {"tracking status": 1}
    assert verdict(ledger_lines=right.ledger_lines + right.ledger_lines[:1]).doubled == {
        "ledger": 2}  # the line twice, and its parcel's fee at twice the tariff
    v = verdict(ledger_lines=right.ledger_lines[1:])
    assert v.lost == {"ledger": 1} and v.wrong == {"ledger brand total": 1}
    assert verdict(sms_phones=Counter()).lost == {"sms": 1}
    assert verdict(sms_phones=Counter(["13800000001"] * 2)).doubled == {"sms": 1}
    assert verdict(sms_phones=Counter(["13800000002"])).wrong == {"sms": 1}
    assert verdict(set_aside=[("ledger", "ValueError: x")]).wrong == {"set aside by ledger": 1}


def test_an_unacknowledged_event_is_not_expected() -> None:
    record = _record()
    record.acked.discard("scan-0-6")  # the delivery never got a 2xx
    exp = expect(record, TARIFF)
    assert exp.status["JT0000000000000"] == "stored_at_point"
    assert ("JT0000000000000", "commission_picked_up") not in exp.ledger
    assert "13800000000" in exp.sms_exactly_one


def test_a_seed_replays_the_same_traffic_and_faults() -> None:
    a, plans_a = plan_traffic(DEMO_COUNTY, 77, 600, 3)
    b, plans_b = plan_traffic(DEMO_COUNTY, 77, 600, 3)
    ids = [[e["event_id"] for batch in plan for e in batch.events] for plan in plans_a]
    assert ids == [[e["event_id"] for batch in plan for e in batch.events] for plan in plans_b]
    assert sorted(a.parcels) == sorted(b.parcels)
    assert len({e for plan in ids for e in plan}) == sum(map(len, ids)) > 500
    assert plan_traffic(DEMO_COUNTY, 78, 600, 3)[0].parcels.keys() != a.parcels.keys()
    faults = TIERS["full"].faults
    schedule = fault_schedule(5, faults, 100_000)
    assert schedule == fault_schedule(5, faults, 100_000)
    assert Counter(kind for _, kind in schedule) == faults
    points = [p for p, _ in schedule]
    assert points == sorted(points) and 5_000 <= points[0] and points[-1] <= 90_000
