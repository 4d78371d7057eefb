"""Decode once: `Envelope.from_wire` reads the stored form without validating it again, and gives
exactly what full validation gives, for every registered type and version; a body that is not of
the stored shape is refused as full validation refuses it."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, get_args

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

import domain.envelope
from domain.envelope import Envelope
from domain.events import (
    CURRENT_VERSION,
    PAYLOADS,
    REGISTRY,
    StoredPayload,
    current,
    type_name,
)
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.traffic import CountyTraffic, county_time

GOLDEN = Path(__file__).parents[1] / "fixtures" / "events"
SEALED = {"key_id": "0" * 32, "ciphertext": "A" * 52, "masked": "138****5678", "household": "0" * 64}


def goldens() -> list[dict[str, Any]]:
    return [orjson.loads(p.read_bytes()) for p in sorted(GOLDEN.glob("*.json"))]


def stored(upload: dict[str, Any]) -> dict[str, Any]:
    """An uploaded body as the journal holds it: server stamps, the phone sealed."""
    body = {**upload, "recorded_at": upload["occurred_at"], "device_id": "pda-1"}
    if "recipient_phone" in upload["payload"]:
        body["payload"] = {**upload["payload"], "recipient_phone": SEALED}
    return orjson.loads(orjson.dumps(body))


def traffic(seed: int, parcels: int = 40) -> list[dict[str, Any]]:
    """A slice of the load model's day: manifests, every scan of the chain, departures."""
    county = load_county(DEMO_COUNTY)
    t = CountyTraffic(county, seed=seed)
    t0 = county_time(county, datetime(2026, 11, 11, tzinfo=UTC))
    out = [stored(t.register(t0)[1]) for _ in range(parcels)]
    for step in range(8):
        batch = [s for p in t.parcels if (s := t.advance(p, t0 + timedelta(hours=step + 1)))]
        out += [stored(e) for e in t.departures(batch, t0 + timedelta(hours=step + 1)) + batch]
    return out


def shape(value: Any) -> Any:
    """The Python types inside a value (an enum equals its string, a tuple its list: not here)."""
    if isinstance(value, BaseModel):
        return (type(value), {k: shape(v) for k, v in value.__dict__.items()})
    if isinstance(value, tuple | list):
        return (type(value), [shape(v) for v in value])
    if isinstance(value, dict):
        return (dict, {k: shape(v) for k, v in value.items()})
    return type(value)


def same(wire: dict[str, Any]) -> None:
    fast, full = Envelope.from_wire(wire), Envelope.from_wire_validated(wire)
    assert fast == full
    assert shape(fast) == shape(full)
    assert fast.to_wire() == full.to_wire()
    assert fast.model_dump() == full.model_dump()


def test_the_goldens_cover_every_registered_type_and_version() -> None:
    seen = {(w["type"], w["schema_version"]) for w in goldens()}
    assert seen == set(PAYLOADS)


@pytest.mark.parametrize("wire", goldens(), ids=lambda w: f"{w['type']}.v{w['schema_version']}")
def test_given_a_golden_stored_event_then_the_fast_path_equals_full_validation(
        wire: dict[str, Any]) -> None:
    same(wire)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000))
def test_property_the_load_models_events_decode_as_full_validation_decodes_them(seed: int) -> None:
    for wire in traffic(seed, parcels=8):
        same(wire)


def test_given_stored_events_then_no_event_id_is_normalised_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Stored ids are canonical; the ledger spent 12 % of its time normalising them again.
    class Called(Exception):  # pydantic would turn a ValueError or AssertionError into its own
        pass

    def refuse(value: str) -> str | None:
        raise Called(value)

    wires = goldens() + traffic(3, parcels=4)
    monkeypatch.setattr(domain.envelope, "normalise_event_id", refuse)
    for wire in wires:
        Envelope.from_wire(wire)
    with pytest.raises(Called):  # the probe does catch the validated path
        Envelope.from_wire_validated(wires[0])


# --------------------------------------------------------------------- what is refused

def golden(name: str) -> dict[str, Any]:
    return orjson.loads((GOLDEN / f"{name}.json").read_bytes())


@pytest.mark.parametrize("name", ["parcel.registered.v1", "parcel.registered.v2"])
def test_given_a_phone_in_clear_where_the_sealed_one_belongs_then_it_is_refused(name: str) -> None:
    wire = orjson.loads((GOLDEN / "uploads" / f"{name}.json").read_bytes())
    wire = {**wire, "recorded_at": wire["occurred_at"], "device_id": "pda-1"}
    with pytest.raises(ValidationError):
        Envelope.from_wire(wire)


def _without(d: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k != key}


