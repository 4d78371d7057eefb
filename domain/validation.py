"""The ingest contract: turn one raw uploaded event into an Envelope or a precise Rejection."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ValidationError

from domain.brands import BRANDS
from domain.county import County
from domain.envelope import Envelope, normalise_event_id
from domain.events import (
    CURRENT_VERSION,
    NODE_FIELDS,
    UPLOADS,
    ParcelHandedIn,
    ParcelScanned,
    ScanAction,
)
from domain.redact import mask_digit_runs
from domain.upcasting import upcast


class Reason(StrEnum):
    """Why an uploaded event was refused; the wire value is the name."""

    not_an_object = "not_an_object"
    missing_field = "missing_field"
    wrong_type = "wrong_type"
    invalid_value = "invalid_value"
    invalid_event_id = "invalid_event_id"
    naive_timestamp = "naive_timestamp"
    unknown_type = "unknown_type"
    unsupported_version = "unsupported_version"
    unknown_action = "unknown_action"
    unknown_node = "unknown_node"
    node_wrong_tier = "node_wrong_tier"
    unknown_brand = "unknown_brand"
    brand_not_permitted = "brand_not_permitted"
    type_not_permitted = "type_not_permitted"
    duplicate_in_batch = "duplicate_in_batch"
    unknown_field = "unknown_field"
    # Ownership between brands (domain/ownership.py), decided against the stored owners.
    waybill_owned_by_other_brand = "waybill_owned_by_other_brand"
    waybill_not_registered = "waybill_not_registered"
    consent_not_permitted = "consent_not_permitted"
    waybill_pattern_mismatch = "waybill_pattern_mismatch"
    too_old = "too_old"


@dataclass(frozen=True)
class Rejection:
    """One refused event: the reason, where (a JSON path) and a message naming field and cause."""

    reason: Reason
    path: str  # JSON path of the offending field, e.g. $.events[3].payload.node_id
    message: str


ENVELOPE_FIELDS = ("event_id", "type", "schema_version", "occurred_at", "brand", "operator_id",
                   "payload")
SERVER_FIELDS = ("recorded_at", "device_id")
# A device clock this far ahead of the server is wrong, not early.
MAX_CLOCK_AHEAD = timedelta(hours=24)
_OPERATOR = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class _Reject(Exception):
    def __init__(self, reason: Reason, path: str, message: str) -> None:
        self.rejection = Rejection(reason, path, message)


def _quote(value: str, limit: int = 64) -> str:
    """An uploaded value fit to echo in a message: cut short, and any run of 7+ digits masked,
    because a device may put a phone number in any field."""
    return mask_digit_runs(value[:limit])


def _typed(raw: dict[str, Any], key: str, kind: type, base: str) -> Any:
    if key not in raw:
        raise _Reject(Reason.missing_field, f"{base}.{key}", f"'{key}' is required")
    value = raw[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _Reject(Reason.wrong_type, f"{base}.{key}",
                      f"'{key}' must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _pydantic_rejection(err: ValidationError, base: str) -> _Reject:
    """Map the first pydantic error onto a Reason, with the exact JSON path of the field."""
    first = err.errors()[0]
    path = base + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
    field = _quote(path[len(base) + 1:]) or "payload"
    kind, msg = first["type"], _quote(first["msg"], 200)
    if kind == "missing":
        return _Reject(Reason.missing_field, path, f"'{field}' is required")
    if kind == "extra_forbidden":
        return _Reject(Reason.unknown_field, path, f"'{field}' is not a field of this event type")
    if kind == "enum" and not isinstance(first.get("input"), str):
        return _Reject(Reason.wrong_type, path, f"'{field}' must be a string: {msg}")
    if field == "action" and kind == "enum":
        allowed = ", ".join(a.value for a in ScanAction)
        return _Reject(Reason.unknown_action, path,
                       f"'action' {_quote(first['input'], 32)!r} is not one of: {allowed}")
    if kind == "timezone_aware":
        return _Reject(Reason.naive_timestamp, path,
                       f"'{field}' has no UTC offset (e.g. +08:00); it is ambiguous without it")
    if kind.endswith("_type") or kind in ("is_instance_of", "model_type", "dict_type"):
        return _Reject(Reason.wrong_type, path, f"'{field}': {msg}")
    return _Reject(Reason.invalid_value, path, f"'{field}': {msg}")


def _check_age(occurred_at: datetime, recorded_at: datetime, max_age: timedelta | None,
               path: str) -> None:
    try:
        # Year 1 at +14:00 or year 9999 at -14:00 parse but have no UTC instant Python can hold;
        # the journal and every reader convert to UTC, so the event must be refused here.
        occurred_at.astimezone(UTC)
    except OverflowError:
        raise _Reject(Reason.invalid_value, path, "'occurred_at' is outside the calendar once"
                      " converted to UTC: check the device clock") from None
    ahead = occurred_at - recorded_at
    if ahead > MAX_CLOCK_AHEAD:
        raise _Reject(Reason.invalid_value, path,
                      "'occurred_at' is more than 24 h ahead of the server: check the device clock")
    if max_age is not None and -ahead > max_age:
        raise _Reject(Reason.too_old, path,
                      f"'occurred_at' is more than {_days(max_age)} before the server received it;"
                      " events that old are refused (ask the county centre to enter them)")


def _check_instants(parsed: BaseModel, base: str) -> None:
    """Every date-time in the payload must have a UTC instant (as `occurred_at` must): readers
    convert them, and an OverflowError there would poison a projection."""
    for name, value in parsed:
        if isinstance(value, datetime):
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise _Reject(Reason.invalid_value, f"{base}.{name}", f"'{name}' is outside the"
                              " calendar once converted to UTC") from None


def _days(span: timedelta) -> str:
    return f"{span.days} days" if span.days != 1 else "1 day"


def _check_nodes(payload: dict[str, Any], county: County, base: str) -> None:
    for key, tier in NODE_FIELDS.items():
        node_id = payload.get(key)
        if node_id is None:
            continue
        node = county.nodes.get(node_id)
        if node is None:
            raise _Reject(Reason.unknown_node, f"{base}.{key}",
                          f"'{_quote(node_id)}' is not a node of {county.name} ({county.code})")
        if tier is not None and node.tier != tier:
            raise _Reject(Reason.node_wrong_tier, f"{base}.{key}",
                          f"'{node_id}' is a {node.tier} ({node.name}), not a {tier}")


def _check_scan(scan: ParcelScanned, base: str) -> None:
    action = scan.action
    if action == ScanAction.problem and not scan.problem_reason:
        raise _Reject(Reason.missing_field, f"{base}.problem_reason",
                      "a 'problem' scan needs a 'problem_reason'")
    if action != ScanAction.problem and scan.problem_reason is not None:
        raise _Reject(Reason.invalid_value, f"{base}.problem_reason",
                      "'problem_reason' belongs to 'problem' scans only")
    if action != ScanAction.stored and scan.pickup_code is not None:
        raise _Reject(Reason.invalid_value, f"{base}.pickup_code",
                      "'pickup_code' belongs to 'stored' scans only")


def _validate(raw: object, base: str, county: County, permitted_brands: frozenset[str],
              permitted_types: frozenset[str] | None, device_id: str,
              recorded_at: datetime, max_age: timedelta | None) -> Envelope:
    if not isinstance(raw, dict):
        raise _Reject(Reason.not_an_object, base, f"an event must be a JSON object, got {type(raw).__name__}")
    for key in raw:
        if key in SERVER_FIELDS:
            raise _Reject(Reason.unknown_field, f"{base}.{key}",
                          f"'{key}' is set by the server, not by the device: leave it out")
        if key not in ENVELOPE_FIELDS:
            raise _Reject(Reason.unknown_field, f"{base}.{key}", f"'{_quote(key)}' is not an envelope field; allowed: {', '.join(ENVELOPE_FIELDS)}")
    raw_id = _typed(raw, "event_id", str, base)
    event_id = normalise_event_id(raw_id)
    if event_id is None:
        raise _Reject(Reason.invalid_event_id, f"{base}.event_id",
                      f"'event_id' {_quote(raw_id)!r} is neither a canonical UUID (v7 preferred, "
                      "8-4-4-4-12 hex) nor a 26-character ULID")
    event_type = _typed(raw, "type", str, base)
    if event_type not in CURRENT_VERSION:
        raise _Reject(Reason.unknown_type, f"{base}.type",
                      f"unknown type '{_quote(event_type)}'; known: {', '.join(sorted(CURRENT_VERSION))}")
    if permitted_types is not None and event_type not in permitted_types:
        raise _Reject(Reason.type_not_permitted, f"{base}.type",
                      f"this token may not emit '{event_type}' events")
    version = _typed(raw, "schema_version", int, base)
    if (event_type, version) not in UPLOADS:
        known = sorted(v for t, v in UPLOADS if t == event_type)
        raise _Reject(Reason.unsupported_version, f"{base}.schema_version",
                      f"'{event_type}' has no schema_version {version}; supported: {known}")
    stamp = _typed(raw, "occurred_at", str, base)
    try:
        # CPython's parser stops at a NUL ("…09:15:32\x00+08:00" parses): a date-time is
        # printable ASCII, and anything else is refused before it is parsed.
        if not (stamp.isascii() and stamp.isprintable()):
            raise ValueError(stamp)
        occurred_at = datetime.fromisoformat(stamp)
    except ValueError:
        raise _Reject(Reason.invalid_value, f"{base}.occurred_at",
                      "'occurred_at' must be an ISO-8601 date-time with a UTC offset") from None
    if occurred_at.tzinfo is None or occurred_at.utcoffset() is None:
        raise _Reject(Reason.naive_timestamp, f"{base}.occurred_at",
                      "'occurred_at' has no UTC offset (e.g. +08:00); device time is ambiguous without it")
    _check_age(occurred_at, recorded_at, max_age, f"{base}.occurred_at")
    brand = _typed(raw, "brand", str, base)
    if brand not in BRANDS:
        raise _Reject(Reason.unknown_brand, f"{base}.brand",
                      f"unknown brand '{_quote(brand, 16)}'; known: {', '.join(BRANDS)}")
    if brand not in permitted_brands:
        raise _Reject(Reason.brand_not_permitted, f"{base}.brand",
                      f"this token is not registered for brand {brand}")
    operator_id = _typed(raw, "operator_id", str, base)
    if not _OPERATOR.fullmatch(operator_id):
        raise _Reject(Reason.invalid_value, f"{base}.operator_id",
                      "'operator_id' must be 1–64 of A–Z a–z 0–9 . _ : -")
    payload = _typed(raw, "payload", dict, base)
    pbase = f"{base}.payload"
    try:
        parsed = UPLOADS[(event_type, version)].model_validate(payload)
    except ValidationError as err:
        raise _pydantic_rejection(err, pbase) from None
    _check_instants(parsed, pbase)
    _check_nodes(payload, county, pbase)
    if isinstance(parsed, ParcelScanned):
        _check_scan(parsed, pbase)
    if isinstance(parsed, ParcelHandedIn) and parsed.perishable is not None \
            and parsed.perishable not in county.perishables:
        classes = ", ".join(county.perishables) or "none"
        raise _Reject(Reason.invalid_value, f"{pbase}.perishable",
                      f"'perishable' {_quote(parsed.perishable, 32)!r} is not a class of this"
                      f" county's [perishables] (known: {classes}); send null if not perishable")
    current, lifted = upcast(event_type, version, payload)
    return Envelope(
        event_id=event_id, type=event_type, schema_version=current, occurred_at=occurred_at,
        recorded_at=recorded_at, device_id=device_id, brand=brand, operator_id=operator_id,
        payload=UPLOADS[(event_type, current)].model_validate(lifted),  # sealed at ingest
    )


def validate_event(raw: object, *, index: int, county: County, permitted_brands: frozenset[str],
                   device_id: str, recorded_at: datetime,
                   permitted_types: frozenset[str] | None = None,
                   max_age: timedelta | None = None) -> Envelope | Rejection:
    """Validate one uploaded event (at `$.events[index]`) against the contract and the county;
    `permitted_types` (None: all) are the event types the uploading token may emit; an event that
    happened more than `max_age` (None: no horizon) before `recorded_at` is `too_old`."""
    try:
        return _validate(raw, f"$.events[{index}]", county, permitted_brands, permitted_types,
                         device_id, recorded_at, max_age)
    except _Reject as r:
        return r.rejection


def validate_batch(raw_events: list[Any], *, county: County, permitted_brands: frozenset[str],
                   device_id: str, recorded_at: datetime,
                   permitted_types: frozenset[str] | None = None,
                   max_age: timedelta | None = None) -> list[Envelope | Rejection]:
    """Validate a batch. An event_id seen earlier in the batch (in any spelling, accepted or not)
    is `duplicate_in_batch`: one id names one event, so a second copy is never a correction."""
    first_at: dict[str, int] = {}
    out: list[Envelope | Rejection] = []
    for i, raw in enumerate(raw_events):
        event_id = _raw_event_id(raw)
        if event_id is not None and event_id in first_at:
            out.append(Rejection(Reason.duplicate_in_batch, f"$.events[{i}].event_id",
                                 f"event_id {event_id} already appears at "
                                 f"$.events[{first_at[event_id]}] in this batch"))
            continue
        if event_id is not None:
            first_at[event_id] = i
        out.append(validate_event(raw, index=i, county=county, permitted_brands=permitted_brands,
                                  device_id=device_id, recorded_at=recorded_at,
                                  permitted_types=permitted_types, max_age=max_age))
    return out


def _raw_event_id(raw: object) -> str | None:
    if isinstance(raw, dict) and isinstance(raw.get("event_id"), str):
        return normalise_event_id(raw["event_id"])
    return None
