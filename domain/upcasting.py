"""Upcasters: pure functions that lift a payload from one schema version to the next."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain.events import CURRENT_VERSION

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _registered_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # v2 names the recipient and the destination explicitly and adds optional dimensions.
    out = {k: v for k, v in p.items() if k not in ("phone", "village")}
    out["recipient_phone"] = p["phone"]
    out["destination_village"] = p["village"]
    return out


UPCASTERS: dict[tuple[str, int], Upcaster] = {
    ("parcel.registered", 1): _registered_v1_to_v2,
}


def upcast(event_type: str, version: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Apply the chain of upcasters up to the current version of `event_type`."""
    current = CURRENT_VERSION[event_type]
    while version < current:
        payload = UPCASTERS[(event_type, version)](payload)
        version += 1
    return version, payload
