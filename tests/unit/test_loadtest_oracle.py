"""The load harness's oracle and traffic model, on hand-made events: pure, no platform."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from infra.settings import DEMO_COUNTY
from loadtest import countyfile, oracle
from loadtest.model import Generator, batches
from loadtest.scenarios import SCENARIOS

CF = countyfile.read(DEMO_COUNTY)
NOW = datetime.fromisoformat("2026-11-20T12:00:00+08:00")


def fact(n: int, etype: str, at: str, payload: dict[str, Any], brand: str = "ZTO") -> oracle.Fact:
    return oracle.Fact(f"e{n:04d}", etype, datetime.fromisoformat(at), brand, payload, float(n))


def scan(n: int, at: str, action: str, node: str, **extra: Any) -> oracle.Fact:
    return fact(n, "parcel.scanned", at, {"waybill": "70000000000001", "action": action,
                                          "node_id": node, **extra})


REG = fact(0, "parcel.registered", "2026-11-02T20:00:00+08:00",
           {"waybill": "70000000000001", "recipient_phone": "13800000001",
            "destination_village": "VIL-XILIU-01", "weight_g": 3500})


def test_given_largest_remainders_when_allocating_then_shares_sum_and_ties_go_by_brand_code() -> None:
    assert oracle.allocate(100, {"ZTO": 1, "EMS": 1, "YTO": 1}) == {"EMS": 34, "YTO": 33, "ZTO": 33}
    assert sum(oracle.allocate(7501, {"ZTO": 3, "SF": 5, "JD": 1}).values()) == 7501


def test_given_a_parcel_held_a_day_at_the_centre_then_its_county_leg_is_late_for_a_problem() -> None:
    scans = [scan(1, "2026-11-03T04:10:00+08:00", "received", "CTY-HAICHENG"),
             scan(2, "2026-11-03T04:30:00+08:00", "problem", "CTY-HAICHENG", problem_reason="damaged"),
             scan(3, "2026-11-04T07:40:00+08:00", "loaded", "CTY-HAICHENG", trip_id="T-1"),
             scan(4, "2026-11-04T08:50:00+08:00", "arrived", "TWN-XILIU"),
             scan(5, "2026-11-04T10:00:00+08:00", "stored", "VIL-XILIU-01")]
    legs = {leg: (day, outcome, cause) for day, leg, outcome, cause
            in oracle.sla_legs(CF, scans, [REG], {}, NOW)}
    assert legs["county_to_township"] == ("2026-11-04", "late", "problem")
    assert legs["township_to_village"] == ("2026-11-04", "on_time", None)
    assert legs["centre_to_village"] == ("2026-11-04", "on_time", None)


def test_given_a_hand_in_before_14_when_it_reaches_the_centre_after_midnight_then_late() -> None:
    scans = [scan(1, "2026-11-03T13:50:00+08:00", "received", "VIL-XILIU-01"),
             scan(2, "2026-11-04T00:10:00+08:00", "arrived", "CTY-HAICHENG")]
    assert oracle.sla_legs(CF, scans, [], {}, NOW) == [
        ("2026-11-04", "village_to_county", "late", "unknown")]
    after = [scan(1, "2026-11-03T14:00:00+08:00", "received", "VIL-XILIU-01"), scans[1]]
    assert oracle.sla_legs(CF, after, [], {}, NOW) == [
        ("2026-11-04", "village_to_county", "on_time", None)]


def test_given_a_stored_and_collected_parcel_then_fees_commissions_and_surcharge_are_owed() -> None:
    scans = [scan(1, "2026-11-03T10:00:00+08:00", "stored", "VIL-XILIU-01", pickup_code="1-1-1001"),
             scan(2, "2026-11-03T18:00:00+08:00", "delivered", "VIL-XILIU-01")]
    owed = oracle.settlement(CF, {"70000000000001": (scans, [REG])}, {})
    assert owed == {("2026-11", "ZTO"): 100 + 50 + 40 + 10}


def test_given_a_seed_then_the_traffic_is_the_same_every_time() -> None:
    sc = SCENARIOS["smoke"]

    def make() -> list[tuple[str, list[str]]]:
        traffic = Generator(CF, sc.profile, 5, sc.scale).build()
        import random
        return [(u.device, [e["event_id"] for e in u.events])
                for u in batches(traffic, 2.0, random.Random(1))]

    assert make() == make()


def test_given_the_chaos_knobs_then_batches_come_twice_and_late() -> None:
    import random
    sc = SCENARIOS["chaos"]
    traffic = Generator(CF, sc.profile, 5, 0.002).build()
    ups = batches(traffic, 2.0, random.Random(1))
    ids = [e["event_id"] for u in ups for e in u.events]
    assert len(ids) > len(set(ids)) * 1.1  # a good share uploaded twice
    assert max(u.at for u in ups) <= (traffic.end or NOW) + timedelta(0)


def test_given_the_kafka_driver_then_its_bodies_read_back_as_the_journal_would_publish_them() -> None:
    import orjson

    from domain.envelope import Envelope
    from loadtest.kafka_driver import wire

    sc = SCENARIOS["smoke"]
    traffic = Generator(CF, sc.profile, 5, sc.scale).build()
    seen = set()
    for s in traffic.sent:
        if s.event["type"] in seen:
            continue
        seen.add(s.event["type"])
        topic, key, value = wire(s.event, s.device, NOW)
        envelope = Envelope.from_wire(orjson.loads(value))
        assert envelope.event_id == s.event["event_id"]
        assert key.decode() in (s.event["payload"].get("waybill"), s.event["payload"].get("trip_id"))
        assert topic in ("parcel-events", "vehicle-events")
    assert {"parcel.registered", "parcel.scanned", "vehicle.departed"} <= seen
