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


def hand_in(n: int, at: str, perishable: str | None, weight_g: int = 2500,
            brand: str = "ZTO") -> oracle.Fact:
    return fact(n, "parcel.handed_in", at, {"waybill": "70000000000001", "shipper_id": "COOP-A-001",
                                            "origin_village": "VIL-XILIU-01", "weight_g": weight_g,
                                            "perishable": perishable}, brand)


def test_given_a_plum_hand_in_then_its_four_clocks_read_as_the_upward_contract_says() -> None:
    hand = hand_in(0, "2026-07-20T07:00:00+08:00", "plum")
    scans = [scan(1, "2026-07-20T07:02:00+08:00", "received", "VIL-XILIU-01"),
             scan(2, "2026-07-20T09:30:00+08:00", "loaded", "VIL-XILIU-01", trip_id="T-1"),
             scan(3, "2026-07-20T12:00:00+08:00", "received", "CTY-HAICHENG", trip_id="T-1"),
             scan(4, "2026-07-20T13:30:00+08:00", "cold_in", "CTY-HAICHENG"),    # 6 h 30: late
             scan(5, "2026-07-20T14:00:00+08:00", "cold_out", "CTY-HAICHENG"),
             scan(6, "2026-07-20T15:00:00+08:00", "cold_in", "CTY-HAICHENG"),    # 60 min out
             scan(7, "2026-07-20T17:30:00+08:00", "cold_out", "CTY-HAICHENG"),
             scan(8, "2026-07-20T18:10:00+08:00", "air_loaded", "CTY-HAICHENG")]  # 40 more: 100
    legs = {leg: (day, outcome, cause) for day, leg, outcome, cause
            in oracle.sla_legs(CF, scans, [], {}, NOW, [hand])}
    assert legs == {"village_to_county": ("2026-07-20", "on_time", None),
                    "up_cold_store": ("2026-07-20", "late", "late_to_cold_store"),
                    "cold_chain": ("2026-07-20", "on_time", None),
                    "air_cutoff": ("2026-07-20", "late", "missed_air_cutoff")}


def test_given_too_long_out_of_the_cold_then_late_on_the_day_the_spell_closed() -> None:
    hand = hand_in(0, "2026-07-20T07:00:00+08:00", "produce")
    scans = [scan(1, "2026-07-20T10:00:00+08:00", "cold_in", "CTY-HAICHENG"),
             scan(2, "2026-07-20T21:00:00+08:00", "cold_out", "CTY-HAICHENG"),
             scan(3, "2026-07-21T01:30:00+08:00", "cold_in", "CTY-HAICHENG")]   # 270 > 240 min
    legs = {leg: (day, outcome, cause) for day, leg, outcome, cause
            in oracle.sla_legs(CF, scans, [], {}, NOW, [hand])}
    assert legs["cold_chain"] == ("2026-07-21", "late", "cold_chain_broken")
    assert legs["up_cold_store"] == ("2026-07-20", "on_time", None)
    assert "air_cutoff" not in legs   # produce does not fly
    # Still out at `now`, past the budget: late on the day it ran out.
    out = oracle.sla_legs(CF, scans[:2], [], {}, datetime.fromisoformat("2026-07-21T03:00:00+08:00"),
                          [hand])
    assert ("2026-07-21", "cold_chain", "late", "cold_chain_broken") in out


def test_given_hand_ins_and_a_bus_run_then_the_tariff_and_the_line_cost_are_owed() -> None:
    plum = hand_in(0, "2026-07-20T07:00:00+08:00", "plum", weight_g=2001)
    loaded = scan(1, "2026-07-20T08:40:00+08:00", "loaded", "VIL-XILIU-01",
                  trip_id="BUS-XILIU-20260720-0730")
    other = fact(2, "parcel.scanned", "2026-07-20T08:41:00+08:00",
                 {"waybill": "70000000000002", "action": "loaded", "node_id": "VIL-XILIU-01",
                  "trip_id": "BUS-XILIU-20260720-0730"}, brand="EMS")
    departed = fact(3, "vehicle.departed", "2026-07-20T07:31:00+08:00",
                    {"trip_id": "BUS-XILIU-20260720-0730", "route_id": "BUS-XILIU",
                     "run_id": "BUS-XILIU-0730", "node_id": "CTY-HAICHENG",
                     "scheduled_at": "2026-07-20T07:30:00+08:00"})
    owed = oracle.settlement(CF, {"70000000000001": ([loaded], []), "70000000000002": ([other], [])},
                             {"BUS-XILIU-20260720-0730": [departed]},
                             {"70000000000001": [plum, hand_in(9, "2026-07-21T07:00:00+08:00", None)]})
    # 30 handling + 20 x 3 started kg + 50 cold chain, once; the bus's 1500 fen halved.
    assert owed == {("2026-07", "ZTO"): 30 + 60 + 50 + 750, ("2026-07", "EMS"): 750}
