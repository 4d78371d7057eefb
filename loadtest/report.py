"""The run's figures, from what the driver saw, the sampler's polls and the journal's own clocks;
printed, and written with PNG plots to docs/benchmarks/<scenario>.md."""

from __future__ import annotations

import bisect
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PROJECTIONS = ("tracking", "sla", "ledger", "sms")


def pct(values: Sequence[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`; NaN when there are none."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, math.ceil(q / 100 * len(s)) - 1))]


@dataclass
class Figures:
    meta: dict[str, Any]
    events_sent: int = 0
    events_accepted: int = 0
    results: dict[str, int] = field(default_factory=dict)
    replay_s: float = 0.0
    settle_s: float = 0.0
    ingest_latency_ms: dict[str, float] = field(default_factory=dict)
    sustained_eps: float = 0.0
    peak_eps_10s: float = 0.0
    slip_s: dict[str, float] = field(default_factory=dict)
    freshness_s: dict[str, dict[str, float]] = field(default_factory=dict)
    sms: dict[str, float] = field(default_factory=dict)
    lag: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    cpu_s: dict[str, float] = field(default_factory=dict)
    rss_mb: dict[str, float] = field(default_factory=dict)
    floors: dict[str, float] = field(default_factory=dict)
    oracle: dict[str, int] = field(default_factory=dict)
    diffs: list[str] = field(default_factory=list)
    rate: list[tuple[float, float]] = field(default_factory=list)


def positions(samples: Sequence[Mapping[str, float]], eligible: Mapping[str, Sequence[int]]
              ) -> dict[str, list[float]]:
    """Each poll's position of every projection as a journal seq: the followers' cursors are
    seqs; tracking and SLA count rows, so the n-th of the journal's events they keep stands for
    n rows (they apply partitions in parallel: an approximation that is exact once caught up)."""
    out: dict[str, list[float]] = {}
    for name in PROJECTIONS:
        seqs = eligible[name]
        pos, best = [], 0.0
        for s in samples:
            v = s[name]
            if name in ("tracking", "sla"):
                n = int(v)
                v = float(seqs[n - 1]) if 0 < n <= len(seqs) else (float(seqs[-1]) if n else 0.0)
            best = max(best, v)
            pos.append(best)
        out[name] = pos
    return out


def freshness(samples: Sequence[Mapping[str, float]], pos: Mapping[str, list[float]],
              events: Mapping[str, Sequence[tuple[int, float]]]) -> dict[str, dict[str, float]]:
    """Per projection, p50/p99 seconds from an event's commit (recorded_at) to the first poll
    that saw the projection hold it (polls every `every` s: that much resolution)."""
    times = [s["t"] for s in samples]
    out = {}
    for name in PROJECTIONS:
        p = pos[name]
        waits = []
        for seq, recorded in events[name]:
            i = bisect.bisect_left(p, seq)
            if i < len(times):
                waits.append(max(0.0, times[i] - recorded))
        out[name] = {"p50": pct(waits, 50), "p99": pct(waits, 99), "n": float(len(waits))}
    return out


def ingest_rate(acks: Sequence[tuple[float, int]], window: float = 10.0) -> tuple[float, list[tuple[float, float]]]:
    """Peak events/s over any `window` s, and the per-window series, from (ack s, events)."""
    if not acks:
        return 0.0, []
    buckets: dict[int, int] = {}
    for t, n in acks:
        buckets[int(t // window)] = buckets.get(int(t // window), 0) + n
    series = [(k * window, v / window) for k, v in sorted(buckets.items())]
    return max(v for _, v in series), series


def write(fig: Figures, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    name = fig.meta.get("name", fig.meta["scenario"])
    plots = _plots(fig, folder, name)
    md = folder / f"{name}.md"
    md.write_text(render(fig, plots), encoding="utf-8")
    return md


def _plots(fig: Figures, folder: Path, name: str) -> list[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out = []
    f, ax = plt.subplots(figsize=(8, 3.5))
    for proj, series in fig.lag.items():
        if series:
            ax.plot([t for t, _ in series], [v for _, v in series], label=proj)
    ax.set_xlabel("s since the first upload")
    ax.set_ylabel("events of its types not yet held")
    ax.set_title(f"{name}: lag behind the journal")
    ax.legend()
    f.tight_layout()
    f.savefig(folder / f"{name}-lag.png", dpi=90)
    plt.close(f)
    out.append(f"{name}-lag.png")
    if fig.rate:
        f, ax = plt.subplots(figsize=(8, 3.5))
        ax.plot([t for t, _ in fig.rate], [v for _, v in fig.rate])
        ax.set_xlabel("s since the first upload")
        ax.set_ylabel("events/s acknowledged (10 s windows)")
        ax.set_title(f"{name}: ingest rate")
        f.tight_layout()
        f.savefig(folder / f"{name}-rate.png", dpi=90)
        plt.close(f)
        out.append(f"{name}-rate.png")
    return out


def _f(v: float | None, digits: int = 2) -> str:
    return "—" if v is None or math.isnan(v) else f"{v:,.{digits}f}"


def _pair(d: Mapping[str, float], a: str, b: str, digits: int = 2) -> str:
    return f"{_f(d.get(a), digits)} / {_f(d.get(b), digits)}"


def render(fig: Figures, plots: Sequence[str]) -> str:
    m = fig.meta
    answers = ", ".join(f"{k} {v:,}" for k, v in sorted(fig.results.items()))
    lat = fig.ingest_latency_ms
    head = [
        ("command", f"`{m['command']}`"), ("date (UTC)", m["date"]), ("machine", m["machine"]),
        ("load before / after (`/proc/loadavg`)", f"{m['load_before']} / {m.get('load_after')}"),
        ("seed, driver", f"{m['seed']}, {m.get('driver', 'http')}"),
        ("scale, compression", (f"{m['scale']} of the county's volume; a county day in "
                               f"{m['compression']} wall minutes (x{1440 / m['compression']:.0f})")),
        ("county time replayed", f"{m['sim_from']} → {m['sim_to']}"),
        ("SMS gateways' latency", f"{m['latency']} s per call"),
    ]
    figures = [
        ("replay / settling after it (wall s)", f"{_f(fig.replay_s, 1)} / {_f(fig.settle_s, 1)}"),
        ("sustained events/s (sent ÷ replay time)", _f(fig.sustained_eps, 0)),
        ("peak events/s (10 s window of acknowledged uploads)", _f(fig.peak_eps_10s, 0)),
        ("uploads sent behind their schedule, p50 / p99 (s)", _pair(fig.slip_s, "p50", "p99", 1)),
        ("ingest latency p50 / p95 / p99 (ms, per batch)",
         f"{_f(lat.get('p50'), 0)} / {_f(lat.get('p95'), 0)} / {_f(lat.get('p99'), 0)}"),
        *((f"commit → {p} holds it, p50 / p99 (s)", _pair(v, "p50", "p99"))
          for p, v in fig.freshness_s.items()),
        ("arrival SMS: digest closed → submitted, p50 / p99 (s)",
         _pair(fig.sms, "after_window_p50", "after_window_p99")),
        ("arrival SMS: first parcel known → submitted, p50 / p99 (s)",
         _pair(fig.sms, "total_p50", "total_p99")),
        ("arrival SMS submitted", f"{int(fig.sms.get('submitted', 0)):,}"),
        *((k, _f(v, 0 if k.endswith("eps") else 4)) for k, v in fig.floors.items()),
    ]
    kinds: dict[str, int] = {}
    for d in fig.diffs:
        kind = " ".join(d.split()[:2]) if d.startswith(("SLA", "settlement")) else d.split(":")[0]
        kind = "SMS per household" if kind.startswith("SMS household") else kind
        kinds[kind] = kinds.get(kind, 0) + 1
    verdict = ("**No difference**: the platform's API agrees with the oracle on every check."
               if not fig.diffs else
               f"**{len(fig.diffs)} differences** ("
               + ", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())) + "; the first 40):")
    lines = [
        f"# Load harness: `{m['scenario']}`", "", str(m.get("about", "")), "",
        "| | |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in head), "",
        "## Oracle", "",
        (f"Events sent {fig.events_sent:,} in {m['uploads']:,} uploads from {m['devices']} devices;"
        f" answers: {answers}."), "",
        "| checked | count |", "| --- | --- |", *(f"| {k} | {v:,} |" for k, v in fig.oracle.items()),
        "", verdict, "", *(f"- {d}" for d in fig.diffs[:40]), "",
        "## Figures", "",
        "| figure | value |", "| --- | --- |", *(f"| {k} | {v} |" for k, v in figures), "",
        "| process | CPU s | peak RSS MB |", "| --- | --- | --- |",
        *(f"| {k} | {_f(fig.cpu_s.get(k), 1)} | {_f(fig.rss_mb.get(k), 0)} |"
          for k in sorted(set(fig.cpu_s) | set(fig.rss_mb))), "",
        *(f"![{p}]({p})" for p in plots), "",
        "How the figures are taken: [benchmarks.md](../benchmarks.md#the-load-harness-python--m-loadtest).",
        "",
    ]
    return "\n".join(lines)


def summary(fig: Figures) -> str:
    fr = ", ".join(f"{p} {_f(v['p50'])}/{_f(v['p99'])}" for p, v in fig.freshness_s.items())
    return (f"{fig.meta['scenario']}: {fig.events_sent:,} events sent, {fig.sustained_eps:,.0f} ev/s "
            f"sustained (peak {fig.peak_eps_10s:,.0f}), ingest p50/p95/p99 "
            f"{fig.ingest_latency_ms.get('p50', 0):.0f}/{fig.ingest_latency_ms.get('p95', 0):.0f}/"
            f"{fig.ingest_latency_ms.get('p99', 0):.0f} ms; freshness p50/p99 s: {fr}; "
            f"oracle differences: {len(fig.diffs)}")


def median(xs: Sequence[float]) -> float:
    return statistics.median(xs) if xs else float("nan")
