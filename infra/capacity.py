"""How full PostgreSQL's disk is and how much memory the in-memory broker holds: sampled by the
embedded supervisor (it knows the data folder and the broker's pid), turned into warnings before
either falls over. The sampling reads the filesystem and /proc; the judgement is pure."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class CapacityLimits:
    """When to warn (docs/runtime.md, "Disk and memory"): the settings of the same names."""

    # PostgreSQL stops taking writes when its disk is full (and its WAL alone may grow by up to
    # max_wal_size, 1 GiB, between checkpoints): warn while there is still room to act.
    disk_warn_free_mb: float = 1024.0
    # The embedded broker keeps every message in memory, with no retention: warn when it holds
    # this share of the machine's memory.
    broker_memory_warn_percent: float = 50.0


@dataclass(frozen=True)
class CapacitySample:
    """One look at the disk under PostgreSQL's data folder and at the broker's memory."""

    at: str                      # ISO time of the sample
    disk_path: str
    disk_size_bytes: int
    disk_free_bytes: int         # what an unprivileged writer (PostgreSQL) can still use
    broker_rss_bytes: int | None  # None: no broker process to look at
    memory_total_bytes: int
    memory_available_bytes: int

    @property
    def disk_used_percent(self) -> float:
        """As `df` counts it: what is used of what is used plus what is still available."""
        used = self.disk_size_bytes - self.disk_free_bytes
        return 100.0 * used / self.disk_size_bytes if self.disk_size_bytes else 0.0

    @property
    def broker_memory_percent(self) -> float:
        if not self.broker_rss_bytes or not self.memory_total_bytes:
            return 0.0
        return 100.0 * self.broker_rss_bytes / self.memory_total_bytes

    def as_state(self) -> dict[str, object]:
        return asdict(self)


def size(n: float) -> str:
    """Bytes for people: MiB below a GiB, else GiB with one decimal."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / MIB:.0f} MiB"


def capacity_warnings(sample: CapacitySample, limits: CapacityLimits) -> list[str]:
    """What an operator should hear about now, one sentence per problem (empty: nothing)."""
    out = []
    if sample.disk_size_bytes and sample.disk_free_bytes < limits.disk_warn_free_mb * MIB:
        out.append(
            f"disk {sample.disk_used_percent:.0f}% full: {size(sample.disk_free_bytes)} free of"
            f" {size(sample.disk_size_bytes)} under PostgreSQL (warning below"
            f" {size(limits.disk_warn_free_mb * MIB)}); free space before uploads are refused")
    if sample.broker_rss_bytes is not None and \
            sample.broker_memory_percent >= limits.broker_memory_warn_percent:
        out.append(
            f"broker memory {sample.broker_memory_percent:.0f}% of the machine:"
            f" {size(sample.broker_rss_bytes)} of {size(sample.memory_total_bytes)} (warning at"
            f" {limits.broker_memory_warn_percent:g}%); the in-memory broker keeps every event,"
            " move to a Kafka cluster before it runs out")
    return out


def _meminfo(field: str, text: str) -> int:
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def rss_bytes(pid: int | None) -> int | None:
    """The resident memory of process `pid` (None: no such process, or not readable)."""
    if pid is None:
        return None
    try:
        status = (Path("/proc") / str(pid) / "status").read_text()
    except OSError:
        return None
    found = _meminfo("VmRSS", status)
    return found or None


def sample(disk_path: Path, broker_pid: int | None, now: datetime) -> CapacitySample:
    """Look at the filesystem holding `disk_path` and at the broker process's memory."""
    st = os.statvfs(disk_path)
    try:
        meminfo = Path("/proc/meminfo").read_text()
    except OSError:  # not Linux: no memory figures, no memory warning
        meminfo = ""
    free = st.f_bavail * st.f_frsize
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    return CapacitySample(
        at=now.isoformat(), disk_path=str(disk_path),
        # size as `df` shows it: used + available (blocks reserved for root are not PostgreSQL's)
        disk_size_bytes=used + free, disk_free_bytes=free,
        broker_rss_bytes=rss_bytes(broker_pid),
        memory_total_bytes=_meminfo("MemTotal", meminfo),
        memory_available_bytes=_meminfo("MemAvailable", meminfo))
