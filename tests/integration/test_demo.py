"""What a newcomer sees: the demo day fills the SMS panel, the call list and the no-consent list
within minutes; `gongpei token create` and `gongpei status` find a running platform by themselves;
demo tokens survive a restart of the same state folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from entrypoints.platform import STATE_FILE, Platform
from loadtest.demo import STORED, DemoTraffic, Household, demo_county_file
from tests.conftest import TEST_SETTINGS, bearer, db_fetch, wait_for

ROOT = Path(__file__).resolve().parents[2]


def bare_env() -> dict[str, str]:
    """The environment of a newcomer's shell: none of the platform's settings exported."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("GONGPEI_") and k not in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS")}


def gongpei(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *argv], check=False,
                          cwd=cwd, env=bare_env(),
                          capture_output=True, text=True, timeout=60)


def sent_sms(platform: Platform) -> list[dict[str, object]]:
    out = []
    for name in ("aliyun", "tencent"):
        path = platform.gateway_log(name)
        if path.exists():
            out += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return out


def test_given_the_demo_day_when_fed_for_a_minute_then_sms_name_several_codes_and_every_list_fills(
        platform: Platform, client: httpx.Client, tmp_path: Path) -> None:
    # The demo feeder at four times its pace, on the test platform (3-second digests).
    demo = DemoTraffic(platform, tmp_path, seed=7011, hold_for=(600.0, 600.0))  # no other test's seed
    demo.prepare()
    manager = bearer(demo.tokens["manager"])
    households: dict[str, Household] = {}

    def step() -> None:
        demo.step()
        households.update({h.phone: h for h in demo.moving})

    def multi_code_sms() -> list[dict[str, object]]:
        return [m for m in sent_sms(platform) if m["phone"] in households
                and len(households[str(m["phone"])].parcels) >= 2]

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (len(households) < 30 or not multi_code_sms()):
        step()
        time.sleep(0.5)
    several = multi_code_sms()
    assert several, "no arrival SMS for a demo household with several parcels"
    house = households[str(several[0]["phone"])]
    for parcel in house.parcels:  # one SMS names every code of the household
        r = client.get(f"/v1/parcels/{parcel.waybill}", headers=manager).json()
        assert r["pickup_code"] and r["pickup_code"] in str(several[0]["text"]), (r, several[0])
    waybills = {p.waybill: h for h in households.values() for p in h.parcels}

    def demo_rows(path: str, key: str) -> list[dict[str, object]]:
        return [row for row in client.get(path, headers=manager).json()[key]
                if row["waybill"] in waybills]

    # A number that no longer exists: the gateway reports it undelivered, the keeper must call.
    calls = wait_for(lambda: (step(), demo_rows("/v1/sms/call-list", "parcels"))[1], 60,
                     "a demo parcel on the call list")
    assert all(str(c["reason"]).startswith("sms_failed") for c in calls)
    assert all(waybills[str(c["waybill"])].phone.endswith("4444") for c in calls)
    waiting = demo_rows("/v1/sms/no-consent", "parcels")
    assert waiting and not any(waybills[str(w["waybill"])].consents for w in waiting)
    # Most parcels wait at the point: the demo collected none of these yet.
    assert all(p.step == STORED for p in house.parcels)
    summary = client.get("/v1/sms/summary", headers=manager).json()
    assert summary["call_list_total"] >= 1 and summary["no_consent_total"] >= len(waiting)
    # Problem parcels and a held household: causes and the at-risk queue have something.
    problem = [p.waybill for h in households.values() if h.problem for p in h.parcels]
    held = {p.waybill for h in households.values() if h.held for p in h.parcels}
    assert problem and held
    wait_for(lambda: db_fetch(platform, "SELECT 1 FROM sla_legs WHERE waybill = ANY($1::text[])"
                              " AND cause = 'problem'", problem), 30, "a late leg caused by a problem")
    wait_for(lambda: held & {r["waybill"] for r in client.get(
        "/v1/sla/at-risk", headers=manager).json()["at_risk"]}, 30, "a held parcel at risk")


