"""The envelope: one spelling per event id, aware clocks, a payload that matches its type."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from domain.envelope import BRANDS, Envelope, normalise_event_id
from domain.events import ParcelScanned

GOLDEN = Path(__file__).parents[1] / "fixtures" / "events"


def golden(name: str) -> dict[str, Any]:
    return orjson.loads((GOLDEN / f"{name}.json").read_bytes())


def test_the_eight_brands_of_the_network() -> None:
    assert BRANDS == ("EMS", "ZTO", "YTO", "STO", "YUNDA", "JT", "SF", "JD")


@pytest.mark.parametrize("raw, canonical", [
    ("0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10", "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10"),
    ("0193B6C4-6F1E-7CC2-9A55-3C1F0E6F2A10", "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10"),
    ("9f1c2b3a-0000-4000-8000-000000000001", "9f1c2b3a-0000-4000-8000-000000000001"),  # v4
    ("01jdk7qwz8x3v5m2n4p6r8t0ya", "01JDK7QWZ8X3V5M2N4P6R8T0YA"),
    ("7ZZZZZZZZZZZZZZZZZZZZZZZZZ", "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"),  # the largest ULID
])
def test_given_a_uuid_or_ulid_then_it_is_normalised(raw: str, canonical: str) -> None:
    assert normalise_event_id(raw) == canonical


@pytest.mark.parametrize("raw", [
    "0193b6c46f1e7cc29a553c1f0e6f2a10",            # no hyphens
    "{0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a1}",        # braces
    "0193b6c4-6f1e7cc2-9a55-3c1f0e6f2a10-",         # hyphens out of place
    "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10\n",      # trailing newline
    "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2g10",         # not hex
    "8ZZZZZZZZZZZZZZZZZZZZZZZZZ",                   # overflows 128 bits
    "01JDK7QWZ8X3V5M2N4P6R8T0YU",                   # U is not Crockford base32
    "01JDK7QWZ8X3V5M2N4P6R8T0Y",                    # 25 characters
    "",
])
def test_given_anything_else_then_it_is_not_an_event_id(raw: str) -> None:
    assert normalise_event_id(raw) is None


def envelope(**over: Any) -> Envelope:
    fields: dict[str, Any] = {
        "event_id": "0193B6C4-6F1E-7CC2-9A55-3C1F0E6F2A10", "type": "parcel.scanned",
        "schema_version": 1, "occurred_at": datetime(2026, 11, 11, 9, 15, tzinfo=timezone(timedelta(hours=8))),
        "recorded_at": datetime(2026, 11, 11, 1, 20, tzinfo=UTC), "device_id": "pda-1",
        "brand": "ZTO", "operator_id": "op-1",
        "payload": {"waybill": "ZT7300012345678", "action": "arrived", "node_id": "TWN-XILIU"}}
    return Envelope(**{**fields, **over})


def test_given_a_dict_payload_then_it_is_typed_by_type_and_version() -> None:
    e = envelope()
    assert isinstance(e.payload, ParcelScanned)
    assert e.event_id == "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10"


def test_given_a_naive_device_time_then_the_envelope_refuses_it() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        envelope(occurred_at=datetime(2026, 11, 11, 9, 15))


def test_given_a_payload_of_another_type_then_the_envelope_refuses_it() -> None:
    scan = envelope().payload
    with pytest.raises(ValidationError, match="does not belong to 'parcel.sorted'"):
        envelope(type="parcel.sorted", payload=scan)
    with pytest.raises(ValidationError, match="no payload model"):
        envelope(type="parcel.teleported")


def test_given_a_malformed_event_id_then_the_envelope_refuses_it() -> None:
    with pytest.raises(ValidationError, match="canonical UUID or a ULID"):
        envelope(event_id="12345")


def test_the_wire_form_keeps_the_device_offset() -> None:
    wire = envelope().to_wire()
    assert wire["occurred_at"] == "2026-11-11T09:15:00+08:00"
    assert wire["recorded_at"] == "2026-11-11T01:20:00+00:00"
    assert Envelope.from_wire(orjson.loads(orjson.dumps(wire))) == envelope()


@pytest.mark.parametrize("name, key", [
    ("parcel.registered.v2", "ZT7300012345678"), ("parcel.sorted.v1", "ZT7300012345678"),
    ("sms.requested.v1", "5b0e6f0a-3c1d-5e2f-8a4b-9c7d6e5f4a31"),
    ("sms.failed.v1", "5b0e6f0a-3c1d-5e2f-8a4b-9c7d6e5f4a31"),
    ("parcel.pickup_assigned.v1", "ZT7300012345678"),
    ("consent.recorded.v1", "ZT7300012345678"), ("vehicle.arrived.v1", "T-20261111-R-XILIU-AM"),
])
def test_partition_key_keeps_one_parcel_or_one_trip_in_order(name: str, key: str) -> None:
    assert Envelope.from_wire(golden(name)).partition_key == key


def test_sms_payloads_carry_at_most_a_masked_phone() -> None:
    for name in ("sms.requested.v1", "sms.submitted.v1", "sms.delivered.v1", "sms.failed.v1"):
        text = orjson.dumps(golden(name)).decode()
        assert "13812345678" not in text and "phone\"" not in text
    assert golden("sms.requested.v1")["payload"]["phone_masked"] == "138****5678"
