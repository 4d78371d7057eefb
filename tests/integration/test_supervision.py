"""Every process of `gongpei up` can die and the platform rides it out: PostgreSQL and the broker
are restarted (with backoff), a killed supervisor leaves no orphan and the next start works, the
demo feeder cannot bring the platform down; `gongpei status` and /healthz say what is down since
when, and /metrics counts the restarts. Real `kill -9`s on a real `gongpei up` (demo on)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from entrypoints.platform import STATE_FILE, Platform
from infra.county_file import load_county
from infra.embedded import pid_running, processes_in
from loadtest.demo import DemoTraffic
from loadtest.traffic import CountyTraffic, county_time
from tests.conftest import bearer, db_fetch, wait_for
from tests.integration.test_demo import ROOT, bare_env, gongpei


@dataclass
class Up:
    """A `gongpei up` (demo on) run as an operator runs it, in a state folder of its own."""

    state_dir: Path
    out: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.out, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "entrypoints.cli", "up", "--state-dir", str(self.state_dir),
                 "--port", "0"], cwd=ROOT, env=bare_env(), stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True)
        started = self.out.read_text().count("Gongpei is up")
        wait_for(lambda: self.out.read_text().count("Gongpei is up") > started
                 or self.proc.poll() is not None, 90, "gongpei up to start")  # type: ignore[union-attr]
        assert self.proc.poll() is None, self.out.read_text()[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def state(self) -> dict[str, Any]:
        return dict(json.loads((self.state_dir / STATE_FILE).read_text()))

    @property
    def api(self) -> str:
        return str(self.state()["api_url"])

    def token(self, name: str) -> str:
        return (self.state_dir / "demo-tokens" / name).read_text().strip()

    def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        async def go() -> list[asyncpg.Record]:
            conn = await asyncpg.connect(self.state()["env"]["DATABASE_URL"])
            try:
                return await conn.fetch(sql, *args)
            finally:
                await conn.close()
        return asyncio.run(go())

    def restarts(self) -> dict[str, int]:
        s = self.state()
        return {"postgres": s["postgres"]["restarts"], "broker": s["broker"]["restarts"],
                **{name: p["restarts"] for name, p in s["processes"].items()}}

    def metric_restarts(self, process: str) -> float:
        text = httpx.get(f"{self.api}/metrics", timeout=10).text
        line = f'gongpei_process_restarts_total{{process="{process}"}} '
        return float(next(x for x in text.splitlines() if x.startswith(line)).split()[-1])

    def registration(self) -> tuple[str, str, dict[str, Any]]:
        """A new parcel's registration: (its brand's system token, waybill, event)."""
        county = load_county(Path(self.state()["county_file"]))
        parcel, event = CountyTraffic(county, seed=time.time_ns() % 10**6).register(
            county_time(county, datetime.now(UTC)))
        return self.token(f"{parcel.brand}-system"), parcel.waybill, event

    def upload(self, token: str, event: dict[str, Any]) -> httpx.Response:
        return httpx.post(f"{self.api}/v1/scan-batches", json={"events": [event]},
                          headers=bearer(token), timeout=15)


@pytest.fixture(scope="module")
def up(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Up]:
    folder = tmp_path_factory.mktemp("supervised")
    u = Up(folder / "state", folder / "up.out")
    try:
        u.start()
        yield u
    finally:
        u.stop()


def healthz(up: Up) -> httpx.Response | None:
    try:
        return httpx.get(f"{up.api}/healthz", timeout=5)
    except httpx.HTTPError:
        return None


def test_given_demo_traffic_when_the_api_is_killed_then_the_supervisor_stays_up_and_restarts_it(
        up: Up) -> None:
    before = up.state()["processes"]["api"]["pid"]
    journal = up.fetch("SELECT count(*) AS n FROM journal")[0]["n"]
    os.kill(before, signal.SIGKILL)
    wait_for(lambda: up.state()["processes"]["api"]["pid"] != before
             and (r := healthz(up)) is not None and r.status_code == 200, 30, "the API back")
    assert up.proc is not None and up.proc.poll() is None, up.out.read_text()[-3000:]
    assert up.restarts()["api"] == 1 and up.metric_restarts("api") == 1
    # The demo goes on feeding the county day through the new API.
    wait_for(lambda: up.fetch("SELECT count(*) AS n FROM journal")[0]["n"] > journal + 2, 20,
             "demo uploads after the restart")


def test_given_the_api_down_when_the_demo_steps_then_it_keeps_what_it_could_not_send_and_sends_it(
        platform: Platform, tmp_path: Path) -> None:
    demo = DemoTraffic(platform, tmp_path, seed=5)
    demo.prepare()
    tried: set[str] = set()
    demo.client.event_hooks["request"].append(lambda request: tried.update(
        e["event_id"] for e in json.loads(request.content)["events"]))
    demo.step()
    platform.children["api"].kill()
    try:
        for _ in range(3):
            demo.step()  # the API is gone: no exception, and nothing forgotten
        assert demo.unsent
    finally:
        platform.restart_service("api")
        platform.wait_ready(60)
    demo.step()
    assert not demo.unsent
    stored = db_fetch(platform, "SELECT count(*) AS n FROM journal WHERE event_id = ANY($1)",
                      sorted(tried))
    assert stored[0]["n"] == len(tried) > 0


def test_given_postgres_killed_and_not_startable_then_503_and_down_since_until_it_comes_back(
        up: Up) -> None:
    before = up.state()
    restarts = up.restarts()
    data = up.state_dir / "pg"
    token, waybill, event = up.registration()
    # kill -9 of the postmaster alone, as an operator's slip or the OOM killer would; and a data
    # folder PostgreSQL refuses (mode 0777) so the supervisor's restarts fail for a while.
    os.kill(before["postgres"]["pid"], signal.SIGKILL)
    data.chmod(0o777)
    try:
        down = wait_for(lambda: (r := healthz(up)) is not None and r.status_code == 503
                        and r.json()["down"]["postgres"]["since"] and r, 20, "/healthz 503")
        assert down.json()["status"] == "down" and down.headers["Retry-After"]
        refused = up.upload(token, event)
        assert refused.status_code == 503 and refused.headers["Retry-After"], refused.text
        wait_for(lambda: up.state()["postgres"]["down_since"], 10, "the supervisor to notice")
        status = gongpei("status", "--state-dir", str(up.state_dir), cwd=ROOT)
        assert status.returncode == 1
        line = next(x for x in status.stdout.splitlines() if x.split()[:1] == ["database"])
        assert "DOWN since 20" in line and "/healthz 503" in status.stdout, status.stdout
        # The supervisor tries, fails, says why, and backs off; it stays up.
        failed = wait_for(lambda: up.state()["postgres"]["last_error"], 20, "a failed restart")
        assert "PostgreSQL exited" in failed
        assert up.proc is not None and up.proc.poll() is None
        assert up.state()["postgres"]["restarts"] == restarts["postgres"]  # none worked yet
        assert "last restart: EmbeddedError" in gongpei(
            "status", "--state-dir", str(up.state_dir), cwd=ROOT).stdout
    finally:
        data.chmod(0o700)

    def uploaded() -> bool:
        r = up.upload(token, event)
        assert r.status_code in (200, 503), r.text  # never a 2xx for what was not stored
        return r.status_code == 200
    wait_for(uploaded, 45, "the upload taken once PostgreSQL is back")
    assert up.fetch("SELECT count(*) AS n FROM journal WHERE event_id = $1",
                    event["event_id"])[0]["n"] == 1
    # The supervisor writes its state once it has seen PostgreSQL ready, which may be a moment
    # after the API's pool already reconnected.
    wait_for(lambda: (st := up.state())["postgres"]["pid"] != before["postgres"]["pid"]
             and st["postgres"]["down_since"] is None and st, 20,
             "the supervisor to record the new PostgreSQL")
    assert up.restarts() == {**restarts, "postgres": restarts["postgres"] + 1}  # the rest rode it
    assert up.metric_restarts("postgres") == restarts["postgres"] + 1
    wait_for(lambda: (r := healthz(up)) is not None and r.json() == {"status": "ok"}, 20,
             "/healthz ok")
    manager = bearer(up.token("manager"))
    wait_for(lambda: httpx.get(f"{up.api}/v1/parcels/{waybill}", headers=manager,
                               timeout=10).status_code == 200, 30, "the parcel projected")


def test_given_the_broker_killed_then_it_is_restarted_empty_and_new_events_are_projected(
        up: Up) -> None:
    restarts = up.restarts()
    os.kill(up.state()["broker"]["pid"], signal.SIGKILL)
    wait_for(lambda: up.restarts()["broker"] == restarts["broker"] + 1
             and pid_running(up.state()["broker"]["pid"]), 20, "the broker restarted")
    token, waybill, event = up.registration()
    assert up.upload(token, event).status_code == 200
    manager = bearer(up.token("manager"))
    wait_for(lambda: httpx.get(f"{up.api}/v1/parcels/{waybill}", headers=manager,
                               timeout=10).status_code == 200, 60, "the parcel projected")
    text = httpx.get(f"{up.api}/metrics", timeout=10).text
    assert 'gongpei_process_restarts_total{process="broker"} 1.0' in text
    lost = next(x for x in text.splitlines() if x.startswith("gongpei_relay_broker_data_loss_total"))
    assert float(lost.split()[-1]) >= 1  # the relay noticed and re-published the journal
    assert up.restarts() == {**restarts, "broker": restarts["broker"] + 1}  # the rest rode it


def test_given_a_gateway_down_and_not_yet_restarted_then_healthz_is_degraded_and_status_says_so(
        up: Up) -> None:
    assert up.proc is not None
    gateway = up.state()["processes"]["sms-gateway-tencent"]["pid"]
    os.kill(up.proc.pid, signal.SIGSTOP)  # the supervisor cannot notice for a moment
    try:
        os.kill(gateway, signal.SIGKILL)
        wait_for(lambda: not pid_running(gateway), 10, "the gateway gone")
        r = healthz(up)
        assert r is not None and r.status_code == 200, r  # the API still takes uploads
        assert r.json() == {"status": "degraded", "down": {"sms-gateway-tencent": {"since": None}}}
        status = gongpei("status", "--state-dir", str(up.state_dir), cwd=ROOT)
        line = next(x for x in status.stdout.splitlines() if x.startswith("  sms-gateway-tencent"))
        assert status.returncode == 1 and "NO" in line and "DOWN (not yet noticed)" in line, line
    finally:
        os.kill(up.proc.pid, signal.SIGCONT)
    wait_for(lambda: (r := healthz(up)) is not None and r.json() == {"status": "ok"}, 20,
             "the gateway restarted")
    assert pid_running(up.state()["processes"]["sms-gateway-tencent"]["pid"])


def test_given_the_supervisor_killed_then_no_process_is_left_and_a_new_start_works(up: Up) -> None:
    s = up.state()
    pids = [s["postgres"]["pid"], s["broker"]["pid"], *(p["pid"] for p in s["processes"].values())]
    assert up.proc is not None
    os.kill(up.proc.pid, signal.SIGKILL)
    up.proc.wait(5)
    wait_for(lambda: not any(pid_running(pid) for pid in pids)
             and not processes_in(up.state_dir / "pg"), 30, "every child of the dead supervisor gone")
    manager = up.token("manager")
    up.start()  # the same state folder
    r = httpx.get(f"{up.api}/v1/parcels", params={"limit": 1}, headers=bearer(manager), timeout=10)
    assert r.status_code == 200, r.text
    assert up.restarts() == dict.fromkeys(up.restarts(), 0)
    assert up.metric_restarts("postgres") == up.metric_restarts("api") == 0  # a new count
