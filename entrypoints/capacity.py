"""The embedded supervisor's look at disk and memory: every CAPACITY_EVERY seconds it samples the
disk under PostgreSQL's data folder and the broker's memory, logs a warning when a threshold is
crossed (and when it is clear again), keeps the figures and warnings for the state file (so
`gongpei status` and /healthz say so) and writes them as gauges into the folder the API's
/metrics serves (docs/runtime.md, "Disk and memory")."""

from __future__ import annotations

import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from infra.capacity import CapacityLimits, CapacitySample, capacity_warnings, sample

log = logging.getLogger("gongpei.platform")
CAPACITY_EVERY = 10.0  # seconds between two samples
STATE_EVERY = 60.0     # the state file is rewritten at least this often while nothing changes
LOG_STEP = 5.0         # a warning is logged again when its figure has grown by this many points


class CapacityGauges:
    """The gauges of infra/capacity.py's figures, written as a multiprocess child would (see
    RestartCounter): mode `mostrecent`, so the supervisor's sample is the one served. Every
    series is written at the first sample, so the file's page is allocated while there is
    still room: a later write over a full disk only changes bytes in place."""

    def __init__(self, folder: Path) -> None:
        from prometheus_client.mmap_dict import MmapedDict

        self._file = MmapedDict(str(folder / f"gauge_mostrecent_supervisor-{os.getpid()}.db"))

    def write(self, s: CapacitySample) -> None:
        from prometheus_client.mmap_dict import mmap_key

        from projections.metrics import DISK_FREE, DISK_SIZE, MACHINE_MEMORY, PROCESS_MEMORY

        now = time.time()
        for family, label, value in (
                (DISK_FREE, "postgres", s.disk_free_bytes),
                (DISK_SIZE, "postgres", s.disk_size_bytes),
                (PROCESS_MEMORY, "broker", s.broker_rss_bytes or 0),
                (MACHINE_MEMORY, "total", s.memory_total_bytes),
                (MACHINE_MEMORY, "available", s.memory_available_bytes)):
            key = mmap_key(family._name, family._name, list(family._labelnames), [label],
                           family._documentation)
            self._file.write_value(key, float(value), now)

    def close(self) -> None:
        self._file.close()


class CapacityWatch:
    """Samples, judges against `limits`, and remembers what it last said."""

    def __init__(self, metrics_dir: Path | None, limits: CapacityLimits) -> None:
        self.limits = limits
        self.gauges = CapacityGauges(metrics_dir) if metrics_dir is not None else None
        self.last: CapacitySample | None = None
        self.warnings: list[str] = []
        self._due = float("-inf")     # monotonic time of the next sample
        self._stated = float("-inf")  # monotonic time the state file last had our figures
        self._logged: dict[str, float] = {}  # "disk", "broker": the % full last logged

    def due(self, now: float) -> bool:
        return now >= self._due

    def check(self, disk_path: Path, broker_pid: int | None) -> bool:
        """Sample now; True if the state file should be rewritten (the warnings changed, or it
        has not had fresh figures for STATE_EVERY seconds). Never raises."""
        now = time.monotonic()
        self._due = now + CAPACITY_EVERY
        try:
            s = sample(disk_path, broker_pid, datetime.now(UTC))
        except OSError as exc:  # the data folder is away for a moment: next time
            log.warning("could not sample disk and memory: %s", exc)
            return False
        self.last = s
        warnings = capacity_warnings(s, self.limits)
        changed = warnings != self.warnings
        self._log(s, warnings)
        self.warnings = warnings
        if self.gauges is not None:
            self.gauges.write(s)
        if changed or now - self._stated >= STATE_EVERY:
            self._stated = now
            return True
        return False

    def _log(self, s: CapacitySample, warnings: list[str]) -> None:
        """Each warning once, and again only when it got LOG_STEP points worse (or full): the
        log tells the story without a line every 10 s; and when it clears."""
        figure = {"disk": s.disk_used_percent, "broker": s.broker_memory_percent}
        for line in warnings:
            kind = line.split()[0]
            last = self._logged.get(kind)
            if last is None or figure[kind] >= last + LOG_STEP or (
                    figure[kind] >= 99.5 > last):
                log.warning("capacity: %s", line)
                self._logged[kind] = figure[kind]
        for kind in set(self._logged) - {line.split()[0] for line in warnings}:
            log.warning("capacity: %s back within its limit (%.0f%%)", kind, figure[kind])
            del self._logged[kind]

    def as_state(self) -> dict[str, object]:
        """What the state file holds for `gongpei status` and /healthz."""
        return {**(self.last.as_state() if self.last else {}), "warnings": self.warnings,
                "limits": {"disk_warn_free_mb": self.limits.disk_warn_free_mb,
                           "broker_memory_warn_percent": self.limits.broker_memory_warn_percent}}

    def close(self) -> None:
        if self.gauges is not None:
            self.gauges.close()


def status_lines(capacity: object) -> list[str]:
    """`gongpei status`'s lines for the state file's `capacity` record: the figures, then one
    WARNING line per warning."""
    from infra.capacity import size

    if not isinstance(capacity, dict) or not capacity.get("disk_size_bytes"):
        return []
    disk, free = int(capacity["disk_size_bytes"]), int(capacity.get("disk_free_bytes") or 0)
    rss, total = capacity.get("broker_rss_bytes"), int(capacity.get("memory_total_bytes") or 0)
    broker = (f"broker {size(int(rss))} resident"
              + (f" ({100 * int(rss) / total:.0f}% of {size(total)})" if total else "")
              if rss else "broker memory unknown")
    figures = (f"  capacity  disk {100 * (disk - free) / disk:.0f}% full ({size(free)} free of"
               f" {size(disk)}) under PostgreSQL; {broker}; sampled {capacity.get('at')}")
    lines = [figures]
    lines += [f"  WARNING   {w}" for w in capacity.get("warnings") or []]
    return lines
