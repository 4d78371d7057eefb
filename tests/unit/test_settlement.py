"""Settlement rules: fees, surcharges, commissions, trip shares; every entry balances."""

from __future__ import annotations

import random
from datetime import date, datetime, timedelta, timezone
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from domain.envelope import Envelope
from domain.money import Fen
from domain.settlement.rules import TripManifest, parcel_lines, trip_lines
from domain.settlement.statement import build_statement
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from tests.fixtures.envelopes import events_from
from tests.fixtures.phones import sealed

COUNTY = load_county(DEMO_COUNTY)
CST = timezone(timedelta(hours=8))
T0 = datetime(2026, 10, 8, 6, 0, tzinfo=CST)
ev = events_from(T0)


def reg(w: str, grams: int, brand: str = "ZTO", **dims: int) -> Envelope:
    return ev("parcel.registered", -10, brand, waybill=w, recipient_phone=sealed("13812345678"),
              destination_village="VIL-XILIU-01", weight_g=grams, **dims)


def scan(w: str, hours: float, action: str, node: str, brand: str = "ZTO", **kw: Any) -> Envelope:
    return ev("parcel.scanned", hours, brand, waybill=w, action=action, node_id=node, **kw)


def balanced(lines) -> bool:
    totals: dict[str, int] = {}
    for line in lines:
        totals[line.entry_id] = totals.get(line.entry_id, 0) + line.amount.value
    return all(v == 0 for v in totals.values())


def owed(lines, brand: str = "ZTO") -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        if line.account == f"brand:{brand}":
            out[line.kind] = out.get(line.kind, 0) + line.amount.value
    return out


def test_a_village_parcel_picked_up_owes_fee_surcharge_and_both_commissions() -> None:
    lines = parcel_lines("ZT0000001", [reg("ZT0000001", 3500), scan("ZT0000001", 5, "stored", "VIL-XILIU-01",
                                                           pickup_code="1-1-1"),
                                 scan("ZT0000001", 30, "delivered", "VIL-XILIU-01")], COUNTY)
    assert owed(lines) == {"delivery_fee": 100, "weight_surcharge": 50, "commission_stored": 40,
                           "commission_picked_up": 10}
    assert balanced(lines)
    assert {line.account for line in lines if line.kind == "commission_stored"} == {
        "brand:ZTO", "station:VIL-XILIU-01"}
    assert {line.period for line in lines} == {"2026-10"}


def test_a_parcel_picked_up_at_the_township_station_pays_the_township_fee() -> None:
    lines = parcel_lines("ZT0000002", [reg("ZT0000002", 800), scan("ZT0000002", 3, "stored", "TWN-XILIU", pickup_code="1-1-1"),
                                 scan("ZT0000002", 4, "delivered", "TWN-XILIU")], COUNTY)
    assert owed(lines) == {"delivery_fee": 60, "commission_stored": 40, "commission_picked_up": 10}


def test_a_parcel_still_in_transit_owes_nothing_yet() -> None:
    assert parcel_lines("ZT0000003", [reg("ZT0000003", 800), scan("ZT0000003", 1, "received", "CTY-HAICHENG")],
                        COUNTY) == []


def _trip(loads: list[tuple[str, str]], route: str = "R-TENGAO") -> TripManifest:
    dep = ev("vehicle.departed", 1, "ZTO", trip_id="T1", route_id=route, run_id=f"{route}-AM",
             node_id="CTY-HAICHENG", scheduled_at="2026-10-08T08:00:00+08:00")
    return TripManifest.from_events("T1", [dep] + [
        scan(w, 0.5, "loaded", "CTY-HAICHENG", brand=b, trip_id="T1") for w, b in loads])


def test_a_trip_cost_is_fixed_plus_distance_and_shared_by_largest_remainder() -> None:
    # R-TENGAO is 20.7 km: 3000 + 250 × 20.7 = 8175 fen; 2 ZTO, 1 SF, 1 JD parcels
    manifest = _trip([("ZT0000001", "ZTO"), ("ZT0000002", "ZTO"), ("SF0000001", "SF"), ("JD0000001", "JD")])
    lines = trip_lines(manifest, {}, COUNTY)
    shares = {line.brand: line.amount.value for line in lines if line.account.startswith("brand:")}
    # exact shares 4087.5, 2043.75, 2043.75: the two fen left go to the .75s, JD before SF
    assert shares == {"ZTO": 4087, "SF": 2044, "JD": 2044}
    assert [line.amount for line in lines if line.account.startswith("carrier:")] == [Fen(-8175)]
    assert balanced(lines)


