"""Disk and memory: the supervisor's figures are on /metrics, its warnings in /healthz and
`gongpei status` when a threshold is crossed; and a PostgreSQL disk that fills up (a real tmpfs
of 160 MiB) gets uploads a 503 with Retry-After — `storage_full` when a write finds no room,
`unavailable` when PostgreSQL could not write its WAL, stopped, and cannot start until there is
room — never a 500 nor a 2xx for an event not stored; it keeps everything acknowledged and takes
uploads again by itself once space is freed (the short form of `loadtest/disk_full.py`)."""

from __future__ import annotations

import argparse
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from entrypoints.platform import Platform
from infra.capacity import CapacityLimits
from loadtest.bench_platform import THROUGHPUT_SETTINGS
from loadtest.disk_full import mount_tmpfs, run, unmount
from tests.conftest import wait_for
from tests.integration.test_demo import ROOT, gongpei


def metric(text: str, series: str) -> float:
    return float(next(x for x in text.splitlines() if x.startswith(series + " ")).split()[-1])


@pytest.fixture
def low_thresholds(platform: Platform) -> Iterator[CapacityLimits]:
    """The session platform's supervisor told to warn at once (every disk is short of a
    petabyte free; the broker holds more than a millionth of the memory), then put back."""
    assert platform.capacity is not None
    saved = platform.capacity.limits
    platform.capacity.limits = CapacityLimits(disk_warn_free_mb=1e9,
                                              broker_memory_warn_percent=0.0001)
    try:
        yield platform.capacity.limits
    finally:
        platform.capacity.limits = saved
        platform.check_capacity(now=True)


def test_given_the_supervisor_samples_then_disk_and_broker_memory_are_on_metrics(
        platform: Platform, client: httpx.Client) -> None:
    platform.check_capacity(now=True)
    text = client.get("/metrics").text
    free = metric(text, 'gongpei_disk_free_bytes{disk="postgres"}')
    size = metric(text, 'gongpei_disk_size_bytes{disk="postgres"}')
    st = os.statvfs(platform.state_dir / "pg")
    assert 0 < free <= size and abs(free - st.f_bavail * st.f_frsize) < 256 * 2**20
    rss = metric(text, 'gongpei_process_resident_bytes{process="broker"}')
    total = metric(text, 'gongpei_machine_memory_bytes{kind="total"}')
    assert 1 << 20 < rss < total and metric(text, 'gongpei_machine_memory_bytes{kind="available"}')


def test_given_low_thresholds_then_healthz_and_status_warn_and_it_clears_when_they_are_back(
        platform: Platform, client: httpx.Client, low_thresholds: CapacityLimits) -> None:
    platform.check_capacity(now=True)
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "degraded", r.text
    disk, broker = r.json()["warnings"]
    assert disk.startswith("disk ") and "% full: " in disk and "under PostgreSQL" in disk
    assert broker.startswith("broker memory ") and "% of the machine" in broker
    out = gongpei("status", "--state-dir", str(platform.state_dir), cwd=ROOT)
    assert out.returncode == 0, out.stdout + out.stderr  # a warning is not a part down
    assert f"  WARNING   {disk}" in out.stdout and f"  WARNING   {broker}" in out.stdout
    assert "  capacity  disk " in out.stdout and "broker " in out.stdout
    platform.capacity.limits = CapacityLimits()  # type: ignore[union-attr]
    platform.check_capacity(now=True)
    wait_for(lambda: not any(w.startswith("broker") for w in
                             client.get("/healthz").json().get("warnings", [])),
             10, "the broker warning to clear")


def mountable(path: Path) -> bool:
    if os.geteuid() != 0:
        return False
    try:
        mount_tmpfs(path, 1)
    except (subprocess.CalledProcessError, OSError):
        return False
    unmount(path)
    return True


def test_given_the_disk_under_postgresql_fills_then_503_storage_full_nothing_lost_and_it_recovers(
        tmp_path: Path) -> None:
    state = tmp_path / "state"
    if not mountable(state):
        pytest.skip("needs root and a tmpfs mount, for a disk of a fixed small size")
    mount_tmpfs(state, 160)
    # The API alone (and the SMS gateways): the journal is what a full disk must not lose.
    plat = Platform(state, api_port=0, services=("api",), settings_changes=THROUGHPUT_SETTINGS)
    try:
        plat.start(timeout=90)
        figures = run(plat, argparse.Namespace(
            size_mb=160, headroom_mb=16, batch=200, fill_seconds=90, refused_for=3,
            recover_seconds=60, seed=time.time_ns() % 10**6))
    finally:
        plat.stop()
        unmount(state)
    assert figures["answers_500"] == 0, figures  # never a 500
    assert figures["refusal_codes"] and set(figures["refusal_codes"]) <= {  # type: ignore[arg-type]
        "storage_full", "unavailable"}, figures
    assert figures["refusals_without_retry_after"] == 0, figures
    # Said while full: the disk warning (PostgreSQL may have crashed on its WAL, given back the
    # segment it could not finish, and be unable to start again: then 503 "down" as well).
    assert '"warnings":["disk ' in str(figures["healthz_when_full"]), figures
    assert figures["seconds_to_recover"] is not None and figures["batches_never_taken"] == 0, figures
    assert figures["acknowledged_total"] and figures["lost"] == 0, figures  # 2xx means stored
