"""Upward produce (农产品上行): the hand-in event, its ownership, the cold-chain scan actions and
the county file's [perishables.*], [air], [upward_tariff], [[bus_lines]] and [season]."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from domain.county import CountyConfigError
from domain.envelope import Envelope
from domain.events import ParcelHandedIn, ScanAction, waybill_of
from domain.ownership import Conflict, Owner, Writer, decide
from domain.validation import Reason, Rejection, validate_event
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from tests.unit.test_county import HEAD  # the minimal valid county; upward tables appended

COUNTY = load_county(DEMO_COUNTY)
NOW = datetime(2026, 7, 15, 4, 0, tzinfo=UTC)
ALL = frozenset(COUNTY.brands)


def handed_in(**payload: Any) -> dict[str, Any]:
    base = {"waybill": "431234567890123", "shipper_id": "COOP-WUSHAN-017",
            "origin_village": "VIL-XILIU-01", "weight_g": 5200, "perishable": "plum"}
    body = {k: v for k, v in {**base, **payload}.items() if v is not ...}
    return {"event_id": "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a31", "type": "parcel.handed_in",
            "schema_version": 1, "occurred_at": "2026-07-15T10:05:00+08:00", "brand": "YUNDA",
            "operator_id": "op-4410", "payload": body}


def check(raw: dict[str, Any]) -> Envelope | Rejection:
    return validate_event(raw, index=0, county=COUNTY, permitted_brands=ALL, device_id="pda-1",
                          recorded_at=NOW)


def test_given_a_hand_in_of_plums_then_it_is_accepted_keyed_by_its_waybill() -> None:
    e = check(handed_in())
    assert isinstance(e, Envelope) and isinstance(e.payload, ParcelHandedIn)
    assert e.payload.perishable == "plum" and e.payload.weight_g == 5200
    assert e.partition_key == "431234567890123" == waybill_of(e.payload)


def test_given_no_perishable_class_then_null_and_absent_are_alike() -> None:
    for value in (None, ...):
        e = check(handed_in(perishable=value))
        assert isinstance(e, Envelope) and isinstance(e.payload, ParcelHandedIn)
        assert e.payload.perishable is None


@pytest.mark.parametrize("shipper", ["13812345678", "P13812345678", "COOP-1381234567",
                                     "COOP-0123456", "coop-wushan", "CO", "COOP WUSHAN"])
def test_given_a_shipper_id_that_is_a_phone_or_malformed_then_refused_and_not_echoed(
        shipper: str) -> None:
    r = check(handed_in(shipper_id=shipper))
    assert isinstance(r, Rejection) and r.reason == Reason.invalid_value
    assert r.path == "$.events[0].payload.shipper_id"
    assert "1381234567" not in r.message and "0123456" not in r.message


@pytest.mark.parametrize("payload, reason, field", [
    ({"perishable": "durian"}, Reason.invalid_value, "perishable"),
    ({"origin_village": "TWN-XILIU"}, Reason.node_wrong_tier, "origin_village"),
    ({"origin_village": "VIL-NOWHERE"}, Reason.unknown_node, "origin_village"),
    ({"weight_g": 0}, Reason.invalid_value, "weight_g"),
    ({"weight_g": 70_001}, Reason.invalid_value, "weight_g"),
    ({"weight_g": 5.5}, Reason.wrong_type, "weight_g"),
    ({"shipper_id": ...}, Reason.missing_field, "shipper_id"),
    ({"recipient_phone": "13812345678"}, Reason.unknown_field, "recipient_phone"),
])
def test_given_a_bad_hand_in_then_the_reason_names_the_field(
        payload: dict[str, Any], reason: Reason, field: str) -> None:
    r = check(handed_in(**payload))
    assert isinstance(r, Rejection) and r.reason == reason
    assert r.path == f"$.events[0].payload.{field}"


def test_the_cold_chain_scan_actions_are_scan_actions() -> None:
    for action in ("cold_in", "cold_out", "air_loaded"):
        assert ScanAction(action).value == action
        raw = handed_in()
        raw.update(type="parcel.scanned", payload={"waybill": "431234567890123",
                                                   "action": action, "node_id": "CTY-HAICHENG"})
        assert isinstance(check(raw), Envelope)


YUNDA_PDA = Writer("scanner", frozenset({"YUNDA"}), node_id="VIL-XILIU-01")
ZTO_SYSTEM = Writer("brand-system", frozenset({"ZTO"}))
W = "431234567890123"


def test_given_a_new_waybill_when_handed_in_then_its_brand_owns_it_as_by_a_manifest() -> None:
    d = decide("parcel.handed_in", "YUNDA", W, None, None, YUNDA_PDA)
    assert d.refusal is None and d.owner == Owner(W, "YUNDA", True, None)


def test_given_another_brand_owns_it_when_handed_in_then_refused_as_a_conflict() -> None:
    owner = Owner(W, "YUNDA", True, None)
    d = decide("parcel.handed_in", "ZTO", W, None, owner, ZTO_SYSTEM)
    assert d.owner == owner and d.refusal is not None
    assert d.refusal.reason == Reason.waybill_owned_by_other_brand
    assert d.refusal.conflict == Conflict.registration_by_other_brand
    scan = decide("parcel.scanned", "ZTO", W, None, owner, ZTO_SYSTEM)
    assert scan.refusal is not None and scan.refusal.reason == Reason.waybill_owned_by_other_brand


def test_given_another_brand_scanned_it_first_when_handed_in_then_refused() -> None:
    claim = decide("parcel.scanned", "ZTO", W, None, None, ZTO_SYSTEM).owner
    d = decide("parcel.handed_in", "YUNDA", W, None, claim, YUNDA_PDA)
    assert d.refusal is not None and d.refusal.conflict == Conflict.manifest_after_other_brand_scans


def test_given_its_own_manifest_when_handed_in_then_the_destination_stands() -> None:
    owner = Owner(W, "YUNDA", True, "VIL-XILIU-02")
    d = decide("parcel.handed_in", "YUNDA", W, None, owner, YUNDA_PDA)
    assert d.refusal is None and d.owner == owner


def test_the_demo_county_has_the_upward_tables() -> None:
    plum = COUNTY.perishables["plum"]
    assert (plum.name, plum.cold_store_within_hours, plum.max_outside_cold_minutes, plum.air) \
        == ("巫山脆李", 6, 120, True)
    assert not COUNTY.perishables["produce"].air
    assert COUNTY.air is not None and COUNTY.air.cutoff == "18:00"
    tariff = COUNTY.upward_tariff
    assert tariff is not None
    assert (tariff.handling_fen, tariff.per_kg_fen, tariff.cold_chain_fen) == (30, 20, 50)
    # 5.2 kg is six started kg: 30 + 6 × 20 + 50.
    assert tariff.charge_fen(5200, perishable=True) == 200
    assert tariff.charge_fen(1000, perishable=False) == 50
    [bus] = COUNTY.bus_lines
    assert bus.id == "BUS-XILIU" and bus.cost_per_trip_fen == 1500
    assert bus.departures == ("07:30", "13:00") and all(s in COUNTY.nodes for s in bus.stops)
    assert COUNTY.bus_line_of("BUS-XILIU-20260715-0730") == bus
    assert COUNTY.bus_line_of("BUS-XILIUX-1") is None and COUNTY.bus_line_of("R-XILIU-AM") is None
    assert COUNTY.in_harvest(date(2026, 7, 1)) and COUNTY.in_harvest(date(2026, 8, 31))
    assert not COUNTY.in_harvest(date(2026, 9, 1)) and not COUNTY.in_harvest(date(2026, 6, 30))


def _plum(hours: int, air: str) -> str:
    return (f'[perishables.plum]\nname = "李"\ncold_store_within_hours = {hours}\n'
            f'max_outside_cold_minutes = 120\nair = {air}\n')


def _bus(stop: str, departure: str) -> str:
    return (f'[[bus_lines]]\nid = "BUS-A"\nname = "班线"\nstops = ["CTY-T", "{stop}"]\n'
            f'departures = ["{departure}"]\ncost_per_trip_fen = 1500\n')


@pytest.mark.parametrize("tail, says", [
    (_plum(6, "true"), "[air]"),
    (_plum(0, "false"), "cold_store_within_hours"),
    (_plum(6, '"yes"'), "'air' must be bool"),
    ('[air]\ncutoff = "25:00"\n', "cutoff"),
    ('[upward_tariff]\nhandling_fen = 0.3\nper_kg_fen = 20\ncold_chain_fen = 50\n', "handling_fen"),
    ('[upward_tariff]\nhandling_fen = 30\nper_kg_fen = 20\n', "cold_chain_fen"),
    (_bus("VIL-X", "07:30"), "VIL-X"),
    (_bus("TWN-A", "7:30"), "HH:MM"),
    ('[season]\nharvest = ["07-01"]\n', "harvest"),
    ('[season]\nharvest = ["07-01", "13-01"]\n', "harvest"),
])
def test_given_a_broken_upward_table_then_the_error_says_where_and_why(
        tmp_path: Path, tail: str, says: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(HEAD + tail, encoding="utf-8")
    with pytest.raises(CountyConfigError) as err:
        load_county(path)
    assert says in str(err.value) and "t.toml" in str(err.value)


def test_a_season_may_wrap_the_year_end(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(HEAD + '[season]\nharvest = ["12-01", "01-31"]\n', encoding="utf-8")
    county = load_county(path)
    assert county.in_harvest(date(2026, 12, 24)) and county.in_harvest(date(2027, 1, 2))
    assert not county.in_harvest(date(2027, 2, 1))
    assert load_county(path).perishables == {} and county.bus_lines == ()
