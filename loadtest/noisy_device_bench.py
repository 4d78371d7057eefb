"""One noisy device against well-behaved ones, on the embedded stack: does the noisy one slow the
others down? Starts its own platform, then alternates phases of the same length — well-behaved
handhelds alone, and well-behaved handhelds while one noisy token hammers uploads of full batches
from several connections, ignoring Retry-After — and prints the well-behaved uploads' p50/p95
latency per kind of phase side by side, and what the noisy one got. Record the figures with
machine and date in docs/benchmarks.md.

    .venv/bin/python -m loadtest.noisy_device_bench --devices 8 --phase 20 --rounds 2
    .venv/bin/python -m loadtest.noisy_device_bench --unlimited   # the same without rate limits

The noisy device runs in a process of its own so that its client work does not stall the event
loop that times the well-behaved uploads (on 2 cores it still takes CPU from everything else).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import multiprocessing as mp
import os
import platform as pyplatform
import random
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import MutableMapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson

from api import auth
from domain.county import County
from entrypoints.platform import Platform
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.traffic import CountyTraffic, county_time

UNLIMITED: dict[str, object] = {"upload_concurrency": 10**6, "upload_burst": 10**9, "upload_per_minute": 1e12, "upload_events_burst": 10**12,
             "upload_events_per_minute": 1e15, "read_burst": 10**9, "read_per_minute": 1e12}


def scans(county: County, count: int, seed: int) -> list[dict[str, Any]]:
    """`count` scans of parcels walked down the chain within the last hours (no registrations:
    a scan before its manifest is accepted)."""
    traffic = CountyTraffic(county, seed=seed)
    t0 = county_time(county, datetime.now(UTC) - timedelta(hours=2))
    parcels = [traffic.register(t0)[0] for _ in range(count // 7 + 1)]
    out = [s for step in range(7) for p in parcels
           if (s := traffic.advance(p, t0 + timedelta(minutes=step + 1)))]
    return out[:count]


def bodies(events: list[dict[str, Any]], size: int) -> list[bytes]:
    return [orjson.dumps({"events": events[i:i + size]}) for i in range(0, len(events), size)]


def noisy_device(url: str, token: str, payloads: list[bytes], connections: int, nice: int,
                 go: Any, stop: Any, out: Any) -> None:
    """Hammer uploads from `connections` connections until `stop`, pausing while `go` is clear."""
    os.nice(nice)

    accepted_at: list[float] = []  # wall-clock ends of its accepted uploads

    async def main() -> Counter[str]:
        counts: Counter[str] = Counter()
        headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
        position = 0

        async def hammer(client: httpx.AsyncClient) -> None:
            nonlocal position
            while not stop.is_set():
                if not go.is_set():
                    await asyncio.sleep(0.05)
                    continue
                body = payloads[position % len(payloads)]
                position += 1
                try:
                    r = await client.post("/v1/scan-batches", content=body, headers=headers)
                    counts[str(r.status_code)] += 1
                    if r.status_code == 200:
                        counts["events_accepted"] += r.json()["accepted"]
                        accepted_at.append(time.time())
                except httpx.HTTPError:
                    counts["error"] += 1

        async with httpx.AsyncClient(base_url=url, timeout=60,
                                     limits=httpx.Limits(max_connections=connections)) as client:
            await asyncio.gather(*(hammer(client) for _ in range(connections)))
        return counts

    counts = dict(asyncio.run(main()))
    out.put((counts, accepted_at))


async def well_behaved(url: str, token: str, payloads: list[bytes], interval: float,
                       phase: list[str], stop: asyncio.Event,
                       samples: dict[str, list[tuple[float, float, float]]],
                       failures: Counter[str]) -> None:
    """Upload one batch every `interval` seconds; file each latency under the current phase."""
    headers = {"Authorization": f"Bearer {token}", "content-type": "application/json"}
    await asyncio.sleep(random.uniform(0, interval))  # devices do not upload in lockstep
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        i = 0
        while not stop.is_set():
            started, wall, label = time.perf_counter(), time.time(), phase[0]
            r = await client.post("/v1/scan-batches", content=payloads[i % len(payloads)],
                                  headers=headers)
            elapsed = time.perf_counter() - started
            i += 1
            if label and label == phase[0]:  # a sample that straddles two phases is dropped
                samples[label].append((wall, time.time(), elapsed * 1000))
                if r.status_code != 200:
                    failures[f"{label}:{r.status_code}"] += 1
            await asyncio.sleep(max(0.0, interval - elapsed))


async def caught_up(plat: Platform, timeout: float = 180.0) -> None:
    """Wait until the tracking read model holds every journalled event."""
    assert plat.settings is not None
    conn = await asyncpg.connect(plat.settings.database_url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and await conn.fetchval(
                "SELECT count(*) FROM tracking_events") < await conn.fetchval(
                "SELECT count(*) FROM journal"):
            await asyncio.sleep(0.5)
    finally:
        await conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pct(values: list[float], p: float) -> float:
    if len(values) < 2:
        return values[0] if values else float("nan")
    return statistics.quantiles(values, n=100, method="inclusive")[int(p) - 1]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    county = load_county(DEMO_COUNTY)
    state = Path(tempfile.mkdtemp(prefix="gongpei-noisy-"))
    plat = Platform(state, api_port=0, settings_changes=UNLIMITED if args.unlimited else {})
    await asyncio.to_thread(plat.start, 90)
    try:
        assert plat.settings is not None
        conn = await asyncpg.connect(plat.settings.database_url)
        brands = list(county.brands)
        devices = [(await auth.create(conn, role="scanner", name=f"pda-{i:03d}", brands=brands))[1]
                   for i in range(args.devices)]
        noisy = (await auth.create(conn, role="scanner", name="pda-noisy", brands=brands))[1]
        await conn.close()
        per_device = int(args.phase * args.rounds * 2 / args.interval + 2) * args.batch
        quiet_payloads = [bodies(scans(county, per_device, seed=100 + i), args.batch)
                          for i in range(args.devices)]
        noisy_payloads = bodies(scans(county, args.noisy_events, seed=99), 500)

        ctx = mp.get_context("spawn")
        go, stop_noisy, out = ctx.Event(), ctx.Event(), ctx.Queue()
        proc = ctx.Process(target=noisy_device, args=(
            plat.api_url, noisy, noisy_payloads, args.noisy_connections, args.noisy_nice, go,
            stop_noisy, out))
        proc.start()
        phase = [""]
        samples: dict[str, list[tuple[float, float, float]]] = {"alone": [], "with noisy": []}
        failures: Counter[str] = Counter()
        stop = asyncio.Event()
        tasks = [asyncio.create_task(well_behaved(plat.api_url, t, p, args.interval, phase, stop,
                                                  samples, failures))
                 for t, p in zip(devices, quiet_payloads)]
        await asyncio.sleep(args.interval + 1)  # every device has started
        if args.drain:
            # Let the noisy one use up its burst first, and the platform digest what it let in:
            # what remains is the cost of refusing it.
            go.set()
            await asyncio.sleep(args.drain)
            go.clear()
            await caught_up(plat)
        api = plat.children["api"].proc
        assert api is not None
        api_cpu: dict[str, float] = {"alone": 0.0, "with noisy": 0.0}
        for _ in range(args.rounds):
            for label in ("alone", "with noisy"):
                if label == "with noisy":
                    go.set()
                phase[0] = label
                cpu = cpu_seconds(api.pid)
                await asyncio.sleep(args.phase)
                api_cpu[label] += cpu_seconds(api.pid) - cpu
                phase[0] = ""
                go.clear()
                await asyncio.sleep(args.interval + 1)  # let the in-flight requests finish
        stop.set()
        stop_noisy.set()
        await asyncio.gather(*tasks)
        noisy_counts, accepted_at = await asyncio.to_thread(out.get, True, 120)
        proc.join(30)
        # "refused only": the noisy device hammered, but none of its uploads was being let in
        # (none accepted while this sample ran, nor within the half second after it).
        accepted_at.sort()

        def overlaps(start: float, end: float) -> bool:
            i = bisect.bisect_left(accepted_at, start)
            return i < len(accepted_at) and accepted_at[i] <= end + 0.5

        groups = {"alone": samples["alone"], "with noisy": samples["with noisy"],
                  "refused only": [x for x in samples["with noisy"] if not overlaps(x[0], x[1])]}
        figures: dict[str, Any] = {}
        for label, values in groups.items():
            ms = [v[2] for v in values]
            figures[label] = {"n": float(len(ms)), "p50_ms": pct(ms, 50), "p95_ms": pct(ms, 95),
                              "max_ms": max(ms, default=0.0)}
            figures[label]["api_cpu_pct"] = 100 * api_cpu.get(label, float("nan")) / (
                args.phase * args.rounds)
        figures["noisy"] = noisy_counts
        figures["well_behaved_failures"] = dict(failures)
        return figures
    finally:
        await asyncio.to_thread(plat.stop)


def refusal_cost(calls: int = 5000) -> dict[str, float]:
    """CPU per refused request inside one API process (no network, no database): an upload,
    refused by the middleware before routing, and a read, refused by the dependency after it."""
    from api.auth import Principal, hash_token
    from api.limits import READ, UPLOAD
    from api.main import create_app
    from infra.settings import Settings

    settings = Settings(database_url="postgresql://bench@127.0.0.1/none", app_password="x" * 16,
                        kafka_bootstrap_servers="none", upload_per_minute=1e-6,
                        read_per_minute=1e-6)
    app = create_app(settings, load_county(DEMO_COUNTY))
    app.state.pool = None  # never reached: every request here is refused before the database
    limits = app.state.limits
    limits.remember(hash_token("gp_bench"), Principal(7, "device", "scanner", "pda", frozenset()))
    while limits.take(7, UPLOAD) is None:
        limits.release(7, UPLOAD)
    while limits.take(7, READ) is None:
        pass
    body = orjson.dumps({"events": [{}] * 500})

    async def call(method: str, path: str) -> int:
        sent: list[MutableMapping[str, Any]] = []
        scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(),
                 "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
                 "headers": [(b"authorization", b"Bearer gp_bench"),
                             (b"content-type", b"application/json")],
                 "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000), "state": {}}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: MutableMapping[str, Any]) -> None:
            sent.append(message)

        await app(scope, receive, send)
        return int(sent[0]["status"])

    async def timed(method: str, path: str) -> float:
        assert await call(method, path) == 429
        started = time.perf_counter()
        for _ in range(calls):
            await call(method, path)
        return (time.perf_counter() - started) / calls * 1e6

    async def both() -> dict[str, float]:
        return {"refused upload (middleware), us": await timed("POST", "/v1/scan-batches"),
                "refused read (dependency), us": await timed("GET", "/v1/parcels")}

    return asyncio.run(both())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--devices", type=int, default=8, help="well-behaved handhelds")
    ap.add_argument("--interval", type=float, default=1.0, help="seconds between their uploads")
    ap.add_argument("--batch", type=int, default=50, help="events per well-behaved upload")
    ap.add_argument("--phase", type=float, default=20.0, help="seconds per phase")
    ap.add_argument("--rounds", type=int, default=2, help="alone/with-noisy pairs")
    ap.add_argument("--noisy-connections", type=int, default=4)
    ap.add_argument("--noisy-events", type=int, default=50_000,
                    help="distinct events the noisy device cycles through, in 500-event batches")
    ap.add_argument("--noisy-nice", type=int, default=0,
                    help="niceness of the noisy client (19: it mostly gets CPU the platform"
                         " leaves idle, as if it ran on another machine)")
    ap.add_argument("--drain", type=float, default=0.0,
                    help="seconds the noisy device hammers before the measured phases (then the"
                         " bench waits for the read model): measures refusals alone")
    ap.add_argument("--unlimited", action="store_true", help="run with the rate limits off")
    ap.add_argument("--micro", action="store_true",
                    help="only time one refusal inside the API process, without a platform")
    args = ap.parse_args()
    if args.micro:
        for name, value in refusal_cost().items():
            print(f"{name:<34} {value:8.1f}")
        return
    figures = asyncio.run(run(args))
    print(f"machine: {pyplatform.node()} {pyplatform.machine()} python "
          f"{pyplatform.python_version()} date: {datetime.now(UTC):%Y-%m-%d}"
          f" limits: {'off' if args.unlimited else 'default'} devices: {args.devices}"
          f" noisy nice: {args.noisy_nice} drain: {args.drain:g} s")
    alone, noisy, refused = figures["alone"], figures["with noisy"], figures["refused only"]
    print(f"{'well-behaved uploads':<22} {'alone':>8} {'with noisy':>11} {'ratio':>6}"
          f" {'noisy refused only':>19} {'ratio':>6}")
    for key in ("n", "p50_ms", "p95_ms", "max_ms", "api_cpu_pct"):
        r1 = noisy[key] / alone[key] if alone[key] else float("nan")
        r2 = refused[key] / alone[key] if alone[key] else float("nan")
        print(f"{key:<22} {alone[key]:>8.1f} {noisy[key]:>11.1f} {r1:>6.2f}"
              f" {refused[key]:>19.1f} {r2:>6.2f}")
    print(f"noisy device: {figures['noisy']}")
    print(f"well-behaved non-200 answers: {figures['well_behaved_failures'] or 'none'}")


if __name__ == "__main__":
    main()