def test_every_basis_shares_the_whole_cost() -> None:
    regs = {"ZT0000001": reg("ZT0000001", 1000, length_mm=400, width_mm=300, height_mm=300),
            "SF0000001": reg("SF0000001", 9000, "SF", length_mm=100, width_mm=100, height_mm=100)}
    manifest = _trip([("ZT0000001", "ZTO"), ("SF0000001", "SF")])
    for basis in ("parcel_count", "actual_weight", "chargeable_weight", "volume", "stops",
                  "fixed_plus_variable"):
        lines = trip_lines(manifest, regs, COUNTY, basis=basis)
        assert balanced(lines), basis
    by_weight = trip_lines(manifest, regs, COUNTY, basis="actual_weight")
    by_volume = trip_lines(manifest, regs, COUNTY, basis="chargeable_weight")
    assert owed(by_weight, "SF")["trip_cost"] > owed(by_volume, "SF")["trip_cost"]  # ZT1 is bulky


def test_a_run_that_carried_nothing_is_the_operators_cost() -> None:
    lines = trip_lines(_trip([]), {}, COUNTY)
    assert {line.account for line in lines} == {"carrier:R-TENGAO", "operator:unallocated"}


def test_periods_by_month_and_by_days() -> None:
    from domain.settlement.config import SettlementConfig

    assert COUNTY.settlement.period_of(date(2026, 2, 28)).key == "2026-02"
    short = SettlementConfig(3, date(2026, 11, 1), COUNTY.settlement.versions)
    assert short.period_of(date(2026, 11, 5)).key == "2026-11-04..2026-11-06"
    assert short.period_by_key("2026-11-04..2026-11-06").end == date(2026, 11, 6)


LIFE = [reg("ZT0000009", 4000), scan("ZT0000009", 0, "received", "CTY-HAICHENG"),
        scan("ZT0000009", 3, "arrived", "TWN-XILIU"), scan("ZT0000009", 5, "stored", "VIL-XILIU-01", pickup_code="2-1-9"),
        scan("ZT0000009", 9, "delivered", "VIL-XILIU-01")]


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.lists(st.integers(0, len(LIFE) - 1), max_size=6),
       st.integers(1, len(LIFE)))
def test_property_parcel_postings_balance_and_ignore_order_and_duplicates(
        rnd: random.Random, dups: list[int], prefix: int) -> None:
    events = LIFE[:prefix] + [LIFE[i] for i in dups if i < prefix]
    rnd.shuffle(events)
    lines = parcel_lines("ZT0000009", events, COUNTY)
    assert balanced(lines)
    assert lines == parcel_lines("ZT0000009", LIFE[:prefix], COUNTY)


def test_a_statement_sums_only_the_brands_own_lines() -> None:
    lines = [line.__dict__ | {"amount_fen": line.amount.value, "adjusts_period": None,
                              "late_event_id": None}
             for line in parcel_lines("ZT0000009", LIFE, COUNTY)]
    st_ = build_statement("ZTO", "2026-10", "open", lines)
    assert st_["net"] == {"fen": 200, "yuan": "2.00"}  # 100 fee + 50 surcharge + 40 + 10
    assert st_["parcels_by_tier"] == {"village": 1}
    assert build_statement("SF", "2026-10", "open", lines)["net"]["fen"] == 0


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, len(LIFE)),
       st.lists(st.integers(0, len(LIFE) - 1), max_size=5))
def test_property_frozen_plus_adjustments_equal_the_truth_and_every_entry_balances(
        rnd: random.Random, close_after: int, dups: list[int]) -> None:
    """Any arrival order, duplicates, and a close of October at any point: what October holds
    (frozen at the close) plus the late adjustments equals what the rules say of all events."""
    from projections.ledger_store import _late_adjustments, _net, compute

    arrivals = LIFE + [LIFE[i] for i in dups]
    rnd.shuffle(arrivals)
    inputs = list(enumerate(arrivals, start=1))
    unit = "parcel:ZT0000009"
    frozen = _net(compute(unit, inputs[:close_after], COUNTY), {"2026-10"})
    late = _late_adjustments(unit, inputs, inputs[close_after:], {"2026-10"}, COUNTY)
    entries: dict[str, int] = {}
    total = dict(frozen)
    for line, period, _ in late:
        entries[line.entry_id] = entries.get(line.entry_id, 0) + line.amount.value
        key = (period, line.kind, line.account, line.brand, line.ref)
        total[key] = total.get(key, 0) + line.amount.value
    assert all(v == 0 for v in entries.values())
    truth = _net(compute(unit, inputs, COUNTY), {"2026-10"})
    assert {k: v for k, v in total.items() if v} == {k: v for k, v in truth.items() if v}


