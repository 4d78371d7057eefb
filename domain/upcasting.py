"""Upcasters: pure functions that lift a payload from one schema version to the next."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from domain.events import CURRENT_VERSION, REGISTRY, ParcelRegisteredV1, Payload

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


def _registered_v1_to_v2(p: dict[str, Any]) -> dict[str, Any]:
    # v2 names the recipient and the destination explicitly and adds optional dimensions.
    out = {k: v for k, v in p.items() if k not in ("phone", "village")}
    out["recipient_phone"] = p["phone"]
    out["destination_village"] = p["village"]
    return out


# One per old version's model: it lifts a payload of that model to the next version of its type.
LIFTS: dict[type[Payload], Upcaster] = {
    ParcelRegisteredV1: _registered_v1_to_v2,
}
# The same, by (type, version) as the wire names them (from the registry).
UPCASTERS: dict[tuple[str, int], Upcaster] = {
    (t.name, t.version): LIFTS[t.stored] for t in REGISTRY if t.stored in LIFTS}


def upcast(event_type: str, version: int, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Apply the chain of upcasters up to the current version of `event_type`."""
    current = CURRENT_VERSION[event_type]
    while version < current:
        payload = UPCASTERS[(event_type, version)](payload)
        version += 1
    return version, payload
