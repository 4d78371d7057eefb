"""The money of the upward flow: the upward tariff per handed-in parcel (fee arithmetic, once per
waybill, its own fee kinds), a bus line's run shared like a trip, and how a bus run is judged."""

from __future__ import annotations

import random
from dataclasses import replace
from datetime import date, datetime, timedelta, timezone
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from domain.county import UpwardTariff
from domain.envelope import Envelope
from domain.settlement.rules import TripManifest, parcel_lines, trip_lines
from domain.settlement.state import ParcelState, fact_from_envelope, fold_parcel
from domain.settlement.statement import KIND_LABELS, build_statement
from domain.settlement.upward import UPWARD_KINDS, started_kg, upward_charges
from domain.sla import MoveFact, RegistrationFact, ScanFact, evaluate_facts
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from tests.fixtures.envelopes import events_from
from tests.fixtures.phones import sealed

COUNTY = load_county(DEMO_COUNTY)
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 7, 15, 6, 0, tzinfo=CST)
TARIFF = UpwardTariff(handling_fen=30, per_kg_fen=20, cold_chain_fen=50)
ev = events_from(T0)


def hand_in(w: str, grams: int, perishable: str | None = "plum", hours: float = 0,
            brand: str = "ZTO", village: str = "VIL-XILIU-01") -> Envelope:
    return ev("parcel.handed_in", hours, brand, waybill=w, shipper_id="COOP-WUSHAN-017",
              origin_village=village, weight_g=grams, perishable=perishable)


def owed(lines: Any, brand: str = "ZTO") -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        if line.account == f"brand:{brand}":
            out[line.kind] = out.get(line.kind, 0) + line.amount.value
    return out


def balanced(lines: Any) -> bool:
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.entry_id] = totals.get(line.entry_id, 0) + line.amount.value
    return all(v == 0 for v in totals.values())


# ------------------------------------------------------------------------ the fee arithmetic

def test_started_kilograms_count_every_begun_kilogram() -> None:
    assert [started_kg(g) for g in (1, 999, 1000, 1001, 1999, 2000, 2001, 70000)] == [
        1, 1, 1, 2, 2, 2, 3, 70]


def test_the_demo_county_charges_the_contracts_tariff() -> None:
    assert COUNTY.upward_tariff == TARIFF


@given(st.integers(1, 70_000), st.sampled_from([None, "plum", "produce"]),
       st.integers(0, 500), st.integers(0, 500), st.integers(0, 500))
def test_the_charges_by_kind_sum_to_the_tariffs_whole_charge(
        grams: int, perishable: str | None, handling: int, per_kg: int, cold: int) -> None:
    tariff = UpwardTariff(handling, per_kg, cold)
    charges = upward_charges(tariff, grams, perishable, "VIL-XILIU-01")
    assert sum(fen.value for _, _, fen in charges) == tariff.charge_fen(grams, perishable is not None)
    assert all(type(fen.value) is int and fen.value > 0 for _, _, fen in charges)
    assert [k for k, _, _ in charges] == [k for k in UPWARD_KINDS if k in {k for k, _, _ in charges}]


def test_a_hand_in_of_plums_owes_handling_per_started_kg_and_cold_chain() -> None:
    lines = parcel_lines("ZT7100000001", [hand_in("ZT7100000001", 1200)], COUNTY)
    # 30 handling + 20 × ⌈1.2⌉ = 40 per kg + 50 cold chain
    assert owed(lines) == {"upward_handling": 30, "upward_weight": 40, "upward_cold_chain": 50}
    assert balanced(lines)
    by_kind = {line.kind: line for line in lines if line.account == "brand:ZTO"}
    assert by_kind["upward_handling"].ref == "VIL-XILIU-01"
    assert by_kind["upward_weight"].ref == "2" and by_kind["upward_cold_chain"].ref == "plum"
    assert {line.account for line in lines if not line.account.startswith("brand:")} == {
        "revenue:upward_handling", "revenue:upward_weight", "revenue:upward_cold_chain"}
    assert {(line.period, line.posting_date) for line in lines} == {("2026-07", date(2026, 7, 15))}
    assert all(line.event_ids for line in lines)


