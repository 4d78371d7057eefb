"""CPU time of process trees, from /proc/<pid>/stat (Linux only), for the load drivers.

A tree's CPU is its root's own user + system time, what it has reaped from children that exited
(cutime + cstime: PostgreSQL's backends that came and went), and the same for every live
descendant. Take `snapshot` before and after and subtract: a process that started and ended in
between is counted through its parent's reaped time."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def _stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, own + reaped CPU seconds) of one process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2:].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, (utime + stime + cutime + cstime) / TICKS


def _all() -> dict[int, tuple[int, float]]:
    out = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (st := _stat(int(entry.name))) is not None:
            out[int(entry.name)] = st
    return out


def tree_seconds(roots: Iterable[int], table: Mapping[int, tuple[int, float]] | None = None) -> float:
    """CPU seconds used so far by these processes and all their live and reaped descendants."""
    table = table if table is not None else _all()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen: set[int] = set()
    todo = [r for r in roots if r in table]
    total = 0.0
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        total += table[pid][1]
        todo.extend(children.get(pid, ()))
    return total


def snapshot(groups: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """CPU seconds so far per named group of process roots (one pass over /proc)."""
    table = _all()
    return {name: tree_seconds(pids, table) for name, pids in groups.items()}


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    return {name: after[name] - before.get(name, 0.0) for name in after}


def _rss_kb(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def rss_mb(groups: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """Resident memory (MB) per named group of process roots, their live descendants included."""
    table = _all()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    out = {}
    for name, roots in groups.items():
        seen: set[int] = set()
        todo = [r for r in roots if r in table]
        while todo:
            pid = todo.pop()
            if pid not in seen:
                seen.add(pid)
                todo.extend(children.get(pid, ()))
        out[name] = sum(_rss_kb(p) for p in seen) / 1024
    return out