# ------------------------------------------------------- compact state (domain/settlement/state)

def test_given_a_journal_body_then_the_cheap_decode_reads_what_the_validated_envelope_says() -> None:
    from domain.settlement.state import fact_from_envelope, fact_from_wire

    for e in LIFE + [ev("vehicle.departed", 1, trip_id="T9", route_id="R-TENGAO", run_id="R-TENGAO-AM",
                        node_id="CTY-HAICHENG", scheduled_at="2026-10-08T08:00:00+08:00")]:
        wire = e.to_wire()
        f = fact_from_wire(7, wire)
        assert (f.seq, f.event_id, f.type, f.occurred_at, f.brand) == (
            7, e.event_id, e.type, e.occurred_at, e.brand)
        assert f.waybill == getattr(e.payload, "waybill", None)
        assert f.trip_id == getattr(e.payload, "trip_id", None)
        assert f == fact_from_envelope(7, e)


def test_given_an_old_manifest_version_then_the_cheap_decode_upcasts_it() -> None:
    from domain.settlement.state import fact_from_wire

    wire = {"event_id": "00000000-0000-7000-8000-000000000001", "type": "parcel.registered",
            "schema_version": 1, "occurred_at": "2026-10-08T06:00:00+08:00",
            "recorded_at": "2026-10-08T06:00:00+08:00", "device_id": "d", "brand": "ZTO",
            "operator_id": "op", "payload": {"waybill": "ZT0000001", "phone": sealed(),
                                             "village": "VIL-XILIU-01", "weight_g": 4200}}
    f = fact_from_wire(1, wire)
    assert (f.waybill, f.weight_g, f.destination) == ("ZT0000001", 4200, "VIL-XILIU-01")


def test_given_plain_values_then_a_parcels_state_is_priced_like_its_events() -> None:
    from domain.settlement.rules import parcel_state_lines
    from domain.settlement.state import ParcelState, Registration, Scan

    at = T0 + timedelta(hours=5)
    state = ParcelState(
        "ZT0000009", Registration(T0, "r1", "ZTO", 4000),
        first_scan=Scan(T0, "s0", "CTY-HAICHENG", "ZTO"),
        stored=[Scan(at, "s1", "VIL-XILIU-01", "ZTO")],
        delivered=[Scan(at + timedelta(hours=4), "s2", "VIL-XILIU-01", "ZTO")])
    lines = parcel_state_lines(state, COUNTY)
    assert owed(lines) == {"delivery_fee": 100, "weight_surcharge": 50, "commission_stored": 40,
                           "commission_picked_up": 10}
    assert {line.entry_id: line.event_ids for line in lines} == {
        "fee:ZT0000009": ("s1",), "surcharge:ZT0000009": ("s1", "r1"),
        "commission_stored:ZT0000009": ("s1",), "commission_picked_up:ZT0000009": ("s2",)}
    # A delivery before the parcel was stored there is its arrival, but no pick-up.
    early = ParcelState("ZT0000009", None, Scan(T0, "s0", "CTY-HAICHENG", "SF"),
                        stored=[Scan(at, "s1", "VIL-XILIU-01", "SF")],
                        delivered=[Scan(at - timedelta(hours=1), "s2", "VIL-XILIU-01", "SF")])
    lines = parcel_state_lines(early, COUNTY)
    assert owed(lines, "SF") == {"delivery_fee": 100, "commission_stored": 40}
    assert next(line.event_ids for line in lines if line.kind == "delivery_fee") == ("s2",)


