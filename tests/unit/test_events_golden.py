"""Golden files pin every event's wire form, per type and version; old versions upcast."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from domain.envelope import Envelope
from domain.events import CURRENT_VERSION, PAYLOADS
from domain.upcasting import UPCASTERS, upcast

GOLDEN = Path(__file__).parents[1] / "fixtures" / "events"


def golden(event_type: str, version: int) -> dict:
    return orjson.loads((GOLDEN / f"{event_type}.v{version}.json").read_bytes())


def test_every_type_and_version_has_a_golden_file() -> None:
    assert {f"{t}.v{v}.json" for t, v in PAYLOADS} == {p.name for p in GOLDEN.glob("*.json")}


@pytest.mark.parametrize("event_type, version", sorted(PAYLOADS))
def test_given_a_golden_event_when_read_and_written_then_the_wire_form_is_unchanged(
        event_type: str, version: int) -> None:
    wire = golden(event_type, version)
    expected = golden(event_type, CURRENT_VERSION[event_type])
    assert Envelope.from_wire(wire).to_wire() == expected


def test_every_old_version_has_an_upcaster_to_the_next() -> None:
    for event_type, version in PAYLOADS:
        if version < CURRENT_VERSION[event_type]:
            assert (event_type, version) in UPCASTERS


def test_given_a_v1_manifest_when_upcast_then_fields_are_renamed_and_nothing_else_changes() -> None:
    v1 = {"waybill": "ZT7300012345678", "phone": "13812345678", "village": "VIL-XILIU-01",
          "weight_g": 1250}
    version, v2 = upcast("parcel.registered", 1, v1)
    assert version == 2
    assert v2 == {"waybill": "ZT7300012345678", "recipient_phone": "13812345678",
                  "destination_village": "VIL-XILIU-01", "weight_g": 1250}
    assert v1["phone"] == "13812345678"  # the input is not mutated


def test_partition_key_is_the_waybill_for_parcels_and_the_trip_for_vehicles() -> None:
    assert Envelope.from_wire(golden("parcel.scanned", 1)).partition_key == "ZT7300012345678"
    assert Envelope.from_wire(golden("vehicle.departed", 1)).partition_key == "T-20261111-R-XILIU-AM"


def test_envelopes_are_frozen() -> None:
    e = Envelope.from_wire(golden("parcel.scanned", 1))
    with pytest.raises(ValidationError):
        e.brand = "SF"  # type: ignore[misc]


UPLOADS_DIR = GOLDEN / "uploads"


@pytest.mark.parametrize("name", ["parcel.registered.v1.json", "parcel.registered.v2.json"])
def test_given_a_manifest_with_its_phone_in_clear_when_read_as_stored_then_it_is_refused(
        name: str) -> None:
    # The upload form is never a stored form: a plain phone in the journal or on Kafka is a bug.
    with pytest.raises(ValidationError):
        Envelope.from_wire(orjson.loads((UPLOADS_DIR / name).read_bytes()))


def test_given_the_golden_sealed_phone_then_its_golden_data_key_opens_it_for_its_waybill_only() -> None:
    from cryptography.exceptions import InvalidTag

    from infra.pii import decrypt_phone

    phone = Envelope.from_wire(golden("parcel.registered", 2)).payload.recipient_phone  # type: ignore[attr-defined]
    data_key = bytes(range(32))  # the golden file was made with this key
    assert decrypt_phone(data_key, phone.ciphertext, phone.key_id, "ZT7300012345678") == "13812345678"
    with pytest.raises(InvalidTag):
        decrypt_phone(data_key, phone.ciphertext, phone.key_id, "ZT7300099999999")
