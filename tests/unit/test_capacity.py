"""Disk and memory warnings: when the supervisor warns (thresholds from settings), what it says,
what `gongpei status` prints, and the state file staying writable on a full disk."""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path

import pytest

from entrypoints.capacity import CapacityWatch, status_lines
from infra.capacity import GIB, MIB, CapacityLimits, CapacitySample, capacity_warnings, sample
from infra.embedded import STATE_FILE, read_state, write_state
from infra.settings import Settings, SettingsError, capacity_from_env


def given(free: int, size: int = 16 * GIB, broker: int | None = 200 * MIB,
          memory: int = 24 * GIB) -> CapacitySample:
    return CapacitySample(at="2026-12-01T20:00:00+00:00", disk_path="/srv/state/pg",
                          disk_size_bytes=size, disk_free_bytes=free, broker_rss_bytes=broker,
                          memory_total_bytes=memory, memory_available_bytes=memory // 2)


def test_given_room_on_disk_and_a_small_broker_then_nothing_is_said() -> None:
    assert capacity_warnings(given(free=8 * GIB), CapacityLimits()) == []


def test_given_less_free_than_the_threshold_then_the_disk_warning_says_how_full() -> None:
    [line] = capacity_warnings(given(free=int(0.9 * GIB)), CapacityLimits(disk_warn_free_mb=1024))
    assert line.startswith("disk 94% full: 922 MiB free of 16.0 GiB under PostgreSQL")
    assert "warning below 1.0 GiB" in line


def test_given_exactly_the_threshold_free_then_no_warning_yet() -> None:
    assert capacity_warnings(given(free=1024 * MIB), CapacityLimits(disk_warn_free_mb=1024)) == []


def test_given_a_broker_holding_half_the_memory_then_it_warns_and_says_what_to_do() -> None:
    [line] = capacity_warnings(given(free=8 * GIB, broker=12 * GIB), CapacityLimits())
    assert line.startswith("broker memory 50% of the machine: 12.0 GiB of 24.0 GiB")
    assert "Kafka" in line


def test_given_no_broker_process_or_no_memory_figure_then_no_broker_warning() -> None:
    limits = CapacityLimits(broker_memory_warn_percent=0.001)
    assert capacity_warnings(given(free=8 * GIB, broker=None), limits) == []
    assert capacity_warnings(given(free=8 * GIB, memory=0), limits) == []


def test_given_both_then_both_are_said_disk_first() -> None:
    lines = capacity_warnings(given(free=0, broker=20 * GIB), CapacityLimits())
    assert [x.split()[0] for x in lines] == ["disk", "broker"]
    assert lines[0].startswith("disk 100% full: 0 MiB free")


def test_the_thresholds_come_from_the_environment_and_reach_the_children() -> None:
    env = {"GONGPEI_DISK_WARN_FREE_MB": "4096", "GONGPEI_BROKER_MEMORY_WARN_PERCENT": "30"}
    assert capacity_from_env(env) == {"disk_warn_free_mb": 4096.0,
                                      "broker_memory_warn_percent": 30.0}
    assert capacity_from_env({"GONGPEI_UPLOAD_BURST": "not read here"}) == {}
    with pytest.raises(SettingsError, match="GONGPEI_DISK_WARN_FREE_MB"):
        capacity_from_env({"GONGPEI_DISK_WARN_FREE_MB": "-1"})
    settings = Settings("postgresql://o@h/db", "x" * 16, "k:9092", disk_warn_free_mb=4096.0)
    assert settings.to_env()["GONGPEI_DISK_WARN_FREE_MB"] == "4096.0"
    defaults = Settings("postgresql://o@h/db", "x" * 16, "k:9092")
    assert (defaults.disk_warn_free_mb, defaults.broker_memory_warn_percent) == (1024.0, 50.0)


def test_a_sample_of_this_machine_has_a_disk_memory_and_our_own_resident_size(
        tmp_path: Path) -> None:
    s = sample(tmp_path, os.getpid(), now=datetime(2026, 12, 1))
    assert 0 <= s.disk_free_bytes <= s.disk_size_bytes and s.memory_total_bytes > 0
    assert s.broker_rss_bytes and 0 < s.broker_rss_bytes < s.memory_total_bytes
    assert sample(tmp_path, 2**22 + 7, now=datetime(2026, 12, 1)
                  ).broker_rss_bytes is None  # no such process


def test_the_watch_logs_a_warning_once_and_asks_for_the_state_file_when_it_changes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch = CapacityWatch(tmp_path, CapacityLimits(disk_warn_free_mb=10**12))  # always short
    assert watch.due(0.0)
    assert watch.check(tmp_path, os.getpid())          # new warning: write the state file
    assert not watch.due(watch._due - 1)
    assert not watch.check(tmp_path, os.getpid())      # same warning, state fresh: no write
    assert len([r for r in caplog.records if "capacity: disk" in r.message]) == 1
    state = watch.as_state()
    assert state["warnings"] == watch.warnings and state["disk_path"] == str(tmp_path)
    watch.limits = CapacityLimits(disk_warn_free_mb=0.001)
    assert watch.check(tmp_path, os.getpid()) and watch.warnings == []  # cleared: written
    assert any("capacity: disk back within its limit" in r.message for r in caplog.records)
    watch.close()
    assert list(tmp_path.glob("gauge_mostrecent_supervisor-*.db"))


def test_a_warning_is_logged_again_only_when_it_got_five_points_worse_or_full(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    watch = CapacityWatch(None, CapacityLimits(disk_warn_free_mb=4096))
    for free in (3.0, 2.9, 2.0, 1.9, 0.0009, 0.0008):  # GiB free of 16: 81, 82, 88, 88, 100, 100 %
        watch._log(given(free=int(free * GIB)), capacity_warnings(
            given(free=int(free * GIB)), watch.limits))
    logged = [r.message.split()[2] for r in caplog.records if r.message.startswith("capacity")]
    assert logged == ["81%", "88%", "100%"]


def test_status_prints_the_figures_and_each_warning() -> None:
    s = given(free=int(0.5 * GIB), broker=3 * GIB)
    lines = status_lines({**s.as_state(), "warnings": capacity_warnings(s, CapacityLimits())})
    assert lines[0].startswith("  capacity  disk 97% full (512 MiB free of 16.0 GiB) under"
                               " PostgreSQL; broker 3.0 GiB resident (12% of 24.0 GiB)")
    assert lines[1].startswith("  WARNING   disk 97% full") and len(lines) == 2
    assert status_lines(None) == [] and status_lines({"warnings": []}) == []


def test_the_state_file_is_rewritten_in_place_when_there_is_no_room_for_a_new_one(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_state(tmp_path, {"supervisor_pid": 1, "capacity": {"warnings": []}})
    assert (tmp_path / STATE_FILE).stat().st_size % 4096 == 0
    real_open = os.open

    def disk_full(path: object, flags: int, mode: int = 0o777) -> int:
        if str(path).endswith(".tmp"):
            raise OSError(28, "No space left on device")
        return real_open(path, flags, mode)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", disk_full)
    write_state(tmp_path, {"supervisor_pid": 1, "capacity": {"warnings": ["disk 100% full"]}})
    assert read_state(tmp_path) == {"supervisor_pid": 1,
                                    "capacity": {"warnings": ["disk 100% full"]}}
    assert json.loads((tmp_path / STATE_FILE).read_text())["supervisor_pid"] == 1
    longer = {"supervisor_pid": 1, "capacity": {"warnings": ["x" * 3000]}}  # into the spare block
    write_state(tmp_path, longer)
    assert read_state(tmp_path) == longer
    with pytest.raises(OSError):  # other errors are not swallowed
        monkeypatch.setattr(os, "open", lambda *a, **k: (_ for _ in ()).throw(OSError(13, "no")))
        write_state(tmp_path, {"supervisor_pid": 1})
