"""Input edges at ingest, tried as a careless or hostile device would: instants with no UTC
equivalent, events older than the horizon, bodies that are not JSON, and phone numbers hidden in
ids, keys and values that an error would echo."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest

from entrypoints.platform import Platform
from loadtest.traffic import event_id
from tests.conftest import bearer, db_fetch

PHONE = "13812345678"


def scan(**overrides: Any) -> dict[str, Any]:
    at = datetime.now(UTC).astimezone().isoformat(timespec="seconds")
    event: dict[str, Any] = {"event_id": event_id(), "type": "parcel.scanned", "schema_version": 1,
                             "occurred_at": at, "brand": "ZTO", "operator_id": "op-8812",
                             "payload": {"waybill": "7300099887766", "action": "arrived",
                                         "node_id": "TWN-XILIU"}}
    payload = overrides.pop("payload", {})
    event.update(overrides)
    event["payload"] = {**event["payload"], **payload}
    return event


def upload(client: httpx.Client, token: str, body: Any, **headers: str) -> httpx.Response:
    return client.post("/v1/scan-batches", content=orjson.dumps(body),
                       headers={**bearer(token), "content-type": "application/json", **headers})


@pytest.mark.parametrize("stamp", ["0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00",
                                   "0001-01-01T00:00:00+00:01"])
def test_given_an_instant_with_no_utc_equivalent_then_only_that_event_is_refused_with_its_path(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], stamp: str) -> None:
    bad, good = scan(occurred_at=stamp), scan()
    r = upload(client, tokens["scanner"], {"events": [good, bad]})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert results[0]["status"] == "accepted"
    assert (results[1]["status"], results[1]["reason"], results[1]["path"]) == (
        "rejected", "invalid_value", "$.events[1].occurred_at")
    assert not db_fetch(platform, "SELECT 1 FROM journal WHERE event_id = $1", bad["event_id"])


def test_given_a_departure_scheduled_at_an_unconvertible_instant_then_refused_at_its_path(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    departed = scan(type="vehicle.departed", payload={
        "waybill": None, "action": None, "trip_id": "T-20261111-R-XILIU-AM", "route_id": "R-XILIU",
        "run_id": "R-XILIU-AM", "node_id": "CTY-HAICHENG",
        "scheduled_at": "0001-01-01T00:00:00+14:00"})
    departed["payload"] = {k: v for k, v in departed["payload"].items() if v is not None}
    r = upload(client, tokens["scanner"], {"events": [departed]})
    assert r.status_code == 200, r.text
    result = r.json()["results"][0]
    assert (result["reason"], result["path"]) == ("invalid_value", "$.events[0].payload.scheduled_at")


def test_given_an_event_older_than_the_horizon_then_too_old_and_a_fresh_one_accepted(
        platform: Platform, client: httpx.Client, tokens: dict[str, str]) -> None:
    assert platform.settings is not None
    horizon = timedelta(days=platform.settings.max_event_age_days)
    stale = scan(occurred_at=(datetime.now(UTC) - horizon - timedelta(days=1)).isoformat())
    r = upload(client, tokens["scanner"], {"events": [stale, scan()]})
    assert r.status_code == 200, r.text
    stale_result, fresh_result = r.json()["results"]
    assert (stale_result["status"], stale_result["reason"], stale_result["path"]) == (
        "rejected", "too_old", "$.events[0].occurred_at")
    assert f"{horizon.days} days" in stale_result["message"]
    assert fresh_result["status"] == "accepted"


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=x", "application/xml",
                                          "application/jsonp", "json"])
def test_given_a_body_not_declared_as_json_then_415(
        client: httpx.Client, tokens: dict[str, str], content_type: str | None) -> None:
    headers = {**bearer(tokens["scanner"])}
    if content_type is not None:
        headers["content-type"] = content_type
    r = client.post("/v1/scan-batches", content=orjson.dumps({"events": [scan()]}), headers=headers)
    assert r.status_code == 415, r.text
    assert r.json()["error"]["code"] == "unsupported_media_type"


def test_given_json_with_a_charset_parameter_then_accepted(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    r = upload(client, tokens["scanner"], {"events": [scan()]},
               **{"content-type": "Application/JSON; charset=utf-8"})
    assert r.status_code == 200 and r.json()["accepted"] == 1, r.text


def test_given_phone_numbers_in_ids_keys_paths_and_values_then_no_answer_echoes_them(
        client: httpx.Client, tokens: dict[str, str]) -> None:
    events = [
        scan(event_id=PHONE),                                           # a phone as the id
        scan(event_id=f"id-{PHONE}"),
        {**scan(), PHONE: "x"},                                         # an unknown envelope key
        scan(payload={PHONE: 1}),                                       # an unknown payload key
        scan(payload={"node_id": f"TWN-{PHONE}"}),                      # a value echoed
        scan(type=PHONE),
        scan(brand=PHONE),
        scan(payload={"action": PHONE}),
        scan(payload={"waybill": f"x{PHONE}"}),
        scan(operator_id=f"op {PHONE}"),
        scan(payload={"action": "problem", "problem_reason": PHONE}),
        scan(occurred_at=f"{PHONE}"),
        scan(schema_version=int(PHONE)),
        ["not", "an", "object", PHONE],
    ]
    r = upload(client, tokens["scanner"], {"events": events})
    assert r.status_code == 200, r.text
    assert all(x["status"] == "rejected" for x in r.json()["results"]), r.text
    assert PHONE not in r.text
    # Whole-body errors: an unknown top-level key, and a batch of one key
    for body in ({"events": [scan()], PHONE: 1}, {PHONE: []}):
        r = upload(client, tokens["scanner"], body)
        assert r.status_code == 422 and PHONE not in r.text, r.text


@pytest.mark.parametrize("method, url, body", [
    ("GET", f"/v1/parcels/{PHONE}", None),
    ("GET", f"/v1/parcels/ZT{PHONE}", None),
    ("GET", f"/v1/parcels?status={PHONE}", None),
    ("GET", f"/v1/parcels?limit={PHONE}", None),
    ("GET", f"/v1/sla/rates?to={PHONE}", None),
    ("GET", f"/v1/sms/stats?from={PHONE}", None),
    ("GET", f"/v1/statements/{PHONE}/ZTO", None),
    ("POST", "/v1/public/track", {"waybill": PHONE, "phone_last4": PHONE}),
    ("POST", "/v1/public/track", {"waybill": f"{PHONE}!", "phone_last4": "1234"}),
])
def test_given_a_phone_in_a_url_or_a_validated_body_then_the_error_masks_it(
        client: httpx.Client, tokens: dict[str, str], method: str, url: str, body: Any) -> None:
    r = client.request(method, url, json=body, headers=bearer(tokens["manager"]))
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    assert PHONE not in r.text, r.text
