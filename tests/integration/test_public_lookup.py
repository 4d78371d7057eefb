"""The public lookup as a stranger would attack it: odd digits, guessing, locking the recipient out.

Each test speaks from its own loopback addresses (127.0.9.x, …): the API sees them as the TCP
peer, which is the client address its limits are kept by (docs/security/public-lookup.md).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from domain.county import County
from entrypoints.platform import Platform
from loadtest.traffic import CountyTraffic, Parcel, county_time
from tests.conftest import bearer, db_fetch, wait_for

TRACK = "/v1/public/track"


def from_address(platform: Platform, address: str) -> httpx.Client:
    """A client whose connections come from `address` (any 127.x.y.z is this machine)."""
    return httpx.Client(base_url=platform.api_url, timeout=15,
                        transport=httpx.HTTPTransport(local_address=address))


@pytest.fixture(scope="module")
def parcels(platform: Platform, client: httpx.Client, tokens: dict[str, str],
            county: County) -> list[Parcel]:
    """Four registered parcels, projected, with their recipients' phones."""
    traffic = CountyTraffic(county, seed=91)
    at = county_time(county, datetime.now(UTC))
    by_brand: dict[str, list[dict[str, Any]]] = {}
    for _ in range(4):
        parcel, event = traffic.register(at)
        by_brand.setdefault(parcel.brand, []).append(event)
    for brand, events in by_brand.items():
        r = client.post("/v1/scan-batches", json={"events": events},
                        headers=bearer(tokens[f"{brand}-system"]))
        assert r.status_code == 200 and r.json()["accepted"] == len(events), r.text
    for p in traffic.parcels:
        wait_for(lambda p=p: client.get(f"/v1/parcels/{p.waybill}",
                                        headers=bearer(tokens["manager"])).status_code == 200,
                 10.0, f"{p.waybill} projected")
    return traffic.parcels


_addresses: dict[str, str] = {}


@pytest.fixture()
def address(request: pytest.FixtureRequest) -> str:
    """This test's own client address, so no test sees another's buckets."""
    return _addresses.setdefault(request.node.name, f"127.0.9.{len(_addresses) + 1}")


@pytest.fixture()
def stranger(platform: Platform, address: str) -> Iterator[httpx.Client]:
    with from_address(platform, address) as c:
        yield c


def wrong(parcel: Parcel) -> str:
    return f"{(int(parcel.phone[-4:]) + 1) % 10000:04d}"


def fullwidth(digits: str) -> str:
    return "".join(chr(ord("０") + int(d)) for d in digits)


def test_given_fullwidth_digits_for_an_existing_parcel_then_they_are_read_as_digits_not_a_500(
        parcels: list[Parcel], stranger: httpx.Client) -> None:
    p = parcels[0]
    r = stranger.post(TRACK, json={"waybill": p.waybill, "phone_last4": fullwidth(p.phone[-4:])})
    assert r.status_code == 200, r.text
    assert r.json()["waybill"] == p.waybill and p.phone not in r.text
    arabic = "".join(chr(0x660 + int(d)) for d in wrong(p))
    r = stranger.post(TRACK, json={"waybill": p.waybill, "phone_last4": arabic})
    assert r.status_code == 404, r.text


@pytest.mark.parametrize("body", [
    {"phone_last4": "\x00\x00\x00\x00"}, {"phone_last4": "１２３"}, {"phone_last4": "12345"},
    {"phone_last4": "9" * 100_000}, {"phone_last4": 1234}, {"phone_last4": None},
    {"phone_last4": ["1234"]}, {"phone_last4": {"a": 1}}, {"phone_last4": "²³⁴⁵"},
    {"phone_last4": "五六七八"}, {"phone_last4": "12\x0034"},
    {"waybill": "\x00" * 10}, {"waybill": "A" * 100_000}, {"waybill": 12345678},
    {"waybill": "ＺＴ７３０００１２３４５６７８"}, {"waybill": None}, {"waybill": "zt73000123"},
])
def test_given_odd_input_then_a_4xx_never_a_500(
        parcels: list[Parcel], stranger: httpx.Client, body: dict[str, Any]) -> None:
    full = {"waybill": parcels[0].waybill, "phone_last4": parcels[0].phone[-4:], **body}
    r = stranger.post(TRACK, json=full)
    assert r.status_code == 422, (r.status_code, r.text[:300])
    assert r.json()["error"]["code"] == "invalid_request"


@pytest.mark.parametrize("raw", [b"[]", b"null", b"1234", b'"x"', b"{", b"\xff\xfe", b"",
                                 b'{"waybill": "YT4000000000999", "phone_last4": "\\ud800123"}',
                                 b'{"waybill": "YT4000000000999\\u0000", "phone_last4": "1234"}'])
def test_given_a_body_that_is_not_an_object_then_a_4xx(stranger: httpx.Client, raw: bytes) -> None:
    r = stranger.post(TRACK, content=raw, headers={"content-type": "application/json"})
    assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])