def test_given_a_running_platform_when_token_create_runs_without_settings_then_the_token_works(
        platform: Platform, client: httpx.Client, tmp_path: Path) -> None:
    # The operator's shell is in the checkout whose .state the platform runs from.
    (tmp_path / ".state").symlink_to(platform.state_dir)
    r = gongpei("token", "create", "--role", "manager", "--name", "ops-no-env", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    token = r.stdout.strip().rsplit(": ", 1)[1]
    assert client.get("/v1/parcels", params={"limit": 1}, headers=bearer(token)).status_code == 200
    listed = gongpei("token", "list", "--state-dir", str(platform.state_dir), cwd=ROOT)
    assert "ops-no-env" in listed.stdout, listed.stderr
    assert (platform.state_dir / STATE_FILE).stat().st_mode & 0o077 == 0  # owner-only


def test_given_no_running_platform_when_token_create_runs_then_it_says_where_it_looked(
        tmp_path: Path) -> None:
    r = gongpei("token", "create", "--role", "manager", "--name", "x", "--state-dir",
                str(tmp_path / "nothing"), cwd=tmp_path)
    assert r.returncode != 0
    assert "no running embedded platform" in r.stderr and "nothing" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_given_a_running_platform_when_status_runs_then_it_says_what_runs_where_and_how_healthy(
        platform: Platform) -> None:
    r = gongpei("status", "--state-dir", str(platform.state_dir), cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    out = r.stdout
    assert platform.api_url in out and "/healthz 200" in out and str(platform.state_dir) in out
    assert f"{platform.api_url}/dashboard?token=" in out
    for name, child in platform.children.items():
        assert child.proc is not None
        line = next(x for x in out.splitlines() if x.split()[:1] == [name])
        assert line.split()[1:4] == [str(child.proc.pid), "yes", str(child.restarts)], line
    assert "relay: journal seq" in out and "behind" in out
    assert "journal: last seq" in out and "tracking" in out  # `gongpei projections`' lines
    assert out.rstrip().endswith("healthy")


def test_given_a_restart_of_the_same_state_folder_then_the_demo_tokens_still_work(
        tmp_path: Path, county_file: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    county, note = demo_county_file(state, county_file)
    assert "digest_seconds = 60" in county.read_text() and "60 s" in note

    def up_and_prepare() -> tuple[Platform, DemoTraffic]:
        p = Platform(state, county_file=county, services=("api",),
                     settings_changes=dict(TEST_SETTINGS))
        p.start(timeout=60)
        demo = DemoTraffic(p, state)
        demo.prepare()
        return p, demo

    def works(p: Platform, token: str) -> bool:
        r = httpx.get(f"{p.api_url}/v1/parcels", params={"limit": 1}, headers=bearer(token))
        return r.status_code == 200

    p, demo = up_and_prepare()
    try:
        first = dict(demo.tokens)
        assert works(p, first["manager"])
        assert (state / "demo-tokens" / "manager").stat().st_mode & 0o077 == 0
    finally:
        p.stop()
    p, demo = up_and_prepare()
    try:
        assert demo.tokens == first
        assert (state / "demo-tokens" / "manager").read_text().strip() == first["manager"]
        assert works(p, first["manager"])
        # A token revoked meanwhile is replaced, and only that one.
        db_fetch(p, "UPDATE tokens SET revoked_at = now() WHERE name = 'admin'")
        demo.prepare()
        assert demo.tokens["admin"] != first["admin"] and works(p, demo.tokens["admin"])
        assert demo.tokens["manager"] == first["manager"]
    finally:
        p.stop()
    assert json.loads((state / STATE_FILE).read_text())["stopped_at"]
    r = gongpei("status", "--state-dir", str(state), cwd=ROOT)
    assert r.returncode != 0 and "not running" in r.stderr