def test_given_plain_values_then_a_trip_is_shared_from_its_state() -> None:
    from domain.settlement.rules import trip_state_lines
    from domain.settlement.state import Departure, Load, Registration, TripState

    trip = TripState("T1", Departure(T0, "d1", "R-TENGAO"),
                     [Load(T0, f"l{i}", w, b) for i, (w, b) in enumerate(
                         [("ZT1", "ZTO"), ("ZT2", "ZTO"), ("SF1", "SF"), ("JD1", "JD")])],
                     riders={"ZT1": Registration(T0, "r1", "ZTO", 9000)})
    shares = {line.brand: (line.amount.value, line.event_ids)
              for line in trip_state_lines(trip, COUNTY) if line.account.startswith("brand:")}
    assert shares == {"ZTO": (4087, ("d1", "l0", "l1")), "SF": (2044, ("d1", "l2")),
                      "JD": (2044, ("d1", "l3"))}
    by_weight = trip_state_lines(trip, COUNTY, basis="actual_weight")
    assert owed(by_weight, "ZTO") == {"trip_cost": 8175}  # only ZT1's 9 kg is known
    import orjson  # as the ledger keeps it: jsonb through orjson

    assert TripState.from_json("T1", orjson.loads(orjson.dumps(trip.to_json()))) == trip


@settings(max_examples=100, deadline=None)
@given(st.randoms(use_true_random=False), st.lists(st.integers(0, 5), max_size=4))
def test_property_a_trips_state_ignores_order_and_duplicates(rnd: random.Random,
                                                             dups: list[int]) -> None:
    from domain.settlement.rules import trip_state_lines
    from domain.settlement.state import TripState, fact_from_envelope, fold_trip, registration_of

    dep = ev("vehicle.departed", 1, "ZTO", trip_id="T1", route_id="R-TENGAO", run_id="R-TENGAO-AM",
             node_id="CTY-HAICHENG", scheduled_at="2026-10-08T08:00:00+08:00")
    regs = [reg("ZT0000001", 12000), reg("SF0000001", 900, "SF")]
    events = [dep, scan("ZT0000001", 0.5, "loaded", "CTY-HAICHENG", trip_id="T1"),
              scan("SF0000001", 0.6, "loaded", "CTY-HAICHENG", brand="SF", trip_id="T1"),
              scan("ZT0000001", 2, "unloaded", "TWN-XILIU", trip_id="T1"),
              *regs]
    arrivals = events + [events[i] for i in dups]
    rnd.shuffle(arrivals)
    truth = TripState("T1")
    for f in (fact_from_envelope(0, e) for e in events):
        fold_trip(truth, f, registration_of(fact_from_envelope(0, regs[0 if f.brand == "ZTO" else 1]))
                  if f.action == "loaded" else None)
    state = TripState("T1")
    known: dict[str, object] = {}
    for f in (fact_from_envelope(0, e) for e in arrivals):
        if f.type == "parcel.registered":
            known[f.waybill or ""] = registration_of(f)
        fold_trip(state, f, known.get(f.waybill or "") if f.action == "loaded" else None)  # type: ignore[arg-type]
    for basis in ("parcel_count", "actual_weight", "stops"):
        assert trip_state_lines(state, COUNTY, basis) == trip_state_lines(truth, COUNTY, basis)


@settings(max_examples=150, deadline=None)
@given(st.randoms(use_true_random=False), st.integers(0, len(LIFE)), st.integers(0, len(LIFE)))
def test_property_a_parcel_whose_pricing_key_did_not_move_owes_the_same(
        rnd: random.Random, a: int, b: int) -> None:
    """The ledger skips pricing a parcel when its key did not move: equal keys, equal lines."""
    from domain.settlement.rules import parcel_pricing_key, parcel_state_lines
    from domain.settlement.state import ParcelState, fact_from_envelope, fold_parcel

    def state(events: list[Envelope]) -> ParcelState:
        s = ParcelState("ZT0000009")
        for e in events:
            fold_parcel(s, fact_from_envelope(0, e))
        return s

    first, second = LIFE[:a], rnd.sample(LIFE, b)
    s1, s2 = state(first), state(second)
    if parcel_pricing_key(s1) == parcel_pricing_key(s2):
        assert parcel_state_lines(s1, COUNTY) == parcel_state_lines(s2, COUNTY)
    else:
        assert parcel_state_lines(s1, COUNTY) != parcel_state_lines(s2, COUNTY) or not (
            s1.stored or s1.delivered or s2.stored or s2.delivered)
