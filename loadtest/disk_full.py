"""What a full disk under PostgreSQL does to the platform, measured on the real embedded stack.

The platform's state folder (PostgreSQL's data, the logs, the metrics) is put on a tmpfs of its
own (`--size-mb`), a ballast file leaves only `--headroom-mb` of it free, and brand systems
upload registrations until the disk is full. Then the ballast is deleted, as an operator would
free space, and the run waits until uploads are taken again. The run is its own supervisor
(`Platform.supervise_once`), as `gongpei up` is. Oracle: every event acknowledged with a 2xx
(`accepted` or `duplicate`) must be in the journal at the end, and no answer may be a 500 or a
503 without `Retry-After`. Needs root (it mounts the tmpfs). Prints `name: value` lines.

    .venv/bin/python -m loadtest.disk_full --size-mb 256 --headroom-mb 24
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from entrypoints.platform import Platform
from infra.county_file import load_county
from loadtest.bench_platform import THROUGHPUT_SETTINGS, upload_tokens
from loadtest.traffic import CountyTraffic, county_time

BALLAST = "ballast"


def mount_tmpfs(path: Path, size_mb: int) -> None:
    """A filesystem of exactly `size_mb` for the state folder (root only)."""
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m,mode=0755", "tmpfs",
                    str(path)], check=True, capture_output=True)


def unmount(path: Path) -> None:
    subprocess.run(["umount", "-l", str(path)], check=False, capture_output=True)


def fill_leaving(folder: Path, headroom: int) -> int:
    """Write a ballast file that leaves `headroom` bytes free on `folder`'s filesystem; its size."""
    st = os.statvfs(folder)
    size = max(0, st.f_bavail * st.f_frsize - headroom)
    with open(folder / BALLAST, "wb") as out:
        chunk = b"\0" * (1 << 20)
        left = size
        while left > 0:
            out.write(chunk[:min(left, len(chunk))])
            left -= min(left, len(chunk))
    return size


@dataclass
class Tally:
    """What the uploaders were told: the oracle's record."""

    acknowledged: set[str] = field(default_factory=set)
    statuses: Counter[int] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    no_retry_after: int = 0
    first_refusal: float | None = None

    def record(self, response: httpx.Response | None, batch: list[dict[str, Any]]) -> bool:
        """True if the batch was acknowledged (2xx)."""
        if response is None:
            self.statuses[0] += 1
            return False
        self.statuses[response.status_code] += 1
        if response.is_success:
            for r in response.json()["results"]:  # by index: the device knows its own ids
                if r["status"] in ("accepted", "duplicate"):
                    self.acknowledged.add(batch[r["index"]]["event_id"])
            return True
        if self.first_refusal is None:
            self.first_refusal = time.monotonic()
        try:
            self.codes[response.json()["error"]["code"]] += 1
        except (ValueError, KeyError, TypeError):
            self.codes["<no error body>"] += 1
        if response.status_code in (429, 503) and not response.headers.get("retry-after"):
            self.no_retry_after += 1
        return False


def post(client: httpx.Client, token: str, batch: list[dict[str, Any]]) -> httpx.Response | None:
    try:
        return client.post("/v1/scan-batches", json={"events": batch},
                           headers={"Authorization": f"Bearer {token}"})
    except httpx.HTTPError:
        return None  # the API itself is restarting: the handheld tries again