SCAN = golden("parcel.scanned.v1")
MALFORMED: list[tuple[str, dict[str, Any], type[Exception]]] = [
    ("no event_id", _without(SCAN, "event_id"), KeyError),
    ("no payload", _without(SCAN, "payload"), KeyError),
    ("unknown type", {**SCAN, "type": "parcel.teleported"}, KeyError),
    ("unknown version", {**SCAN, "schema_version": 9}, KeyError),
    ("type not a string", {**SCAN, "type": ["parcel.scanned"]}, ValueError),
    ("brand not a string", {**SCAN, "brand": 7}, ValueError),
    ("naive occurred_at", {**SCAN, "occurred_at": "2026-11-11T09:15:32"}, ValueError),
    ("occurred_at not a date", {**SCAN, "occurred_at": "yesterday"}, ValueError),
    ("recorded_at a number", {**SCAN, "recorded_at": 1762824000}, ValueError),
    ("payload a list", {**SCAN, "payload": []}, ValidationError),
    ("payload field missing", {**SCAN, "payload": _without(SCAN["payload"], "node_id")},
     ValidationError),
    ("payload field unknown", {**SCAN, "payload": {**SCAN["payload"], "phone": "13812345678"}},
     ValidationError),
    ("action unknown", {**SCAN, "payload": {**SCAN["payload"], "action": "teleported"}},
     ValidationError),
    ("waybill a number", {**SCAN, "payload": {**SCAN["payload"], "waybill": 7300012345678}},
     ValidationError),
    ("sealed phone without its key", {
        **golden("parcel.registered.v2"), "payload": {
            **golden("parcel.registered.v2")["payload"],
            "recipient_phone": _without(SEALED, "key_id")}}, ValidationError),
    ("scheduled_at naive", {**golden("vehicle.departed.v1"), "payload": {
        **golden("vehicle.departed.v1")["payload"], "scheduled_at": "2026-11-11T08:00:00"}},
     ValidationError),
    ("a parcel of an SMS not an object", {**golden("sms.requested.v1"), "payload": {
        **golden("sms.requested.v1")["payload"], "parcels": ["ZT7300012345678"]}},
     ValidationError),
]


@pytest.mark.parametrize("wire, error", [(w, e) for _, w, e in MALFORMED],
                         ids=[n for n, _, _ in MALFORMED])
def test_given_a_malformed_body_then_a_clear_error_for_the_dead_letters(
        wire: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        Envelope.from_wire(wire)


# Values of every JSON type but the one a field has: each makes the body not of the stored shape.
OTHER_JSON = [None, True, 0, 1.5, "x", [], {}, ["x"], {"x": "y"}]


@settings(max_examples=300, deadline=None)
@given(wire=st.sampled_from(goldens()), data=st.data())
def test_property_a_body_of_another_shape_is_judged_as_full_validation_judges_it(
        wire: dict[str, Any], data: st.DataObject) -> None:
    # Drop a payload field, add one, or give one a value of another JSON type: the fast path
    # must accept exactly when full validation does (equal results), and refuse otherwise.
    body = copy.deepcopy(wire)
    payload = body["payload"]
    how = data.draw(st.sampled_from(["drop", "add", "retype"]))
    if how == "add":
        payload[data.draw(st.sampled_from(["extra", "recorded_at", "phone"]))] = "13812345678"
    else:
        key = data.draw(st.sampled_from(sorted(payload)))
        if how == "drop":
            del payload[key]
        else:
            value = data.draw(st.sampled_from(OTHER_JSON))
            if type(value) is type(payload[key]):
                return
            payload[key] = value
    try:
        full = Envelope.from_wire_validated(body)
    except (ValidationError, KeyError) as refused:  # KeyError: an old version's upcaster
        with pytest.raises(type(refused)):
            Envelope.from_wire(body)
        return
    assert Envelope.from_wire(body) == full


# ----------------------------------------------------------------- the registry is closed

def test_the_registry_names_each_class_once_and_its_union_is_the_stored_models() -> None:
    names = {(t.name, t.version) for t in REGISTRY}
    assert len(names) == len(REGISTRY)
    assert set(get_args(StoredPayload)) == {PAYLOADS[(t, v)] for t, v in CURRENT_VERSION.items()}
    for t in REGISTRY:
        assert type_name(t.stored) == t.name


def test_given_an_old_version_not_upcast_then_readers_refuse_it() -> None:
    v1 = Envelope.from_wire_validated(golden("parcel.registered.v2")).payload
    assert current(v1) is v1
    old = PAYLOADS[("parcel.registered", 1)].model_validate(golden("parcel.registered.v1")["payload"]
                                                            | {"phone": "13812345678"})
    with pytest.raises(ValueError, match="upcast"):
        current(old)
