"""The upward clocks of a hand-in (docs/sla.md, "Upward produce"): the 14:00 leg, the cold store,
the time outside the cold chain and the air cut-off, each with its cause."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from domain.envelope import Envelope
from domain.events import PAYLOADS
from domain.sla import CAUSE_LABELS, LegOutcome, evaluate_parcel, live_status
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY

COUNTY = load_county(DEMO_COUNTY)
SLA = COUNTY.sla
CST = timezone(timedelta(hours=8))
DAY = datetime(2026, 7, 15, tzinfo=CST)
W = "431234567890123"
CENTRE, VILLAGE = "CTY-HAICHENG", "VIL-XILIU-01"
_n = iter(range(10**6))


def at(hours: float) -> datetime:
    return DAY + timedelta(hours=hours)


def ev(event_type: str, hours: float, **payload: Any) -> Envelope:
    return Envelope(event_id=f"00000000-0000-7000-8000-{next(_n):012d}", type=event_type,
                    schema_version=1, occurred_at=at(hours), recorded_at=at(hours),
                    device_id="d", brand="YUNDA", operator_id="op",
                    payload=PAYLOADS[(event_type, 1)].model_validate(payload))


def hand_in(hours: float, perishable: str | None = "plum") -> Envelope:
    return ev("parcel.handed_in", hours, waybill=W, shipper_id="COOP-WUSHAN-017",
              origin_village=VILLAGE, weight_g=5200, perishable=perishable)


def scan(hours: float, action: str, node: str = CENTRE) -> Envelope:
    return ev("parcel.scanned", hours, waybill=W, action=action, node_id=node)


def legs(*events: Envelope) -> dict[str, LegOutcome]:
    out = evaluate_parcel(W, list(events), {}, COUNTY, SLA)
    assert len(out) == len({o.leg for o in out})
    return {o.leg: o for o in out}


def test_given_plums_kept_cold_and_flown_in_time_then_every_clock_is_on_time() -> None:
    got = legs(hand_in(10), scan(13, "received"), scan(13 + 1 / 6, "cold_in"),
               scan(15, "cold_out"), scan(15.5, "cold_in"), scan(16.5, "cold_out"),
               scan(17, "air_loaded"))
    assert {k: o.outcome for k, o in got.items()} == {
        "village_to_county": "on_time", "up_cold_store": "on_time", "cold_chain": "on_time",
        "air_cutoff": "on_time"}
    assert all(o.cause is None and o.village == VILLAGE and o.township == "TWN-XILIU"
               and o.brand == "YUNDA" for o in got.values())
    assert got["village_to_county"].start_at == at(10) and got["village_to_county"].end_at == at(13)
    assert got["up_cold_store"].due_at == at(16) and got["up_cold_store"].end_at == at(13 + 1 / 6)
    assert got["air_cutoff"].due_at == at(18) and got["air_cutoff"].end_at == at(17)
    # 30 + 30 minutes out of 120: the chain ended at the airline with an hour to spare.
    chain = got["cold_chain"]
    assert chain.start_at == at(13 + 1 / 6) and chain.end_at == at(17)
    assert chain.due_at == at(18) and chain.day == DAY.date()


def test_given_plums_late_to_the_cold_out_too_long_and_missing_the_flight_then_three_causes(
        ) -> None:
    got = legs(hand_in(10), scan(16 + 50 / 60, "received"), scan(17, "cold_in"),
               scan(17.5, "cold_out"), scan(20, "cold_in"), scan(24 + 9, "air_loaded"))
    store, chain, air = got["up_cold_store"], got["cold_chain"], got["air_cutoff"]
    assert (store.outcome, store.cause, store.minutes_over) == ("late", "late_to_cold_store", 60)
    # 150 minutes out against 120: the budget ran out at 19:30, the spell closed at 20:00.
    assert (chain.outcome, chain.cause, chain.minutes_over) == ("late", "cold_chain_broken", 30)
    assert chain.due_at == at(19.5) and chain.end_at == at(20)
    assert (air.outcome, air.cause) == ("late", "missed_air_cutoff")
    assert air.due_at == at(18) and air.minutes_over == 15 * 60 and air.day == at(33).date()
    assert got["village_to_county"].outcome == "on_time"


def test_given_a_cold_in_after_the_cut_off_then_the_flight_is_the_next_days() -> None:
    got = legs(hand_in(13), scan(18 + 1 / 60, "cold_in"), scan(24 + 17, "air_loaded"))
    assert got["air_cutoff"].due_at == at(24 + 18) and got["air_cutoff"].outcome == "on_time"
    at_cutoff = legs(hand_in(13), scan(18, "cold_in"))["air_cutoff"]
    assert at_cutoff.due_at == at(18) and at_cutoff.outcome == "open"
    assert at_cutoff.cause == "missed_air_cutoff"


def test_given_produce_out_of_the_cold_now_then_its_chain_is_open_until_the_budget_runs_out(
        ) -> None:
    got = legs(hand_in(15, "produce"), scan(20, "cold_in"), scan(21, "cold_out"))
    assert set(got) == {"village_to_county", "up_cold_store", "cold_chain"}  # no air for produce
    up = got["village_to_county"]
    assert up.outcome == "open" and up.due_at == at(48)   # handed in after 14:00: next midnight
    assert got["up_cold_store"].outcome == "on_time"
    chain = got["cold_chain"]
    assert (chain.outcome, chain.cause, chain.due_at) == ("open", "cold_chain_broken", at(25))
    assert live_status(chain, at(24.9)) == "at_risk" and live_status(chain, at(25.1)) == "late"


def test_given_a_hand_in_the_14_00_leg_ends_only_at_received_at_the_centre() -> None:
    got = legs(hand_in(13 + 59 / 60, None), scan(20, "arrived"), scan(23.5, "received"))
    assert set(got) == {"village_to_county"}  # not perishable: no cold clocks
    assert got["village_to_county"].outcome == "on_time"
    assert got["village_to_county"].end_at == at(23.5)
    late = legs(hand_in(13 + 59 / 60, None), scan(24.5, "received"))["village_to_county"]
    assert (late.outcome, late.cause) == ("late", "unknown")


def test_given_no_cold_in_yet_then_only_the_cold_store_clock_runs() -> None:
    got = legs(hand_in(10), scan(12, "received"))
    assert set(got) == {"village_to_county", "up_cold_store"}
    store = got["up_cold_store"]
    assert (store.outcome, store.cause, store.due_at) == ("open", "late_to_cold_store", at(16))
    # A cold_in at a township (a reefer) does not end the leg to the county's cold store.
    assert legs(hand_in(10), scan(11, "cold_in", "TWN-XILIU"))["up_cold_store"].outcome == "open"


def test_a_cold_out_before_the_first_cold_in_and_a_second_cold_out_count_nothing() -> None:
    got = legs(hand_in(10), scan(11, "cold_out"), scan(12, "cold_in"), scan(13, "cold_out"),
               scan(13.5, "cold_out"), scan(14, "cold_in"))
    chain = got["cold_chain"]
    assert chain.outcome == "on_time" and chain.end_at == at(14)
    assert chain.due_at == at(14) + timedelta(minutes=60)  # 60 of 120 minutes used


def test_the_order_and_duplicates_of_events_change_nothing() -> None:
    events = [hand_in(10), scan(13, "received"), scan(13.5, "cold_in"), scan(15, "cold_out"),
              scan(18, "cold_in"), scan(19, "air_loaded")]
    once = legs(*events)
    assert legs(*reversed(events), *events[:3]) == once
    assert once["cold_chain"].outcome == "late" and once["air_cutoff"].outcome == "late"


def test_the_new_causes_are_labelled() -> None:
    for cause in ("late_to_cold_store", "cold_chain_broken", "missed_air_cutoff"):
        assert CAUSE_LABELS[cause]


def test_the_panel_days_add_hand_ins_and_the_perishable_legs_per_day() -> None:
    from datetime import date

    from projections.sla_queries import upward_days

    volumes = [{"day": "2026-07-15", "parcels": 3, "weight_g": 7000, "perishable": 2}]
    trend = [{"day": "2026-07-15", "leg": "cold_chain", "on_time": 3, "late": 1},
             {"day": "2026-07-15", "leg": "air_cutoff", "on_time": 2, "late": 1},
             {"day": "2026-07-14", "leg": "up_cold_store", "on_time": 0, "late": 2},
             {"day": "2026-07-15", "leg": "village_to_county", "on_time": 9, "late": 9}]
    days = upward_days(date(2026, 7, 14), date(2026, 7, 15), volumes, trend)
    assert [d["day"] for d in days] == ["2026-07-14", "2026-07-15"]
    first, second = days
    assert (first["parcels"], first["weight_g"]) == (0, 0)
    assert first["cold_store"] == {"on_time": 0, "late": 2, "rate_permille": 0}
    assert first["cold_chain"] == {"on_time": 0, "late": 0, "rate_permille": None}
    assert (second["parcels"], second["weight_g"], second["perishable"]) == (3, 7000, 2)
    assert second["cold_chain"] == {"on_time": 3, "late": 1, "rate_permille": 750}
    assert second["air_cutoff"] == {"made": 2, "missed": 1, "rate_permille": 666}


def test_the_xlsx_has_an_upward_sheet_only_in_a_month_with_upward_produce() -> None:
    from api.report_xlsx import has_upward_produce

    none = {"on_time": 0, "late": 0}
    quiet = {"upward": {"parcels": 0, "cold_store": none, "cold_chain": none,
                        "air_cutoff": {"made": 0, "missed": 0}}}
    assert not has_upward_produce(quiet)
    late_flight = {"upward": {**quiet["upward"], "air_cutoff": {"made": 0, "missed": 1}}}
    assert has_upward_produce(late_flight)
    assert has_upward_produce({"upward": {**quiet["upward"], "parcels": 1}})