def test_a_hand_in_that_is_not_perishable_owes_no_cold_chain() -> None:
    lines = parcel_lines("ZT7100000002", [hand_in("ZT7100000002", 1000, None)], COUNTY)
    assert owed(lines) == {"upward_handling": 30, "upward_weight": 20}


def test_a_hand_in_late_in_the_county_evening_is_dated_by_the_county_day() -> None:
    late = hand_in("ZT7100000003", 500, hours=17.5)  # 23:30 county time, 15:30 UTC
    lines = parcel_lines("ZT7100000003", [late], COUNTY)
    assert {line.posting_date for line in lines} == {date(2026, 7, 15)}
    month_end = ev("parcel.handed_in", 24 * 16 + 17.5, "ZTO", waybill="ZT7100000004",
                   shipper_id="COOP-WUSHAN-017", origin_village="VIL-XILIU-01", weight_g=500)
    assert {line.period for line in parcel_lines("ZT7100000004", [month_end], COUNTY)} == {"2026-07"}


def test_a_waybill_handed_in_twice_is_charged_once_by_its_first_hand_in_in_any_order() -> None:
    first = hand_in("ZT7100000005", 3100, "produce", hours=1)
    again = hand_in("ZT7100000005", 800, None, hours=2)  # the brand system's copy, later
    events = [first, again, again]
    for _ in range(5):
        random.shuffle(events)
        lines = parcel_lines("ZT7100000005", events, COUNTY)
        assert owed(lines) == {"upward_handling": 30, "upward_weight": 80, "upward_cold_chain": 50}
        assert {line.event_ids for line in lines} == {(first.event_id,)}


def test_a_charge_of_nothing_is_not_posted_and_no_tariff_charges_nothing() -> None:
    county = replace(COUNTY, upward_tariff=UpwardTariff(30, 0, 0))
    assert owed(parcel_lines("ZT7100000006", [hand_in("ZT7100000006", 5000)], county)) == {
        "upward_handling": 30}
    bare = replace(COUNTY, upward_tariff=None)
    assert parcel_lines("ZT7100000006", [hand_in("ZT7100000006", 5000)], bare) == []


def test_an_upward_parcel_later_stored_at_a_station_pays_as_its_hand_in_brand() -> None:
    w = "SF7100000007"
    lines = parcel_lines(w, [hand_in(w, 900, None, brand="SF"),
                             ev("parcel.scanned", 30, "SF", waybill=w, action="stored",
                                node_id="TWN-XILIU", pickup_code="1-1-1")], COUNTY)
    assert owed(lines, "SF") == {"upward_handling": 30, "upward_weight": 20, "delivery_fee": 60,
                                 "commission_stored": 40}


def test_a_parcels_state_keeps_its_hand_in_and_reads_states_written_before_hand_ins() -> None:
    state = ParcelState("ZT7100000008")
    assert fold_parcel(state, fact_from_envelope(1, hand_in("ZT7100000008", 2500)))
    j = state.to_json()
    back = ParcelState.from_json("ZT7100000008", _roundtrip(j))
    assert back.handed_in == state.handed_in and back.handed_in is not None
    assert back.handed_in.perishable == "plum" and back.handed_in.weight_g == 2500
    old = {"r": None, "f": None, "s": [], "d": [], "t": []}
    assert ParcelState.from_json("ZT7100000009", old).handed_in is None
    assert "h" not in ParcelState("ZT7100000009").to_json()


def _roundtrip(j: dict[str, Any]) -> dict[str, Any]:
    import orjson
    return orjson.loads(orjson.dumps(j))  # type: ignore[no-any-return]


