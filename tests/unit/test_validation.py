"""The ingest contract: every rejection reason, with the exact JSON path of the offending field."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest

from domain.envelope import Envelope
from domain.redact import mask_digit_runs
from domain.validation import Reason, Rejection, validate_batch, validate_event
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY

COUNTY = load_county(DEMO_COUNTY)
GOLDEN = Path(__file__).parents[1] / "fixtures" / "events"
NOW = datetime(2026, 11, 11, 2, 0, tzinfo=UTC)
ALL = frozenset(COUNTY.brands)


def scan(**over: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_id": "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10", "type": "parcel.scanned",
        "schema_version": 1, "occurred_at": "2026-11-11T09:15:32+08:00", "brand": "ZTO",
        "operator_id": "op-8812",
        "payload": {"waybill": "ZT7300012345678", "action": "arrived", "node_id": "TWN-XILIU"}}
    payload = over.pop("payload", {})
    e.update(over)
    e["payload"] = {k: v for k, v in {**e["payload"], **payload}.items() if v is not ...}
    return {k: v for k, v in e.items() if v is not ...}


def registered(**payload: Any) -> dict[str, Any]:
    base = {"waybill": "ZT7300012345678", "recipient_phone": "13812345678",
            "destination_village": "VIL-XILIU-01", "weight_g": 1200}
    return scan(type="parcel.registered", schema_version=2,
                payload={**{k: ... for k in ("action", "node_id")}, **base, **payload})


def vehicle(**payload: Any) -> dict[str, Any]:
    base = {"trip_id": "T-20261111-R-XILIU-AM", "route_id": "R-XILIU", "run_id": "R-XILIU-AM",
            "node_id": "CTY-HAICHENG", "scheduled_at": "2026-11-11T08:00:00+08:00"}
    return scan(type="vehicle.departed",
                payload={"waybill": ..., "action": ..., **base, **payload})


def v1_manifest(**payload: Any) -> dict[str, Any]:
    base = {"waybill": "ZT7300012345678", "phone": "13812345678", "village": "VIL-XILIU-01",
            "weight_g": 900}
    return scan(type="parcel.registered", payload={"action": ..., "node_id": ..., **base, **payload})


def sms(**payload: Any) -> dict[str, Any]:
    base = {"sms_id": "sms-01", "provider": "aliyun", "provider_message_id": "m-1", "attempt": 1}
    return scan(type="sms.submitted", payload={"action": ..., "node_id": ..., "waybill": ...,
                                               **base, **payload})


def check(raw: object, brands: frozenset[str] = ALL, types: frozenset[str] | None = None):
    return validate_event(raw, index=3, county=COUNTY, permitted_brands=brands, device_id="pda-1",
                          recorded_at=NOW, permitted_types=types)


CASES = [
    ("not_an_object", ["x"], "$.events[3]"),
    ("missing_field", scan(brand=...), "$.events[3].brand"),
    ("wrong_type", scan(schema_version="1"), "$.events[3].schema_version"),
    ("wrong_type", scan(payload={"node_id": 7}), "$.events[3].payload.node_id"),
    ("invalid_value", scan(payload={"waybill": "zt-lower"}), "$.events[3].payload.waybill"),
    ("invalid_value", scan(occurred_at="11/11/2026 09:15"), "$.events[3].occurred_at"),
    ("invalid_value", scan(occurred_at="2026-11-13T09:15:32+08:00"), "$.events[3].occurred_at"),
    ("invalid_event_id", scan(event_id="12345"), "$.events[3].event_id"),
    ("naive_timestamp", scan(occurred_at="2026-11-11T09:15:32"), "$.events[3].occurred_at"),
    ("unknown_type", scan(type="parcel.teleported"), "$.events[3].type"),
    ("unsupported_version", scan(schema_version=9), "$.events[3].schema_version"),
    ("unknown_action", scan(payload={"action": "yeeted"}), "$.events[3].payload.action"),
    ("unknown_node", scan(payload={"node_id": "TWN-NOWHERE"}), "$.events[3].payload.node_id"),
    ("node_wrong_tier", registered(destination_village="TWN-XILIU"),
     "$.events[3].payload.destination_village"),
    ("unknown_brand", scan(brand="DHL"), "$.events[3].brand"),
    ("unknown_field", scan(recorded_at="2026-11-11T09:15:32+08:00"), "$.events[3].recorded_at"),
    ("unknown_field", scan(colour="red"), "$.events[3].colour"),
    ("unknown_field", scan(payload={"colour": "red"}), "$.events[3].payload.colour"),
    ("missing_field", scan(payload={"action": "problem"}), "$.events[3].payload.problem_reason"),
    ("invalid_value", scan(payload={"pickup_code": "10-2-7507"}), "$.events[3].payload.pickup_code"),
    ("invalid_value", registered(recipient_phone="12345"), "$.events[3].payload.recipient_phone"),
    ("wrong_type", scan() | {"payload": "x"}, "$.events[3].payload"),
    ("wrong_type", scan(schema_version=True), "$.events[3].schema_version"),
    ("wrong_type", scan(payload={"action": 3}), "$.events[3].payload.action"),
    ("missing_field", scan(payload={"waybill": ...}), "$.events[3].payload.waybill"),
    ("invalid_value", scan(operator_id=""), "$.events[3].operator_id"),
    ("invalid_value", scan(payload={"action": "stored", "pickup_code": "10-2"}),
     "$.events[3].payload.pickup_code"),
    ("invalid_value", scan(payload={"action": "problem", "problem_reason": "bored"}),
     "$.events[3].payload.problem_reason"),
    ("invalid_value", registered(weight_g=0), "$.events[3].payload.weight_g"),
    ("wrong_type", registered(weight_g=1.5), "$.events[3].payload.weight_g"),
    ("invalid_event_id", scan(event_id="{0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a1}"),
     "$.events[3].event_id"),
    ("naive_timestamp", vehicle(scheduled_at="2026-11-11T08:00:00"),
     "$.events[3].payload.scheduled_at"),
    ("unknown_node", registered(destination_village="VIL-NOWHERE-01"),
     "$.events[3].payload.destination_village"),
    ("unknown_node", vehicle(node_id="TWN-NOWHERE"), "$.events[3].payload.node_id"),
    ("node_wrong_tier", v1_manifest(village="CTY-HAICHENG"), "$.events[3].payload.village"),
    ("unknown_field", scan(device_id="pda-9"), "$.events[3].device_id"),
    ("unknown_field", sms(phone="13812345678"), "$.events[3].payload.phone"),
]


@pytest.mark.parametrize("reason, raw, path", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_given_an_invalid_event_then_rejected_with_reason_and_path(reason: str, raw: object,
                                                                   path: str) -> None:
    result = check(raw)
    assert isinstance(result, Rejection), result
    assert (result.reason, result.path) == (Reason(reason), path)
    assert result.message


def test_given_a_device_of_one_brand_when_it_scans_another_then_brand_not_permitted() -> None:
    result = check(scan(brand="SF"), brands=frozenset({"ZTO"}))
    assert isinstance(result, Rejection) and result.reason == Reason.brand_not_permitted


def test_given_a_scanner_when_it_emits_an_sms_event_then_type_not_permitted() -> None:
    result = check(scan(type="sms.submitted"), types=frozenset({"parcel.scanned"}))
    assert isinstance(result, Rejection) and result.reason == Reason.type_not_permitted
    assert result.path == "$.events[3].type"


def batch(events: list[Any]) -> list[Envelope | Rejection]:
    return validate_batch(events, county=COUNTY, permitted_brands=ALL, device_id="d",
                          recorded_at=NOW)


def test_given_a_rejected_first_copy_then_a_later_copy_is_still_a_duplicate() -> None:
    out = batch([scan(payload={"node_id": "TWN-NOWHERE"}), scan()])
    assert isinstance(out[0], Rejection) and out[0].reason == Reason.unknown_node
    assert isinstance(out[1], Rejection) and out[1].reason == Reason.duplicate_in_batch
    assert out[1].message == ("event_id 0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10 already appears "
                              "at $.events[0] in this batch")


def test_given_one_id_in_two_spellings_then_the_second_is_a_duplicate() -> None:
    out = batch([scan(), "junk", scan(event_id="0193B6C4-6F1E-7CC2-9A55-3C1F0E6F2A10",
                                      payload={"action": "sorted"}), scan()])
    assert isinstance(out[0], Envelope)
    assert isinstance(out[1], Rejection) and out[1].reason == Reason.not_an_object
    assert [(o.reason, o.path) for o in out[2:] if isinstance(o, Rejection)] == [
        (Reason.duplicate_in_batch, "$.events[2].event_id"),
        (Reason.duplicate_in_batch, "$.events[3].event_id")]


def test_given_server_fields_in_the_body_then_the_message_says_the_server_sets_them() -> None:
    for key in ("recorded_at", "device_id"):
        result = check(scan(**{key: "x"}))
        assert isinstance(result, Rejection) and "set by the server" in result.message


@pytest.mark.parametrize("raw, path", [
    (scan(brand="13812345678"), "$.events[3].brand"),
    (scan(type="13812345678"), "$.events[3].type"),
    (scan(event_id="13812345678"), "$.events[3].event_id"),
    (scan(payload={"node_id": "13812345678"}), "$.events[3].payload.node_id"),
    (scan(payload={"action": "13812345678"}), "$.events[3].payload.action"),
    (scan(**{"13812345678": 1}), "$.events[3].13812345678"),
    (registered(recipient_phone="2381234567"), "$.events[3].payload.recipient_phone"),
])
def test_given_a_phone_number_anywhere_then_the_message_never_echoes_it(raw: object,
                                                                       path: str) -> None:
    result = check(raw)
    assert isinstance(result, Rejection) and result.path == path
    assert "12345678" not in result.message and "1234567" not in result.message


def test_messages_name_the_field_and_the_cause() -> None:
    def message(raw: object) -> str:
        result = check(raw)
        assert isinstance(result, Rejection)
        return result.message

    assert "'action' 'yeeted' is not one of: received" in message(scan(payload={"action": "yeeted"}))
    assert "'TWN-NOWHERE' is not a node of 海城市" in message(scan(payload={"node_id": "TWN-NOWHERE"}))
    assert "is a township (西柳镇站), not a village" in message(
        registered(destination_village="TWN-XILIU"))
    assert "'colour' is not a field" in message(scan(payload={"colour": "red"}))
    assert "'recipient_phone'" in message(registered(recipient_phone="12345"))


def test_given_each_golden_event_when_uploaded_then_it_matches_the_journal_reading() -> None:
    for path in sorted(GOLDEN.glob("*.json")):
        wire = orjson.loads(path.read_bytes())
        if wire["brand"] not in ALL or wire["type"] == "parcel.registered":
            continue  # server-made events (period.closed) are never uploaded; manifests: below
        body = {k: v for k, v in wire.items() if k not in ("recorded_at", "device_id")}
        recorded_at = datetime.fromisoformat(wire["recorded_at"])
        result = validate_event(body, index=0, county=COUNTY, permitted_brands=ALL,
                                device_id=wire["device_id"], recorded_at=recorded_at)
        assert result == Envelope.from_wire(wire), path.name


def test_given_a_golden_manifest_upload_then_it_validates_to_the_upload_form_still_unsealed() -> None:
    expected = orjson.loads((GOLDEN / "uploads" / "parcel.registered.v2.json").read_bytes())
    for path in sorted((GOLDEN / "uploads").glob("*.json")):
        wire = orjson.loads(path.read_bytes())
        body = {k: v for k, v in wire.items() if k not in ("recorded_at", "device_id")}
        result = validate_event(body, index=0, county=COUNTY, permitted_brands=ALL,
                                device_id=wire["device_id"],
                                recorded_at=datetime.fromisoformat(wire["recorded_at"]))
        assert isinstance(result, Envelope) and result.unsealed, path.name
        assert result.to_wire() == expected, path.name  # v1 upcast; the phone sealed at ingest


def test_given_duplicate_ids_in_one_batch_then_only_the_first_is_accepted() -> None:
    out = validate_batch([scan(), scan()], county=COUNTY, permitted_brands=ALL, device_id="d",
                         recorded_at=NOW)
    assert isinstance(out[0], Envelope)
    assert isinstance(out[1], Rejection) and out[1].reason == Reason.duplicate_in_batch
    assert out[1].path == "$.events[1].event_id"


def test_every_reason_is_produced_by_some_test() -> None:
    from tests.unit.test_ownership import OWNERSHIP_REASONS

    produced = {Reason(c[0]) for c in CASES} | {Reason.brand_not_permitted,
                                                Reason.type_not_permitted, Reason.duplicate_in_batch,
                                                Reason.too_old}
    produced |= OWNERSHIP_REASONS  # decided at ingest against stored owners: test_ownership.py
    assert produced == set(Reason)


def test_given_a_valid_scan_then_the_envelope_has_server_stamps_and_a_normalised_id() -> None:
    e = check(scan(event_id="0193B6C4-6F1E-7CC2-9A55-3C1F0E6F2A10"))
    assert isinstance(e, Envelope)
    assert e.event_id == "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10"
    assert (e.recorded_at, e.device_id) == (NOW, "pda-1")
    assert e.occurred_at.utcoffset().total_seconds() == 8 * 3600  # type: ignore[union-attr]


def test_given_a_ulid_then_it_is_accepted_uppercased() -> None:
    e = check(scan(event_id="01jdk7qwz8x3v5m2n4p6r8t0ya"))
    assert isinstance(e, Envelope) and e.event_id == "01JDK7QWZ8X3V5M2N4P6R8T0YA"


def test_given_a_v1_manifest_then_it_is_accepted_and_upcast() -> None:
    v1 = scan(type="parcel.registered", payload={"action": ..., "node_id": ...,
              "waybill": "ZT7300012345678", "phone": "13812345678", "village": "VIL-XILIU-01",
              "weight_g": 900})
    e = check(v1)
    assert isinstance(e, Envelope) and e.schema_version == 2
    assert e.payload.destination_village == "VIL-XILIU-01"  # type: ignore[attr-defined]


def test_a_rejection_never_echoes_a_phone_number() -> None:
    result = check(registered(recipient_phone="23812345678"))
    assert isinstance(result, Rejection) and "23812345678" not in result.message


# Input edges: instants without a UTC equivalent, the age horizon, and masking.

HORIZON = timedelta(days=30)


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+14:00", "0001-01-01T00:00:00+00:01",
                                   "9999-12-31T23:59:59-14:00", "9999-12-31T23:00:00-01:00"])
@pytest.mark.parametrize("horizon", [None, HORIZON])
def test_given_an_instant_with_no_utc_equivalent_then_that_event_is_invalid_value_at_its_path(
        stamp: str, horizon: timedelta | None) -> None:
    result = validate_event(scan(occurred_at=stamp), index=3, county=COUNTY, permitted_brands=ALL,
                            device_id="d", recorded_at=NOW, max_age=horizon)
    assert isinstance(result, Rejection), result
    assert (result.reason, result.path) == (Reason.invalid_value, "$.events[3].occurred_at")


def test_given_a_scheduled_time_with_no_utc_equivalent_then_invalid_value_at_its_path() -> None:
    result = check(vehicle(scheduled_at="0001-01-01T00:00:00+14:00"))
    assert isinstance(result, Rejection), result
    assert (result.reason, result.path) == (Reason.invalid_value, "$.events[3].payload.scheduled_at")


def test_given_a_batch_with_one_unconvertible_instant_then_only_that_event_is_rejected() -> None:
    out = batch([scan(event_id="0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a11",
                      occurred_at="0001-01-01T00:00:00+14:00"), scan()])
    assert isinstance(out[0], Rejection) and isinstance(out[1], Envelope)


def horizon_check(occurred: datetime) -> Envelope | Rejection:
    return validate_event(scan(occurred_at=occurred.isoformat()), index=3, county=COUNTY,
                          permitted_brands=ALL, device_id="d", recorded_at=NOW, max_age=HORIZON)


def test_given_an_event_exactly_at_the_horizon_then_accepted_one_second_older_too_old() -> None:
    assert isinstance(horizon_check(NOW - HORIZON), Envelope)
    older = horizon_check(NOW - HORIZON - timedelta(seconds=1))
    assert isinstance(older, Rejection)
    assert (older.reason, older.path) == (Reason.too_old, "$.events[3].occurred_at")
    assert "30 days" in older.message


def test_given_no_horizon_then_an_old_event_is_accepted() -> None:
    assert isinstance(check(scan(occurred_at="2020-01-01T00:00:00+08:00")), Envelope)


@pytest.mark.parametrize("text, hidden", [
    ("13812345678", "13812345678"), ("id-13812345678-x", "13812345678"),
    ("１３８１２３４５６７８", "１３８１２３４５６７８"), ("١٣٨١٢٣٤٥٦٧٨", "١٣٨١٢٣٤٥٦٧٨"),
    ("$.events[0].payload.8613812345678", "8613812345678"), ("1234567", "1234567"),
])
def test_given_a_phone_like_run_then_masking_hides_it(text: str, hidden: str) -> None:
    masked = mask_digit_runs(text)
    assert hidden not in masked and "****" in masked


def test_given_short_digit_runs_then_masking_leaves_them() -> None:
    assert mask_digit_runs("$.events[12].payload.node_id 123456") == "$.events[12].payload.node_id 123456"


def test_given_a_canonical_id_with_mobile_like_digits_then_only_a_refused_one_is_masked() -> None:
    from api.routes.ingest import EventResult

    canonical = "0193b6c4-6f1e-7cc2-9a55-013812345678"  # about 1 random UUID in 1,200 looks so
    for status in ("accepted", "duplicate", "conflict"):
        assert EventResult(index=0, event_id=canonical, status=status).event_id == canonical
    refused = EventResult(index=0, event_id=canonical, status="rejected").event_id
    assert refused is not None and "13812345678" not in refused


def test_given_phone_digits_in_an_unknown_key_or_bad_id_then_the_message_masks_them() -> None:
    for raw in (scan(x13812345678=1), scan(event_id="13812345678"),
                scan(payload={"13812345678": "x"}), scan(type="13812345678")):
        result = check(raw)
        assert isinstance(result, Rejection) and "13812345678" not in result.message
