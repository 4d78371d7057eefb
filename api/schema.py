"""The ingest contract as JSON Schema, generated from the domain's event models."""

from __future__ import annotations

from functools import cache
from typing import Any

from domain.envelope import BRANDS
from domain.events import CURRENT_VERSION, UPLOADS


@cache
def scan_batch_schema() -> dict[str, Any]:
    """A batch: {"events": [envelope, …]} with one envelope variant per current event type."""
    defs: dict[str, Any] = {}
    variants = []
    for event_type, version in sorted(CURRENT_VERSION.items()):
        # The upload form (phones in clear): what a device sends, not what the journal stores.
        payload = UPLOADS[(event_type, version)].model_json_schema(
            ref_template="#/$defs/{model}")
        defs.update(payload.pop("$defs", {}))
        name = event_type.replace(".", "_")
        defs[name] = {
            "type": "object", "additionalProperties": False,
            "required": ["event_id", "type", "schema_version", "occurred_at", "brand",
                         "operator_id", "payload"],
            "properties": {
                "event_id": {"type": "string", "description": "UUID (v7 preferred) or ULID, "
                             "generated on the device; the idempotency key forever"},
                "type": {"const": event_type},
                "schema_version": {"const": version},
                "occurred_at": {"type": "string", "format": "date-time",
                                "description": "device time, ISO-8601 with a UTC offset"},
                "brand": {"enum": list(BRANDS)},
                "operator_id": {"type": "string", "minLength": 1, "maxLength": 64},
                "payload": payload,
            },
        }
        variants.append({"$ref": f"#/$defs/{name}"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Gongpei scan batch",
        "type": "object", "additionalProperties": False, "required": ["events"],
        "properties": {"events": {"type": "array", "minItems": 1, "maxItems": 500,
                                  "items": {"oneOf": variants}}},
        "$defs": defs,
    }
