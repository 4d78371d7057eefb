"""Writers under attack, on the embedded stack: guessing tokens, flooding uploads, using a token
past its expiry; and the trail left behind (last use, access log) holding no personal data.

These run on a platform of their own with the default limits (the session's platform lifts them:
its shared tokens carry a whole county's traffic). Every test request comes from 127.0.0.1; the
platform trusts X-Forwarded-For from there (GONGPEI_TRUSTED_PROXIES=127.0.0.1), so each attacker
and victim here has an address of its own (documentation ranges)."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from api import auth
from domain.county import County
from entrypoints.platform import Platform
from loadtest.traffic import CountyTraffic, county_time, envelope
from tests.conftest import TEST_SETTINGS, bearer, db_fetch, issue, wait_for


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory, county_file: Any) -> Any:
    p = Platform(tmp_path_factory.mktemp("writers-state"), county_file=county_file,
                 topic_partitions=2,
                 # Its clients act at many addresses: X-Forwarded-For from loopback is believed.
                 settings_changes={**TEST_SETTINGS, "trusted_proxies": "127.0.0.1"})
    try:
        p.start(timeout=90)
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="module")
def client(platform: Platform) -> Any:
    with httpx.Client(base_url=platform.api_url, timeout=15) as c:
        yield c


@pytest.fixture(scope="module")
def tokens(platform: Platform) -> dict[str, str]:
    return {"manager": issue(platform, "manager", "manager", []),
            "ZTO-brand": issue(platform, "brand", "ZTO-brand", ["ZTO"])}


def at(address: str, token: str | None = None) -> dict[str, str]:
    headers = {"X-Forwarded-For": address}
    return {**headers, **bearer(token)} if token else headers


def gongpei(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    assert platform.settings is not None
    env = {**os.environ, **platform.settings.to_env()}
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def issue_expiring(platform: Platform, role: str, name: str, brands: list[str],
                   expires_in: timedelta) -> tuple[int, str]:
    async def go() -> tuple[int, str]:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url)
        try:
            return await auth.create(conn, role=role, name=name, brands=brands,
                                     expires_in=expires_in)
        finally:
            await conn.close()

    return asyncio.run(go())


def backlog(county: County, events: int) -> list[dict[str, Any]]:
    """A handheld's day of scans (each parcel walked down the chain), in upload order."""
    traffic = CountyTraffic(county, seed=91)
    t0 = county_time(county, datetime.now(UTC) - timedelta(hours=3))
    parcels = [traffic.register(t0)[0] for _ in range(events // 7 + 1)]
    scans = [s for step in range(7) for p in parcels
             if (s := traffic.advance(p, t0 + timedelta(minutes=step + 1)))]
    return scans[:events]


def assert_429(r: httpx.Response, code: str) -> int:
    assert r.status_code == 429, r.text
    body = r.json()
    assert body["error"]["code"] == code and "retry after" in body["error"]["message"]
    wait = int(r.headers["Retry-After"])
    assert wait >= 1
    return wait


def test_given_1500_random_bearer_tokens_from_one_address_then_401s_turn_into_429s_and_others_pass(
        platform: Platform, client: httpx.Client, county: County) -> None:
    attacker = "198.51.100.23"
    # A brand's desk at the same station (one NAT address), working before the attack started.
    neighbour = issue(platform, "brand", "zto-station-desk", ["ZTO"])
    assert client.get("/v1/parcels?limit=1", headers=at(attacker, neighbour)).status_code == 200

    statuses, retry_afters, started = [], [], time.monotonic()
    for i in range(1500):
        r = client.get("/v1/parcels?limit=1", headers=at(attacker, f"gp_guess{i:05d}"))
        statuses.append(r.status_code)
        if r.status_code == 401:
            assert r.json()["error"]["code"] == "invalid_token"
        else:
            retry_afters.append(assert_429(r, "too_many_failed_authentications"))
    elapsed = time.monotonic() - started
    first_429 = statuses.index(429)
    # A burst of 20 failures, plus the few the 2/min refill gave back during the loop.
    assert statuses[:20] == [401] * 20 and first_429 <= 20 + elapsed / 30 + 1, statuses[:40]
    assert statuses.count(401) <= 20 + elapsed / 30 + 1
    assert min(retry_afters) >= 1 and max(retry_afters) <= 30

    # Someone else, elsewhere, with a valid token: unaffected.
    elsewhere = issue(platform, "manager", "manager-elsewhere", [])
    assert client.get("/v1/parcels?limit=1", headers=at("203.0.113.5", elsewhere)).status_code == 200
    # The neighbour, known to this API as valid, still gets through from the attacked address…
    assert client.get("/v1/parcels?limit=1", headers=at(attacker, neighbour)).status_code == 200
    # …but a token this API has not seen yet waits out the block there, like a guess would.
    fresh = issue(platform, "manager", "manager-fresh", [])
    assert_429(client.get("/v1/parcels?limit=1", headers=at(attacker, fresh)),
               "too_many_failed_authentications")
    # A forged X-Forwarded-For does not move an untrusted client to another address.
    assert client.get("/v1/parcels?limit=1",
                      headers=at(f"203.0.113.77, {attacker}", fresh)).status_code == 429


def test_given_a_handhelds_day_of_backlog_in_40_full_batches_then_none_is_refused(
        client: httpx.Client, platform: Platform, county: County) -> None:
    token = issue(platform, "scanner", "pda-backlog", list(county.brands))
    scans = backlog(county, 20_000)
    statuses = []
    for i in range(0, len(scans), 500):  # back to back, as fast as the API answers
        r = client.post("/v1/scan-batches", json={"events": scans[i:i + 500]},
                        headers=at("203.0.113.40", token), timeout=60)
        statuses.append(r.status_code)
        assert r.status_code == 200, r.text
        assert r.json()["rejected"] == 0, r.json()["results"][:3]
    assert statuses == [200] * 40


def tiny_batch(county: County) -> dict[str, Any]:
    """One scan of a fresh parcel at the county centre: the smallest upload there is."""
    now = county_time(county, datetime.now(UTC))
    waybill = f"ZT{uuid.uuid4().int % 10**13:013d}"
    return {"events": [envelope("parcel.scanned", 1, now, "ZTO", "op-noisy", {
        "waybill": waybill, "action": "received", "node_id": county.centre.id})]}


def test_given_a_device_sending_1500_tiny_batches_fast_then_it_gets_429_and_others_do_not(
        client: httpx.Client, platform: Platform, county: County) -> None:
    noisy = issue(platform, "scanner", "pda-noisy", ["ZTO"])
    quiet = issue(platform, "scanner", "pda-quiet", ["ZTO"])
    body = tiny_batch(county)
    statuses, retry_afters, started = [], [], time.monotonic()
    for _ in range(1500):
        r = client.post("/v1/scan-batches", json=body, headers=at("203.0.113.41", noisy))
        statuses.append(r.status_code)
        if r.status_code == 429:
            retry_afters.append(assert_429(r, "rate_limited"))
        else:
            assert r.status_code == 200, r.text
    elapsed = time.monotonic() - started
    # A burst of 60 requests, plus what the 1/s refill gave back while the loop ran.
    took = statuses.count(200)
    assert 60 <= took <= 60 + elapsed + 1, (took, elapsed)
    assert statuses.count(429) == 1500 - took and statuses[:60] == [200] * 60
    assert set(retry_afters) == {1}  # one request a second comes back
    # The same device may still read, and another device uploads at once.
    assert client.get("/v1/parcels?limit=1", headers=at("203.0.113.41", noisy)).status_code in (
        200, 403)
    r = client.post("/v1/scan-batches", json=tiny_batch(county), headers=at("203.0.113.42", quiet))
    assert r.status_code == 200 and r.json()["accepted"] == 1
    # Every refusal is in the access log, under the device's name, repeated ones of a second
    # counted, not one row each: a flood cannot flood the log.
    logged = wait_for(lambda: (r := db_fetch(
        platform, "SELECT count(*) AS rows, sum(requests) AS refused FROM access_log"
                  " WHERE token_name = 'pda-noisy' AND status = 429 AND route = $1",
        "/v1/scan-batches")[0]) and r["refused"] == 1500 - took and r, 10,
        "the refusals in the access log")
    assert logged["rows"] < (1500 - took) / 10
    # And when it waits as told, it may upload again.
    time.sleep(max(retry_afters[-1], 1) + 0.1)
    assert client.post("/v1/scan-batches", json=tiny_batch(county),
                       headers=at("203.0.113.41", noisy)).status_code == 200


def test_given_a_token_scraping_parcels_in_a_tight_loop_then_it_is_refused_after_its_read_burst(
        client: httpx.Client, platform: Platform) -> None:
    scraper = issue(platform, "brand", "yto-scraper", ["YTO"])
    other = issue(platform, "brand", "yto-desk", ["YTO"])
    statuses, started = [], time.monotonic()
    for n in range(5000):
        statuses.append(client.get(f"/v1/parcels/YT{n:013d}",
                                   headers=at("203.0.113.45", scraper)).status_code)
        if statuses[-1] == 429:
            break
    elapsed = time.monotonic() - started
    # A burst of 600, plus the 20 a second the refill gave back while the loop ran.
    assert statuses[-1] == 429 and set(statuses[:-1]) == {404}
    assert 600 <= len(statuses) - 1 <= 600 + 20 * elapsed + 1, (len(statuses), elapsed)
    r = client.get("/v1/parcels/YT0000000000001", headers=at("203.0.113.45", scraper))
    assert r.status_code == 429 and assert_429(r, "rate_limited") == 1
    assert client.get("/v1/parcels/YT0000000000001",
                      headers=at("203.0.113.45", other)).status_code == 404


def test_given_a_token_past_its_expiry_then_it_gets_401_token_expired_not_invalid_token(
        client: httpx.Client, platform: Platform) -> None:
    _, token = issue_expiring(platform, "manager", "manager-short", [], timedelta(seconds=2))
    assert client.get("/v1/parcels?limit=1", headers=at("203.0.113.50", token)).status_code == 200
    time.sleep(2.2)
    r = client.get("/v1/parcels?limit=1", headers=at("203.0.113.50", token))
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired", r.text
    r = client.post("/v1/scan-batches", json={"events": []}, headers=at("203.0.113.50", token))
    assert r.status_code == 401 and r.json()["error"]["code"] == "token_expired"
    # A token that never existed still reads as unknown.
    r = client.get("/v1/parcels?limit=1", headers=at("203.0.113.50", "gp_never-issued"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_token"


def test_given_cli_tokens_with_expiry_then_the_list_shows_expiry_and_last_use(
        client: httpx.Client, platform: Platform) -> None:
    made = gongpei(platform, "token", "create", "--role", "scanner", "--name", "pda-expiring",
                   "--brand", "ZTO", "--expires-in", "12h")
    assert made.returncode == 0, made.stderr
    token_id, token = re.search(r"token (\d+) .*: (gp_\S+)", made.stdout).groups()  # type: ignore[union-attr]
    expires = db_fetch(platform, "SELECT expires_at - created_at AS span, last_used_at FROM tokens"
                                 " WHERE id = $1", int(token_id))[0]
    assert expires["span"] == timedelta(hours=12) and expires["last_used_at"] is None
    default = gongpei(platform, "token", "create", "--role", "admin", "--name", "admin-default")
    default_id = re.search(r"token (\d+) ", default.stdout).group(1)  # type: ignore[union-attr]
    assert db_fetch(platform, "SELECT expires_at - created_at AS span FROM tokens WHERE id = $1",
                    int(default_id))[0]["span"] == timedelta(days=30)
    for bad in ("90", "1y", "0d", "-5m"):
        refused = gongpei(platform, "token", "create", "--role", "scanner", "--name", "x",
                          "--brand", "ZTO", "--expires-in", bad)
        assert refused.returncode != 0 and "--expires-in" in refused.stderr

    before = datetime.now(UTC)
    assert client.get("/v1/parcels?limit=1", headers=at("203.0.113.51", token)).status_code == 403
    used = wait_for(lambda: db_fetch(platform, "SELECT last_used_at FROM tokens WHERE id = $1",
                                     int(token_id))[0]["last_used_at"], 10, "last_used_at")
    assert before - timedelta(seconds=1) <= used <= datetime.now(UTC)

    line = next(ln for ln in gongpei(platform, "token", "list").stdout.splitlines()
                if re.match(rf"\s*{token_id}\s", ln))
    assert "pda-expiring" in line and "active" in line
    assert f"{(before + timedelta(hours=12)):%Y-%m-%d}" in line  # expiry
    assert f"{used:%Y-%m-%d %H:%M}" in line                          # last used


def test_given_calls_naming_a_waybill_and_a_phone_then_the_access_log_has_the_route_template_only(
        client: httpx.Client, platform: Platform, tokens: dict[str, str]) -> None:
    admin = issue(platform, "admin", "admin-auditor", [])
    phone = "13912345678"
    waybill = f"ZT{phone}99"
    r = client.get(f"/v1/parcels/{waybill}?phone={phone}", headers=at("203.0.113.60",
                                                                      tokens["ZTO-brand"]))
    assert r.status_code == 404
    client.get(f"/v1/parcels/{waybill}", headers=at("203.0.113.60", "gp_not-a-token"))
    client.get(f"/v1/no-such-route/{phone}", headers=at("203.0.113.60"))

    def logged() -> list[dict[str, Any]]:
        r = client.get("/v1/access-log?limit=1000", headers=at("203.0.113.61", admin))
        assert r.status_code == 200, r.text
        return [e for e in r.json()["entries"] if e["client"] == "203.0.113.60"]

    entries = wait_for(lambda: len(e := logged()) == 3 and e, 10, "three access-log entries")
    found = [e for e in entries if e["token_name"] == "ZTO-brand"]
    assert len(found) == 1 and found[0] | {"at": None, "duration_ms": None, "token_id": None} == {
        "at": None, "token_id": None, "token_name": "ZTO-brand", "role": "brand", "method": "GET",
        "route": "/v1/parcels/{waybill}", "status": 404, "duration_ms": None,
        "client": "203.0.113.60", "requests": 1}
    assert {(e["route"], e["status"], e["token_id"]) for e in entries if e is not found[0]} == {
        ("/v1/parcels/{waybill}", 401, None), ("(no route)", 404, None)}
    # Nothing in the whole table, in any column, carries the phone or the waybill.
    rows = db_fetch(platform, "SELECT * FROM access_log")
    text = " ".join(str(v) for row in rows for v in row.values())
    assert phone not in text and waybill not in text and "gp_" not in text

    # The operator's command shows the same, and nothing more.
    listed = gongpei(platform, "access-log", "--limit", "1000").stdout
    assert re.search(r"203\.0\.113\.60 +\d+:ZTO-brand\(brand\) +GET +/v1/parcels/\{waybill\} +404",
                     listed), listed[-2000:]
    assert phone not in listed and waybill not in listed

    # Only admins read it.
    r = client.get("/v1/access-log", headers=at("203.0.113.61", tokens["manager"]))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden_role"


def test_given_the_api_role_when_it_tries_to_erase_its_trail_then_postgres_refuses_and_prune_keeps_recent(
        platform: Platform) -> None:
    assert platform.settings is not None
    old = datetime.now(UTC) - timedelta(days=91)
    db_fetch(platform, "INSERT INTO access_log (at, method, route, status, duration_ms, client)"
                       " VALUES ($1, 'GET', '/healthz', 200, 1, '192.0.2.1'),"
                       " (now() - interval '89 days', 'GET', '/healthz', 200, 1, '192.0.2.2')", old)

    async def as_app() -> tuple[str, str, int]:
        conn = await asyncpg.connect(platform.settings.database_url_for("api"))  # type: ignore[union-attr]
        try:
            outcomes = []
            for sql in ("DELETE FROM access_log", "UPDATE access_log SET client = 'x'",
                        "TRUNCATE access_log"):
                try:
                    await conn.execute(sql)
                    outcomes.append("done")
                except asyncpg.InsufficientPrivilegeError:
                    outcomes.append("refused")
            try:
                await conn.fetchval("SELECT prune_access_log(0)")
                short = "done"
            except asyncpg.RaiseError:
                short = "refused"
            return ",".join(outcomes), short, await conn.fetchval("SELECT count(*) FROM access_log")
        finally:
            await conn.close()

    outcomes, short, _ = asyncio.run(as_app())
    assert outcomes == "refused,refused,refused" and short == "refused"
    pruned = gongpei(platform, "access-log", "--prune")
    assert pruned.returncode == 0 and re.search(r"pruned [1-9]\d* access-log entries older than 90",
                                                pruned.stdout), pruned.stdout
    left = {r["client"] for r in db_fetch(platform, "SELECT client FROM access_log"
                                                    " WHERE client LIKE '192.0.2.%'")}
    assert left == {"192.0.2.2"}


@pytest.mark.parametrize("path", ["/v1/parcels?limit=1", "/v1/access-log"])
def test_given_a_malformed_authorization_header_then_401_not_500(client: httpx.Client,
                                                                  path: str) -> None:
    for value in ("Bearer", "Bearer ,", "bearer " + "x" * 10_000, "Token abc", "Bearer a b"):
        r = client.get(path, headers={"Authorization": value, "X-Forwarded-For": "203.0.113.70"})
        assert r.status_code in (401, 403), (value[:20], r.text)
        assert r.json()["error"]["code"] in ("unauthenticated", "invalid_token")