def run(plat: Platform, args: argparse.Namespace) -> dict[str, object]:
    assert plat.settings is not None
    county = load_county(plat.county_file)
    traffic = CountyTraffic(county, seed=args.seed)

    async def tokens() -> dict[str, str]:
        conn = await asyncpg.connect(plat.settings.database_url)  # type: ignore[union-attr]
        try:
            return (await upload_tokens(conn, tuple(county.brands)))[0]
        finally:
            await conn.close()

    brand_tokens = asyncio.run(tokens())
    ballast = fill_leaving(plat.state_dir, args.headroom_mb << 20)
    tally = Tally()
    pending: list[tuple[str, list[dict[str, Any]]]] = []  # refused batches, resent in order
    started = time.monotonic()
    with httpx.Client(base_url=plat.api_url, timeout=30) as client:
        # Phase 1: upload until the disk is full and answers have been refused for a while.
        while time.monotonic() - started < args.fill_seconds:
            plat.supervise_once()
            if pending:
                brand, batch = pending[0]
            else:
                now = county_time(county, datetime.now(UTC))
                made = [traffic.register(now) for _ in range(args.batch)]
                brand = made[0][0].brand
                batch = [e for p, e in made if p.brand == brand]
                pending.append((brand, batch))
            if tally.record(post(client, brand_tokens[brand], batch), batch):
                pending.pop(0)
            elif tally.first_refusal and time.monotonic() - tally.first_refusal > args.refused_for:
                break
            else:
                time.sleep(0.2)
        full_at = time.monotonic()
        plat.check_capacity(now=True)  # the supervisor's sample of the full disk
        try:
            health = client.get("/healthz")
            healthz_when_full = f"{health.status_code} {health.text}"
        except httpx.HTTPError as exc:
            healthz_when_full = type(exc).__name__
        free_when_full = os.statvfs(plat.state_dir).f_bavail * os.statvfs(plat.state_dir).f_frsize
        acknowledged_before = len(tally.acknowledged)
        # Phase 2: free the space, resend what was refused, time the recovery.
        (plat.state_dir / BALLAST).unlink()
        freed_at = time.monotonic()
        recovered_at = None
        while pending and time.monotonic() - freed_at < args.recover_seconds:
            plat.supervise_once()
            brand, batch = pending[0]
            if tally.record(post(client, brand_tokens[brand], batch), batch):
                pending.pop(0)
                recovered_at = recovered_at or time.monotonic()
            else:
                time.sleep(0.5)

    async def in_journal() -> set[str]:
        conn = await asyncpg.connect(plat.settings.database_url)  # type: ignore[union-attr]
        try:
            rows = await conn.fetch("SELECT event_id FROM journal WHERE event_id = ANY($1)",
                                    sorted(tally.acknowledged))
            return {r["event_id"] for r in rows}
        finally:
            await conn.close()

    said: list[str] = []  # what PostgreSQL logged about it, each message once
    for line in (plat.state_dir / "pg" / "server.log").read_text(errors="replace").splitlines():
        for level in ("PANIC:", "FATAL:", "ERROR:"):
            if level in line and (msg := line.split(level, 1)[1].strip()[:120]) not in said:
                said.append(msg)
    missing = sorted(tally.acknowledged - asyncio.run(in_journal()))
    return {
        "filesystem_mb": args.size_mb,
        "ballast_mb": round(ballast / 2**20, 1),
        "headroom_mb": args.headroom_mb,
        "seconds_to_fill": round((tally.first_refusal or full_at) - started, 1),
        "free_bytes_when_full": free_when_full,
        "acknowledged_before_full": acknowledged_before,
        "acknowledged_total": len(tally.acknowledged),
        "answers": dict(sorted(tally.statuses.items())),
        "refusal_codes": dict(tally.codes),
        "refusals_without_retry_after": tally.no_retry_after,
        "answers_500": sum(n for s, n in tally.statuses.items() if s >= 500 and s != 503),
        "seconds_to_recover": round(recovered_at - freed_at, 1) if recovered_at else None,
        "batches_never_taken": len(pending),
        "healthz_when_full": healthz_when_full,
        "restarts": {name: w.restarts for name, w in plat.watches.items()}
        | {name: c.restarts for name, c in plat.children.items() if c.restarts},
        "postgres_said": said[:6],
        "lost": len(missing),
        "lost_ids": missing[:5],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=256, help="the tmpfs under the state folder")
    parser.add_argument("--headroom-mb", type=int, default=24,
                        help="what the ballast leaves free before the uploads start")
    parser.add_argument("--batch", type=int, default=200, help="registrations per upload")
    parser.add_argument("--fill-seconds", type=float, default=120)
    parser.add_argument("--refused-for", type=float, default=10,
                        help="stop filling after this many seconds of refused uploads")
    parser.add_argument("--recover-seconds", type=float, default=120)
    parser.add_argument("--seed", type=int, default=time.time_ns() % 10**6)
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("disk_full: needs root, to mount a tmpfs of a fixed size for the state folder")
    state = Path(tempfile.mkdtemp(prefix="gongpei-diskfull-")) / "state"
    print(f"seed: {args.seed}\nstate: {state}\nload: {Path('/proc/loadavg').read_text().strip()}",
          flush=True)
    mount_tmpfs(state, args.size_mb)
    plat = Platform(state, api_port=0, settings_changes=THROUGHPUT_SETTINGS)
    try:
        plat.start(90)
        figures = run(plat, args)
    finally:
        plat.stop()
        unmount(state)
    for name, value in figures.items():
        print(f"{name}: {value}")
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
    ok = (figures["lost"] == 0 and figures["answers_500"] == 0
          and figures["refusals_without_retry_after"] == 0 and figures["seconds_to_recover"] is not None)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
