"""Bad input gets a precise 4xx (which event, which field, why) and changes nothing accepted."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from entrypoints.platform import Platform
from loadtest.traffic import event_id
from tests.conftest import bearer, db_fetch


def scan(**overrides: Any) -> dict[str, Any]:
    event: dict[str, Any] = {"event_id": event_id(), "type": "parcel.scanned", "schema_version": 1,
             "occurred_at": "2026-11-11T09:15:32+08:00", "brand": "ZTO", "operator_id": "op-8812",
             "payload": {"waybill": "ZT7300012345678", "action": "arrived", "node_id": "TWN-XILIU"}}
    payload = overrides.pop("payload", {})
    event.update(overrides)
    event["payload"] = {**event["payload"], **payload}
    return event


def post(client: httpx.Client, token: str, body: Any = None, raw: bytes | None = None,
         headers: dict[str, str] | None = None) -> httpx.Response:
    h = {**bearer(token), "content-type": "application/json", **(headers or {})}
    if raw is None:
        import orjson

        raw = orjson.dumps(body)
    return client.post("/v1/scan-batches", content=raw, headers=h)


@pytest.mark.parametrize("body_bytes, status, code, path", [
    (b"{not json", 400, "invalid_json", "$"),
    (b"[]", 422, "wrong_type", "$"),
    (b'{"events": {}}', 422, "wrong_type", "$.events"),
    (b'{"events": []}', 422, "invalid_value", "$.events"),
    (b'{"evnts": []}', 422, "unknown_field", "$.evnts"),
    (b"{}", 422, "missing_field", "$.events"),
])
def test_given_a_malformed_body_then_a_precise_4xx(
        client: httpx.Client, tokens: dict[str, str], body_bytes: bytes, status: int, code: str,
        path: str) -> None:
    r = post(client, tokens["scanner"], raw=body_bytes)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code and r.json()["error"]["path"] == path


def test_given_an_integer_beyond_64_bits_then_that_event_is_rejected_as_wrong_type(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    import orjson

    raw = orjson.dumps({"events": [scan(schema_version=0)]}).replace(
        b'"schema_version":0', b'"schema_version":123456789012345678901234567890')
    r = post(client, tokens["scanner"], raw=raw)
    assert r.status_code == 200
    result = r.json()["results"][0]
    assert (result["reason"], result["path"]) == ("wrong_type", "$.events[0].schema_version")


def test_given_more_than_500_events_then_422(client: httpx.Client, tokens: dict[str, str]) -> None:
    r = post(client, tokens["scanner"], {"events": [scan() for _ in range(501)]})
    assert r.status_code == 422 and r.json()["error"]["code"] == "too_many_events"


def test_given_a_body_over_1_mib_then_413(client: httpx.Client, tokens: dict[str, str]) -> None:
    big = {"events": [scan(operator_id="x" * 60, payload={"waybill": "ZT" + "7" * 20})
                      for _ in range(500)], "pad": "x" * (1 << 20)}
    r = post(client, tokens["scanner"], big)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("event, reason, path", [
    (scan(occurred_at="2026-11-11T09:15:32"), "naive_timestamp", "$.events[0].occurred_at"),
    (scan(schema_version="1"), "wrong_type", "$.events[0].schema_version"),
    (scan(payload={"action": "teleported"}), "unknown_action", "$.events[0].payload.action"),
    (scan(payload={"node_id": "TWN-NOWHERE"}), "unknown_node", "$.events[0].payload.node_id"),
    (scan(type="parcel.vanished"), "unknown_type", "$.events[0].type"),
    (scan(event_id="not-an-id"), "invalid_event_id", "$.events[0].event_id"),
    (scan(brand="DHL"), "unknown_brand", "$.events[0].brand"),
    (scan(type="sms.submitted", payload={}), "type_not_permitted", "$.events[0].type"),
])
def test_given_an_invalid_event_then_it_alone_is_rejected_with_reason_and_path(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], event: dict[str, Any],
        reason: str, path: str) -> None:
    good = scan()
    r = post(client, tokens["scanner"], {"events": [event, good]})
    assert r.status_code == 200, r.text
    first, second = r.json()["results"]
    assert (first["status"], first["reason"], first["path"]) == ("rejected", reason, path), first
    assert first["message"]
    assert second["status"] == "accepted"
    stored = db_fetch(platform, "SELECT event_id FROM journal WHERE event_id = ANY($1)",
                      [event.get("event_id"), good["event_id"]])
    assert [r["event_id"] for r in stored] == [good["event_id"]]


def test_given_duplicate_ids_inside_one_batch_then_later_copies_are_rejected(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    event = scan()
    r = post(client, tokens["scanner"], {"events": [event, dict(event)]})
    results = r.json()["results"]
    assert results[0]["status"] == "accepted"
    assert (results[1]["status"], results[1]["reason"]) == ("rejected", "duplicate_in_batch")


def test_given_a_device_registered_to_one_brand_when_it_scans_another_then_rejected(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    r = post(client, tokens["scanner-zto"], {"events": [scan(brand="SF")]})
    assert r.json()["results"][0]["reason"] == "brand_not_permitted"


@pytest.mark.parametrize("headers, status", [({}, 401), ({"Authorization": "Bearer nope"}, 401),
                                             ({"Authorization": "Basic Zm9vOmJhcg=="}, 401)])
def test_given_no_or_bad_token_then_401(client: httpx.Client, headers: dict[str, str],
                                        status: int) -> None:
    r = client.post("/v1/scan-batches", json={"events": [scan()]}, headers=headers)
    assert r.status_code == status and r.json()["error"]["code"] in ("unauthenticated", "invalid_token")


def test_given_a_reader_token_when_it_uploads_then_403(client: httpx.Client,
                                                      tokens: dict[str, str]) -> None:
    r = post(client, tokens["manager"], {"events": [scan()]})
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_role"


@pytest.mark.parametrize("method, url, body", [
    ("GET", "/v1/parcels/%00%ff", None), ("GET", "/v1/parcels?limit=abc", None),
    ("POST", "/v1/public/track", {"waybill": 1}), ("POST", "/v1/public/track", "[]"),
    ("GET", "/v1/parcels/" + "A" * 5000, None),
])
def test_given_garbage_on_read_endpoints_then_never_a_500(
        client: httpx.Client, tokens: dict[str, str], method: str, url: str, body: Any) -> None:
    r = client.request(method, url, json=body, headers=bearer(tokens["manager"]))
    assert 400 <= r.status_code < 500, (r.status_code, r.text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=12)
event_like = st.fixed_dictionaries({}, optional={
    "event_id": st.one_of(st.uuids().map(str), json_values),
    "type": st.sampled_from(["parcel.scanned", "parcel.registered", "vehicle.departed"]) | json_values,
    "schema_version": st.integers(-1, 3) | json_values,
    "occurred_at": st.datetimes().map(lambda d: d.isoformat()) | json_values,
    "brand": st.sampled_from(["ZTO", "SF", "XX"]) | json_values,
    "operator_id": json_values,
    "payload": st.dictionaries(st.sampled_from(["waybill", "action", "node_id", "pickup_code",
                                                "recipient_phone", "trip_id", "scheduled_at"]),
                               json_values, max_size=5) | json_values,
})


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.one_of(json_values, st.fixed_dictionaries({"events": st.lists(event_like | json_values,
                                                                          max_size=5)})))
def test_property_no_body_however_malformed_gets_a_server_error(
        client: httpx.Client, tokens: dict[str, str], body: Any) -> None:
    r = post(client, tokens["scanner"], body)
    assert r.status_code < 500, r.text
    if r.status_code == 200:
        for result in r.json()["results"]:
            assert result["status"] != "rejected" or (result["reason"] and result["path"])