def test_a_late_hand_in_for_a_closed_month_is_an_adjustment_of_its_own_kinds() -> None:
    from projections.ledger_store import _late_adjustments

    unit = "parcel:ZT7100000010"
    late = (2, hand_in("ZT7100000010", 1500))
    adjustments = _late_adjustments(unit, [late], [late], {"2026-07"}, COUNTY)
    got = {(line.kind, line.account): line.amount.value for line, period, event in adjustments
           if period == "2026-07" and event == late[1].event_id}
    assert got == {("upward_handling", "brand:ZTO"): 30, ("upward_handling", "revenue:upward_handling"): -30,
                   ("upward_weight", "brand:ZTO"): 40, ("upward_weight", "revenue:upward_weight"): -40,
                   ("upward_cold_chain", "brand:ZTO"): 50,
                   ("upward_cold_chain", "revenue:upward_cold_chain"): -50}


# --------------------------------------------------------------------------- bus runs' money

def _bus_trip(trip: str, loads: dict[str, int], route_id: str = "R-XILIU") -> list[Envelope]:
    events = [ev("vehicle.departed", 1.5, "ZTO", trip_id=trip, route_id=route_id,
                 run_id=f"{route_id}-0730", node_id="CTY-HAICHENG",
                 scheduled_at=(T0 + timedelta(hours=1.5)).isoformat())]
    n = 0
    for brand, count in loads.items():
        for _ in range(count):
            n += 1
            events.append(ev("parcel.scanned", 1.4, brand, waybill=f"{brand}71000{n:05d}",
                             action="loaded", node_id="CTY-HAICHENG", trip_id=trip))
    return events


def test_a_bus_run_costs_its_lines_price_shared_by_largest_remainder() -> None:
    trip = "BUS-XILIU-20260715-0730"
    manifest = TripManifest.from_events(trip, _bus_trip(trip, {"ZTO": 3, "SF": 2, "JD": 2}))
    lines = trip_lines(manifest, {}, COUNTY)
    # 1500 × 3/7 = 642.86, × 2/7 = 428.57 twice: floors 642 + 428 + 428 = 1498; the two fen
    # left go to the largest remainders, .86 (ZTO) then .57 (tie: JD before SF by code).
    shares = {line.brand: line.amount.value for line in lines if line.account.startswith("brand:")}
    assert shares == {"ZTO": 643, "JD": 429, "SF": 428}
    carrier = [line for line in lines if line.account.startswith("carrier:")]
    assert [(c.account, c.ref, c.amount.value) for c in carrier] == [("carrier:BUS-XILIU", "BUS-XILIU", -1500)]
    assert {line.kind for line in lines} == {"trip_cost"} and {line.ref for line in lines} == {"BUS-XILIU"}
    assert balanced(lines)


def test_a_bus_run_is_shared_by_the_county_basis_like_a_run() -> None:
    trip = "BUS-XILIU-20260715-1300"
    events = _bus_trip(trip, {"ZTO": 1, "SF": 1}) + [
        ev("parcel.registered", -3, "ZTO", waybill="ZTO7100000001",
           recipient_phone=sealed("13812345678"), destination_village="VIL-XILIU-01", weight_g=3000),
        ev("parcel.registered", -3, "SF", waybill="SF7100000002",
           recipient_phone=sealed("13812345678"), destination_village="VIL-XILIU-01", weight_g=1000)]
    manifest = TripManifest.from_events(trip, [e for e in events if e.type != "parcel.registered"])
    regs = {e.payload.waybill: e for e in events if e.type == "parcel.registered"}  # type: ignore[attr-defined]
    by_count = trip_lines(manifest, regs, COUNTY)
    by_weight = trip_lines(manifest, regs, COUNTY, basis="actual_weight")
    assert owed(by_count) == {"trip_cost": 750} and owed(by_count, "SF") == {"trip_cost": 750}
    assert owed(by_weight) == {"trip_cost": 1125} and owed(by_weight, "SF") == {"trip_cost": 375}


def test_a_bus_run_that_carried_nothing_is_the_operators() -> None:
    trip = "BUS-XILIU-20260715-1300"
    lines = trip_lines(TripManifest.from_events(trip, _bus_trip(trip, {})), {}, COUNTY)
    assert {(line.account, line.amount.value) for line in lines} == {
        ("carrier:BUS-XILIU", -1500), ("operator:unallocated", 1500)}