def test_given_a_stranger_guessing_ten_times_then_the_recipient_still_gets_in_from_their_address(
        platform: Platform, parcels: list[Parcel], stranger: httpx.Client) -> None:
    p = parcels[1]
    answers = [stranger.post(TRACK, json={"waybill": p.waybill, "phone_last4": wrong(p)})
               for _ in range(10)]
    assert [a.status_code for a in answers] == [404] * 5 + [429] * 5
    refused = answers[-1]
    assert refused.status_code == 429 and refused.json()["error"]["code"] == "too_many_attempts"
    assert 0 < int(refused.headers["Retry-After"]) <= 12 * 60
    with from_address(platform, "127.0.10.1") as recipient:
        r = recipient.post(TRACK, json={"waybill": p.waybill, "phone_last4": p.phone[-4:]})
    assert r.status_code == 200, r.text


def test_given_strangers_from_many_addresses_then_the_recipient_waits_minutes_not_an_hour(
        platform: Platform, parcels: list[Parcel]) -> None:
    p = parcels[2]
    for n in range(3):
        with from_address(platform, f"127.0.11.{n + 1}") as s:
            for _ in range(5):
                s.post(TRACK, json={"waybill": p.waybill, "phone_last4": wrong(p)})
    with from_address(platform, "127.0.11.99") as recipient:
        first = recipient.post(TRACK, json={"waybill": p.waybill, "phone_last4": p.phone[-4:]})
        assert first.status_code == 429, first.text  # the waybill's own bucket is full
        wait = int(first.headers["Retry-After"])
        assert 0 < wait <= 3 * 60
        # Trying again while refused is not a guess: the wait does not grow.
        again = recipient.post(TRACK, json={"waybill": p.waybill, "phone_last4": p.phone[-4:]})
        assert again.status_code == 429 and int(again.headers["Retry-After"]) <= wait


def test_given_one_address_guessing_on_many_waybills_then_it_is_limited_with_retry_after(
        platform: Platform, parcels: list[Parcel], stranger: httpx.Client, address: str) -> None:
    # Made-up waybills in a real brand's shape: as a scraper enumerating would send them.
    waybills = [f"YT{n:013d}" for n in range(4_000_000_000_100, 4_000_000_000_115)]
    codes = [stranger.post(TRACK, json={"waybill": w, "phone_last4": "0000"}).status_code
             for w in waybills]
    assert codes[:10] == [404] * 10 and set(codes[10:]) == {429}, codes
    # A waybill it has tried: only its overall budget is spent, one more guess in 2 minutes.
    again = stranger.post(TRACK, json={"waybill": waybills[0], "phone_last4": "0001"})
    assert again.status_code == 429 and 0 < int(again.headers["Retry-After"]) <= 2 * 60
    # A new waybill, even with the right digits (a refused try is never compared): ten new
    # waybills a day, so the next in 2.4 hours.
    refused = stranger.post(TRACK, json={"waybill": parcels[3].waybill,
                                         "phone_last4": parcels[3].phone[-4:]})
    assert refused.status_code == 429
    assert 2 * 60 < int(refused.headers["Retry-After"]) <= 3 * 3600
    keys = {r["key"] for r in db_fetch(platform, "SELECT key FROM public_lookup_limits"
                                                 " WHERE key LIKE $1", f"%{address}%")}
    assert f"a:{address}" in keys and f"an:{address}" in keys


def test_given_a_forged_forwarded_for_header_then_the_address_is_still_the_peer(
        platform: Platform, client: httpx.Client) -> None:
    # From 127.0.0.1, the address uvicorn would trust by default: without GONGPEI_TRUSTED_PROXIES
    # the header is ignored, so a new fake address per try does not make a new budget.
    waybill = "JD4000000000777"
    codes = [client.post(TRACK, json={"waybill": waybill, "phone_last4": "0000"},
                         headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code
             for n in range(6)]
    assert codes == [404] * 5 + [429], codes
    keys = {r["key"] for r in db_fetch(platform, "SELECT key FROM public_lookup_limits"
                                                 " WHERE key LIKE $1", f"%{waybill}")}
    assert keys == {f"aw:127.0.0.1|{waybill}", f"w:{waybill}"}


@pytest.mark.parametrize("headers, raw", [
    ({}, b'{"waybill": "YT4000000000888", "phone_last4": "0000"}'),
    ({"content-type": "text/plain"}, b'{"waybill": "YT4000000000888", "phone_last4": "0000"}'),
    ({"content-type": "application/x-www-form-urlencoded"}, b"waybill=YT4000000000888&phone_last4=0"),
])
def test_given_a_body_that_is_not_declared_json_then_415(
        stranger: httpx.Client, headers: dict[str, str], raw: bytes) -> None:
    r = stranger.post(TRACK, content=raw, headers=headers)
    assert r.status_code == 415 and r.json()["error"]["code"] == "unsupported_media_type", r.text


def test_given_a_huge_body_to_the_public_lookup_then_413_before_it_is_read(
        client: httpx.Client) -> None:
    """The lookup needs no token: it must not read a stranger's megabytes either."""
    big = b'{"waybill": "' + b"9" * (2 << 20) + b'", "phone_last4": "1234"}'
    declared = client.post(TRACK, content=big, headers={"content-type": "application/json"})

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    streamed = client.post(TRACK, content=chunks(), headers={"content-type": "application/json"})
    for r in (declared, streamed):
        assert r.status_code == 413, r.text
        assert r.json()["error"]["code"] == "body_too_large"
