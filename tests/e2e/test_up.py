"""The README's first command, from a fresh clone: it comes up, serves, moves parcels, stops clean."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import psutil
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def clone(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("clone") / "gongpei"
    subprocess.run(["git", "clone", "-q", "--local", str(ROOT), str(dest)], check=True)
    return dest


class Output:
    """Collects a child's output on a thread so the test can wait for a line without blocking."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self.thread = threading.Thread(target=self._pump, args=(proc,), daemon=True)
        self.thread.start()

    def _pump(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line)

    def text(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float, proc: subprocess.Popen[str]) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.text()):
                return m
            if proc.poll() is not None:
                break
            time.sleep(0.2)
        raise AssertionError(f"no {pattern!r} within {timeout} s; output:\n{self.text()[-4000:]}")


def test_given_a_fresh_clone_when_bin_up_runs_then_it_serves_moves_parcels_and_stops_clean(
        clone: Path) -> None:
    state = clone / ".state"
    proc = subprocess.Popen(["./bin/up", "--port", "0"], cwd=clone, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    out = Output(proc)
    descendants: list[psutil.Process] = []
    try:
        # The first run creates the clone's own virtual environment: allow for the install.
        api = out.wait_for(r"API\s+(http://127\.0\.0\.1:\d+)", 600, proc).group(1)
        descendants = psutil.Process(proc.pid).children(recursive=True)
        token = (state / "demo-tokens" / "manager").read_text().strip()
        with httpx.Client(base_url=api, headers={"Authorization": f"Bearer {token}"}) as c:
            assert c.get("/healthz").json() == {"status": "ok"}
            assert c.get("/openapi.json").status_code == 200
            deadline = time.monotonic() + 60
            moved: set[str] = set()
            while time.monotonic() < deadline and len(moved) < 3:
                parcels = c.get("/v1/parcels", params={"limit": 200}).json()["parcels"]
                moved = {p["status"] for p in parcels} - {"info_received"}
                time.sleep(1)
            assert len(moved) >= 3, f"demo parcels did not move: {moved}"
            # The demo county names each brand's waybill format: ZTO's system cannot register
            # a waybill that is not one of ZTO's.
            zto = (state / "demo-tokens" / "ZTO-system").read_text().strip()
            r = c.post("/v1/scan-batches", headers={"Authorization": f"Bearer {zto}"}, json={
                "events": [{"event_id": str(uuid.uuid4()), "type": "parcel.registered",
                            "schema_version": 2, "occurred_at": datetime.now(UTC).isoformat(),
                            "brand": "ZTO", "operator_id": "manifest",
                            "payload": {"waybill": "YT1234567890123",
                                        "recipient_phone": "13812345678",
                                        "destination_village": "VIL-XILIU-01", "weight_g": 800}}]})
            assert r.json()["results"][0]["reason"] == "waybill_pattern_mismatch", r.text
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    assert proc.returncode == 0, out.text()[-3000:]
    time.sleep(1)
    left = [p for p in descendants if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {[(p.pid, p.name()) for p in left]}"