def test_a_trip_whose_id_only_looks_like_a_lines_is_a_run_of_its_route() -> None:
    for trip in ("BUS-XILIUX-1", "BUS-XILIU", "T-BUS-XILIU-1"):
        lines = trip_lines(TripManifest.from_events(trip, _bus_trip(trip, {"ZTO": 1})), {}, COUNTY)
        assert [(line.account, line.amount.value) for line in lines
                if line.account.startswith("carrier:")] == [("carrier:R-XILIU", -7500)], trip


# ------------------------------------------------------------------------------ statements

def test_a_statement_shows_the_upward_tariff_apart_and_bus_shares_under_their_line() -> None:
    lines = (parcel_lines("ZT7100000011", [hand_in("ZT7100000011", 1200)], COUNTY)
             + parcel_lines("ZT7100000012", [hand_in("ZT7100000012", 2000, None)], COUNTY)
             + trip_lines(TripManifest.from_events("BUS-XILIU-20260715-0730",
                                                   _bus_trip("BUS-XILIU-20260715-0730", {"ZTO": 1})),
                          {}, COUNTY))
    rows = [{"entry_id": ln.entry_id, "posting_date": ln.posting_date, "kind": ln.kind,
             "account": ln.account, "ref": ln.ref, "amount_fen": ln.amount.value,
             "adjusts_period": None, "late_event_id": None, "event_ids": list(ln.event_ids)}
            for ln in lines]
    s = build_statement("ZTO", "2026-07", "open", rows)
    assert s["upward"] == {"parcels": 2, "kg": 4, "cold_chain_parcels": 1, "fen": 60 + 80 + 50,
                           "yuan": "1.90"}
    assert {k: s["totals"][k]["fen"] for k in UPWARD_KINDS} == {
        "upward_handling": 60, "upward_weight": 80, "upward_cold_chain": 50}
    assert all(k in KIND_LABELS for k in UPWARD_KINDS)
    assert s["trip_shares"] == [{"route": "BUS-XILIU", "trips": 1, "fen": 1500, "yuan": "15.00"}]
    assert s["net"]["fen"] == 190 + 1500


# -------------------------------------------------------------------- bus runs in the SLA

def _late_down_leg(trip: str, at_centre: float) -> str | None:
    """A parcel for VIL-XILIU-01 at the centre at `at_centre` hours after 06:00, loaded on the
    13:00 run `trip` (which leaves on time) and at its township 12 h 15 min after: the
    county → township leg is late; its cause."""
    def at(h: float) -> datetime:
        return T0 + timedelta(hours=h)
    scans = [ScanFact("s1", at(at_centre), "ZTO", "CTY-HAICHENG", "received"),
             ScanFact("s2", at(6.8), "ZTO", "CTY-HAICHENG", "loaded", trip),
             ScanFact("s3", at(at_centre + 12.25), "ZTO", "TWN-XILIU", "arrived", trip)]
    regs = [RegistrationFact("r1", at(-5), "ZTO", "VIL-XILIU-01")]
    moves = {trip: [MoveFact("m1", "departed", at(7), at(7))]}
    legs = {o.leg: o for o in evaluate_facts("ZT7100000013", scans, regs, moves, COUNTY,
                                              COUNTY.sla)}
    assert legs["county_to_township"].outcome == "late"
    return legs["county_to_township"].cause


def test_a_bus_run_is_judged_against_its_lines_timetable() -> None:
    # At the centre at 07:45: the 07:30 bus had left, so riding the 13:00 bus misses nothing,
    # though the route's 08:00 van would have taken it (a van run: missed_run).
    assert _late_down_leg("BUS-XILIU-20260715-1300", 1.75) == "unknown"
    assert _late_down_leg("T-0715-XILIU-PM", 1.75) == "missed_run"
    # At the centre at 07:00, in time for the 07:30 bus: riding the 13:00 one is a missed run.
    assert _late_down_leg("BUS-XILIU-20260715-1300", 1.0) == "missed_run"
