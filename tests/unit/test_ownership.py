"""Who may write into a waybill: the rules of domain/ownership.py, with plain values."""

from __future__ import annotations

import re

from domain.envelope import content_digest
from domain.ownership import Conflict, Owner, Writer, decide, waybill_pattern_refusal
from domain.validation import Reason

ZTO_SYSTEM = Writer("brand-system", frozenset({"ZTO"}))
YTO_SYSTEM = Writer("brand-system", frozenset({"YTO"}))
STATION = Writer("scanner", frozenset({"ZTO", "YTO", "SF"}))        # a township's scanner
ZTO_PDA = Writer("scanner", frozenset({"ZTO"}))
KEEPER = Writer("scanner", frozenset({"ZTO", "YTO"}), node_id="VIL-1")  # the village point's
W = "YT1234567890123"
YTO_OWNS = Owner(W, "YTO", True, "VIL-1")


def test_given_a_new_waybill_when_a_brand_registers_it_then_that_brand_owns_it() -> None:
    d = decide("parcel.registered", "YTO", W, "VIL-1", None, YTO_SYSTEM)
    assert d.refusal is None and d.owner == YTO_OWNS


def test_given_yto_owns_it_when_zto_registers_it_then_refused_as_a_conflict_not_a_takeover() -> None:
    d = decide("parcel.registered", "ZTO", W, "VIL-2", YTO_OWNS, ZTO_SYSTEM)
    assert d.owner == YTO_OWNS
    assert d.refusal is not None and d.refusal.reason == Reason.waybill_owned_by_other_brand
    assert d.refusal.conflict == Conflict.registration_by_other_brand
    assert "YTO" not in d.refusal.message  # a competitor learns only that it is taken


def test_given_yto_owns_it_when_yto_registers_again_then_the_correction_is_accepted() -> None:
    d = decide("parcel.registered", "YTO", W, "VIL-3", YTO_OWNS, YTO_SYSTEM)
    assert d.refusal is None and d.owner == Owner(W, "YTO", True, "VIL-3")


def test_given_yto_owns_it_when_a_zto_scanner_scans_it_as_zto_then_refused() -> None:
    for event_type in ("parcel.scanned", "parcel.sorted"):
        d = decide(event_type, "ZTO", W, None, YTO_OWNS, ZTO_PDA)
        assert d.refusal is not None and d.refusal.conflict == Conflict.scan_by_other_brand


def test_given_a_station_scanner_picks_the_wrong_brand_then_it_is_told_the_right_one() -> None:
    d = decide("parcel.scanned", "ZTO", W, None, YTO_OWNS, STATION)
    assert d.refusal is not None and "send it under YTO" in d.refusal.message


def test_given_no_manifest_yet_when_scanned_then_accepted_and_the_brand_claims_it() -> None:
    d = decide("parcel.scanned", "ZTO", W, None, None, STATION)
    assert d.refusal is None and d.owner == Owner(W, "ZTO", False)
    later = decide("parcel.registered", "ZTO", W, "VIL-1", d.owner, ZTO_SYSTEM)
    assert later.refusal is None and later.owner == Owner(W, "ZTO", True, "VIL-1")


def test_given_zto_scans_before_any_manifest_when_yto_registers_then_it_is_a_conflict() -> None:
    claimed = Owner(W, "ZTO", False)
    d = decide("parcel.registered", "YTO", W, "VIL-1", claimed, YTO_SYSTEM)
    assert d.owner == claimed
    assert d.refusal is not None and d.refusal.conflict == Conflict.manifest_after_other_brand_scans


def test_consent_comes_from_the_owners_systems_or_the_serving_village_point() -> None:
    assert decide("consent.recorded", "YTO", W, None, YTO_OWNS, YTO_SYSTEM).refusal is None
    assert decide("consent.recorded", "YTO", W, None, YTO_OWNS, KEEPER).refusal is None
    elsewhere = Writer("scanner", frozenset({"YTO"}), node_id="VIL-9")
    for writer in (elsewhere, STATION):
        refusal = decide("consent.recorded", "YTO", W, None, YTO_OWNS, writer).refusal
        assert refusal is not None and refusal.reason == Reason.consent_not_permitted
        assert refusal.conflict is None
    other = decide("consent.recorded", "ZTO", W, None, YTO_OWNS, ZTO_SYSTEM).refusal
    assert other is not None and other.conflict == Conflict.consent_by_other_brand


def test_given_no_manifest_when_consent_is_recorded_then_it_waits_for_one() -> None:
    for owner in (None, Owner(W, "YTO", False)):
        refusal = decide("consent.recorded", "YTO", W, None, owner, YTO_SYSTEM).refusal
        assert refusal is not None and refusal.reason == Reason.waybill_not_registered


def test_a_brand_pattern_from_the_county_is_checked_whole() -> None:
    patterns = {"YTO": re.compile(r"YT[0-9]{13}", re.ASCII)}
    assert waybill_pattern_refusal(W, "YTO", patterns) is None
    assert waybill_pattern_refusal("SF1234567890123", "SF", patterns) is None  # no pattern
    refusal = waybill_pattern_refusal(W + "9", "YTO", patterns)
    assert refusal is not None and refusal.reason == Reason.waybill_pattern_mismatch


def _wire(**changes: object) -> dict[str, object]:
    wire: dict[str, object] = {
        "event_id": "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10", "type": "parcel.registered",
        "schema_version": 2, "occurred_at": "2026-11-11T09:15:32+08:00",
        "recorded_at": "2026-11-11T01:20:00+00:00", "device_id": "sys-1", "brand": "YTO",
        "operator_id": "op-1",
        "payload": {"waybill": W, "recipient_phone": "13812345678",
                    "destination_village": "VIL-1", "weight_g": 900}}
    return {**wire, **changes}


def test_a_resend_is_the_same_event_whatever_the_server_stamped_or_the_offset_spelling() -> None:
    same = _wire(recorded_at="2026-11-12T00:00:00+00:00", device_id="sys-2",
                 occurred_at="2026-11-11T01:15:32+00:00")
    assert content_digest(_wire()) == content_digest(same)


def test_a_resend_with_another_phone_or_brand_is_other_content() -> None:
    other_phone = _wire(payload={**_wire()["payload"], "recipient_phone": "13900000000"})  # type: ignore[dict-item]
    assert content_digest(_wire()) != content_digest(other_phone)
    assert content_digest(_wire()) != content_digest(_wire(brand="ZTO"))


def test_the_digest_sees_a_phone_only_through_the_keyed_reference_it_is_given() -> None:
    digest = content_digest(_wire(), phone_ref=lambda _: "household-1")
    other = _wire(payload={**_wire()["payload"], "recipient_phone": "13900000000"})  # type: ignore[dict-item]
    assert digest == content_digest(other, phone_ref=lambda _: "household-1")


OWNERSHIP_REASONS = {Reason.waybill_owned_by_other_brand, Reason.waybill_not_registered,
                     Reason.consent_not_permitted, Reason.waybill_pattern_mismatch}
