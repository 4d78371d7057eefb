"""The event envelope: metadata every event carries, around a typed payload."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, assert_never

import orjson
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    SerializeAsAny,
    field_validator,
    model_validator,
)

from domain.brands import BRANDS
from domain.events import (
    CURRENT_VERSION,
    PAYLOADS,
    UNSEALED,
    UPLOADS,
    ConsentRecorded,
    ParcelHandedIn,
    ParcelRegistered,
    ParcelRegisteredUpload,
    ParcelRegisteredV1,
    ParcelScanned,
    ParcelSorted,
    Payload,
    PeriodClosed,
    PickupAssigned,
    SmsDelivered,
    SmsFailed,
    SmsRequested,
    SmsSubmitted,
    VehicleArrived,
    VehicleDeparted,
    current,
)
from domain.upcasting import upcast
from domain.wire import build, reader

__all__ = ["BRANDS", "Envelope", "content_digest", "normalise_event_id"]

# Canonical hyphenated UUID only: uuid.UUID() alone would also take braces, "urn:uuid:" and
# hyphens in any place, and two spellings of one id would defeat idempotency.
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# Crockford base32 (no I, L, O, U); a first character above 7 would overflow 128 bits. ASCII:
# Unicode case folding lets the Kelvin sign (U+212A) pass for K and stay in the "canonical" id.
_ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$", re.IGNORECASE | re.ASCII)


def normalise_event_id(value: str) -> str | None:
    """The canonical form of a UUID (lowercase) or ULID (uppercase); None if it is neither."""
    if _UUID.fullmatch(value):
        return value.lower()
    if _ULID.fullmatch(value):
        return value.upper()
    return None


class Envelope(BaseModel):
    """One immutable event. Two clocks: `occurred_at` (device, with offset) and `recorded_at`
    (stamped by the server when it heard of it); `device_id` comes from the device's token."""

    model_config = ConfigDict(frozen=True)

    event_id: str
    type: str
    schema_version: int
    occurred_at: AwareDatetime
    recorded_at: AwareDatetime
    device_id: str
    brand: str
    operator_id: str
    # Typed as the base class so readers narrow it themselves: `match stored(e.payload)` over the
    # closed union (domain/events.py), ending in assert_never.
    payload: SerializeAsAny[Payload]

    @field_validator("event_id")
    @classmethod
    def _canonical_id(cls, v: str) -> str:
        canonical = normalise_event_id(v)
        if canonical is None:
            raise ValueError("event_id must be a canonical UUID or a ULID")
        return canonical

    @model_validator(mode="before")
    @classmethod
    def _typed_payload(cls, data: Any) -> Any:
        # A payload given as a dict is validated by the model of its (type, schema_version).
        if isinstance(data, dict) and isinstance(data.get("payload"), dict):
            event_type, version = data.get("type"), data.get("schema_version")
            model = (PAYLOADS.get((event_type, version))
                     if isinstance(event_type, str) and isinstance(version, int) else None)
            if model is None:
                raise ValueError(f"no payload model for {data.get('type')!r} "
                                 f"v{data.get('schema_version')!r}")
            data = {**data, "payload": model.model_validate(data["payload"])}
        return data

    @model_validator(mode="after")
    def _payload_matches_type(self) -> Envelope:
        # The payload's class must be the one registered for this type and version (stored or,
        # before sealing, uploaded), or the wire form would claim one shape and carry another.
        key = (self.type, self.schema_version)
        model = PAYLOADS.get(key)
        if model is None or type(self.payload) not in (model, UPLOADS[key]):
            raise ValueError(f"payload {type(self.payload).__name__} does not belong to "
                             f"{self.type!r} v{self.schema_version}")
        return self

    @property
    def unsealed(self) -> bool:
        """True while the payload is an upload form holding a phone in clear: such an envelope
        may be validated and sealed, never journalled or published."""
        return type(self.payload) in UNSEALED

    @property
    def partition_key(self) -> str:
        """The Kafka key: the waybill for parcel and consent events; the trip for vehicles; the
        period for ledger events; the message id for SMS events (never the phone)."""
        if isinstance(self.payload, ParcelRegisteredV1):
            return self.payload.waybill  # an old manifest, validated before its upcast
        p = current(self.payload)
        match p:
            case (ParcelRegistered(waybill=key) | ParcelRegisteredUpload(waybill=key)
                  | ParcelScanned(waybill=key)
                  | ParcelSorted(waybill=key) | PickupAssigned(waybill=key)
                  | ConsentRecorded(waybill=key) | ParcelHandedIn(waybill=key)):
                return key
            case VehicleDeparted(trip_id=key) | VehicleArrived(trip_id=key):
                return key
            case PeriodClosed(period=key):
                return key
            case (SmsRequested(sms_id=key) | SmsSubmitted(sms_id=key) | SmsDelivered(sms_id=key)
                  | SmsFailed(sms_id=key)):
                return key
            case _:
                assert_never(p)

    def to_wire(self) -> dict[str, Any]:
        """The JSON-able wire form, as stored in the journal and published to Kafka."""
        return {
            "event_id": self.event_id, "type": self.type, "schema_version": self.schema_version,
            "occurred_at": self.occurred_at.isoformat(), "recorded_at": self.recorded_at.isoformat(),
            "device_id": self.device_id, "brand": self.brand, "operator_id": self.operator_id,
            "payload": self.payload.model_dump(mode="json", exclude_none=True),
        }

    @classmethod
    def from_wire(cls, d: dict[str, Any]) -> Envelope:
        """Read an event back from the journal or Kafka, upcasting old versions, without
        validating again what ingest validated (domain/wire.py): the shape is checked, a phone
        in clear where a sealed one belongs is refused (pydantic's ValidationError), a missing
        field is a KeyError, a wrong one a ValueError. The event id is stored canonical."""
        event_type, version, body = d["type"], d["schema_version"], d["payload"]
        if type(event_type) is not str:
            raise ValueError(f"'type' must be a string, got {type(event_type).__name__}")
        if type(version) is not int:
            version = int(version)
        current = _READERS.get(event_type)
        if current is None:
            raise KeyError(f"no payload model for {event_type!r}")
        if version != current[0]:
            if not isinstance(body, dict):
                raise KeyError(f"no payload model for {event_type!r} v{version!r}")
            version, body = upcast(event_type, version, body)
            if version != current[0]:  # a version above the current one
                raise KeyError(f"no payload model for {event_type!r} v{version!r}")
        event_id, device_id, brand, operator_id, occurred_at, recorded_at = (
            d["event_id"], d["device_id"], d["brand"], d["operator_id"], d["occurred_at"],
            d["recorded_at"])
        if (type(event_id) is not str or type(device_id) is not str or type(brand) is not str
                or type(operator_id) is not str or type(occurred_at) is not str
                or type(recorded_at) is not str):
            raise ValueError("'event_id', 'device_id', 'brand', 'operator_id', 'occurred_at' and"
                             " 'recorded_at' must be strings")
        occurred_at, recorded_at = _iso(occurred_at), _iso(recorded_at)
        if occurred_at.tzinfo is None or recorded_at.tzinfo is None:
            raise ValueError("'occurred_at' and 'recorded_at' need their UTC offset")
        return build(cls, {
            "event_id": event_id, "type": event_type, "schema_version": version,
            "occurred_at": occurred_at, "recorded_at": recorded_at,
            "device_id": device_id, "brand": brand, "operator_id": operator_id,
            "payload": current[1](body)}, set(_FIELDS))

    @classmethod
    def from_wire_validated(cls, d: dict[str, Any]) -> Envelope:
        """`from_wire` with full pydantic validation of every field (the event id normalised
        too): what every reader paid per event before decode-once; kept to check the fast path
        against and to measure it by."""
        version, payload = upcast(d["type"], int(d["schema_version"]), d["payload"])
        model = PAYLOADS[(d["type"], version)]
        return cls(
            event_id=d["event_id"], type=d["type"], schema_version=version,
            occurred_at=datetime.fromisoformat(d["occurred_at"]),
            recorded_at=datetime.fromisoformat(d["recorded_at"]),
            device_id=d["device_id"], brand=d["brand"], operator_id=d["operator_id"],
            payload=model.model_validate(payload),
        )


_FIELDS = tuple(Envelope.model_fields)
_iso = datetime.fromisoformat
# Per type: its current version and the reader of that version's stored payload.
_READERS: dict[str, tuple[int, Callable[[object], Payload]]] = {
    t: (v, reader(PAYLOADS[(t, v)])) for t, v in CURRENT_VERSION.items()}


# Server stamps: a re-send carries new ones and is still the same event.
_NOT_CONTENT = ("recorded_at", "device_id")


def content_digest(wire: dict[str, Any],
                   phone_ref: Callable[[object], object] = lambda v: v) -> bytes:
    """What makes two uploads under one event_id the same event: everything the device sent, the
    time as an instant (an offset spelled differently is the same moment). `phone_ref` replaces a
    phone by a keyed reference, so that the digest is no unkeyed hash of a phone number."""
    body = {k: v for k, v in wire.items() if k not in _NOT_CONTENT}
    body["occurred_at"] = datetime.fromisoformat(wire["occurred_at"]).astimezone(UTC).isoformat()
    payload = dict(body["payload"])
    for key in ("recipient_phone", "phone"):
        if key in payload:
            payload[key] = phone_ref(payload[key])
    body["payload"] = payload
    return hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
