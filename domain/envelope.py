"""The event envelope: metadata every event carries, around a typed payload."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, SerializeAsAny

from domain.brands import BRANDS
from domain.events import PAYLOADS, Payload
from domain.upcasting import upcast

__all__ = ["BRANDS", "Envelope"]


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
    payload: SerializeAsAny[Payload]

    @property
    def partition_key(self) -> str:
        """The Kafka key: the waybill for parcel, consent and SMS events; the trip for vehicles;
        the period for ledger events."""
        key = (getattr(self.payload, "waybill", None) or getattr(self.payload, "trip_id", None)
               or getattr(self.payload, "period", None))
        assert isinstance(key, str)
        return key

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
        """Read an event back from the journal or Kafka, upcasting old versions."""
        version, payload = upcast(d["type"], int(d["schema_version"]), d["payload"])
        model = PAYLOADS[(d["type"], version)]
        return cls(
            event_id=d["event_id"], type=d["type"], schema_version=version,
            occurred_at=datetime.fromisoformat(d["occurred_at"]),
            recorded_at=datetime.fromisoformat(d["recorded_at"]),
            device_id=d["device_id"], brand=d["brand"], operator_id=d["operator_id"],
            payload=model.model_validate(payload),
        )
