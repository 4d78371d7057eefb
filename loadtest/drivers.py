"""Drivers: an embedded platform for a run, the handhelds that replay a scenario's uploads through
the real ingest API at compressed time, and a sampler of every projection's progress."""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api import auth
from entrypoints.platform import Platform
from loadtest.bench_platform import THROUGHPUT_SETTINGS
from loadtest.model import Upload

# The harness's copy of the county file: a digest closes two seconds after its first parcel and
# there are no quiet hours (a replayed day passes in minutes, at any hour of the machine's day),
# and reminders come after 100 days (a replayed day's parcels are weeks old in wall time: with
# the county's 48 h they would all be due at once).
SMS_CHANGES = (("digest_minutes = 10", "digest_seconds = 2"),
               ('quiet_start = "21:00"', 'quiet_start = "00:00"'),
               ('quiet_end = "08:00"', 'quiet_end = "00:00"'),
               ("reminder_hours = [48, 72]", "reminder_hours = [2400, 2472]"))
DIGEST_SECONDS = 2.0


def harness_county(src: Path, folder: Path) -> Path:
    text = src.read_text(encoding="utf-8")
    for old, new in SMS_CHANGES:
        if old not in text:
            raise ValueError(f"{src}: expected {old!r} to change it for the harness")
        text = text.replace(old, new)
    out = folder / f"harness-{src.name}"
    out.write_text(text, encoding="utf-8")
    return out


async def start_platform(county: Path, latency: str) -> Platform:
    """A fresh embedded platform on the harness county, gateways answering in `latency` s."""
    folder = Path(tempfile.mkdtemp(prefix="gongpei-harness-"))
    plat = Platform(folder / "state", county_file=harness_county(county, folder), api_port=0,
                    gateway_args=("--latency", latency, "--receipt-delay", "1,5",
                                  "--per-number-per-minute", "50", "--seed", "13"),
                    # The oracle reads every household's SMS back: no read limit for it either.
                    settings_changes={**THROUGHPUT_SETTINGS, "read_burst": 10**6})
    await asyncio.to_thread(plat.start, 120)
    return plat


def _role(device: str) -> tuple[str, list[str] | None]:
    return ("brand-system", [device.split(":", 1)[1]]) if device.startswith("manifest:") \
        else ("scanner", None)


async def device_tokens(conn: asyncpg.Connection, uploads: list[Upload],
                        brands: tuple[str, ...]) -> dict[str, str]:
    """One token per handheld, driver and brand system: as many writers as the county has."""
    out = {}
    for device in sorted({u.device for u in uploads}):
        role, scope = _role(device)
        name = re.sub(r"[^A-Za-z0-9._-]", "-", device)[:60]
        out[device] = (await auth.create(conn, role=role, name=f"ht-{name}",
                                         brands=scope or list(brands)))[1]
    return out


@dataclass
class Sent:
    index: int
    device: str
    events: int
    due_s: float        # when the schedule said to send it (s after the start)
    sent_s: float
    latency_s: float
    status: int
    results: dict[str, int] = field(default_factory=dict)
    rejected: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)  # one per event, in the batch's order

    @property
    def acked_s(self) -> float:
        return self.sent_s + self.latency_s


async def replay(api_url: str, uploads: list[Upload], tokens: dict[str, str], sim0: datetime,
                 seconds_per_sim_second: float, concurrency: int = 48) -> tuple[list[Sent], float]:
    """Send every upload at its compressed instant, at most `concurrency` at once (a county's
    handhelds on the county's uplink); a 429 is retried after its Retry-After. Returns what each
    upload got and the wall seconds the replay took."""
    gate = asyncio.Semaphore(concurrency)
    out: list[Sent] = []
    started = time.perf_counter()

    async def one(client: httpx.AsyncClient, u: Upload) -> None:
        due = (u.at - sim0).total_seconds() * seconds_per_sim_second
        wait = due - (time.perf_counter() - started)
        if wait > 0:
            await asyncio.sleep(wait)
        async with gate:
            sent = time.perf_counter() - started
            retries = 0
            while True:
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/scan-batches", json={"events": u.events},
                                          headers={"Authorization": f"Bearer {tokens[u.device]}"})
                except httpx.TransportError:
                    # A keep-alive connection the server closed as we reused it, say: a handheld
                    # sends the batch again (event ids make that safe: `duplicate`).
                    retries += 1
                    if retries > 5:
                        raise
                    await asyncio.sleep(0.2 * retries)
                    continue
                if r.status_code != 429:
                    break
                await asyncio.sleep(float(r.headers.get("retry-after", "1")))
            lat = time.perf_counter() - t0
        results: dict[str, int] = {"resent after a transport error": retries} if retries else {}
        rejected, statuses = [], []
        if r.status_code == 200:
            for res in r.json()["results"]:
                statuses.append(res["status"])
                results[res["status"]] = results.get(res["status"], 0) + 1
                if res["status"] in ("rejected", "conflict"):
                    rejected.append(res)
        out.append(Sent(u.index, u.device, len(u.events), due, sent, lat, r.status_code, results,
                        rejected, statuses))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=api_url, timeout=120, limits=limits) as client:
        await asyncio.gather(*(one(client, u) for u in uploads))
    return sorted(out, key=lambda s: s.index), time.perf_counter() - started


# Where each projection is, as a journal seq or a row count (see report.py for how counts become
# positions): tracking and SLA are fed by Kafka; ledger and SMS planning follow the journal.
PROGRESS_SQL = (
    "SELECT (SELECT coalesce(max(seq), 0) FROM journal) AS journal,"
    " (SELECT coalesce(max(seq), 0) FROM relay_cursor) AS relay,"
    " (SELECT count(*) FROM tracking_events) AS tracking,"
    " (SELECT count(*) FROM sla_events) AS sla,"
    " (SELECT coalesce(max(next_offset) - 1, 0) FROM consumer_offsets WHERE consumer = 'ledger')"
    "   AS ledger,"
    " (SELECT coalesce(max(next_offset) - 1, 0) FROM consumer_offsets WHERE consumer = 'sms')"
    "   AS sms")


@dataclass
class Sampler:
    """Polls the projections' positions every `every` s while the run lasts."""

    dsn: str
    every: float = 0.5
    samples: list[dict[str, float]] = field(default_factory=list)
    _task: asyncio.Task[None] | None = None
    t0: float = field(default_factory=time.time)

    async def _loop(self) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            while True:
                row = await conn.fetchrow(PROGRESS_SQL)
                self.samples.append({"t": time.time(), **{k: float(v) for k, v in row.items()}})
                await asyncio.sleep(self.every)
        finally:
            await conn.close()

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass


async def wait_settled(conn: asyncpg.Connection, timeout: float = 900.0) -> float:
    """Wait until the relay, tracking, SLA, ledger and SMS planner hold the whole journal and no
    SMS is still to be sent (digests closed, sender done). Returns the seconds it took."""
    from loadtest.ingest_bench import targets

    t0 = time.perf_counter()
    calm_since = None
    while time.perf_counter() - t0 < timeout:
        last = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal")
        goals = await targets(conn, last)
        row = await conn.fetchrow(PROGRESS_SQL)
        waiting = await conn.fetchval("SELECT count(*) FROM sms_messages WHERE state = 'requested'")
        held = (row["relay"] >= last and all(row[k] >= goals[k] for k in goals) and waiting == 0)
        if held:
            calm_since = calm_since or time.perf_counter()
            # Open digests close DIGEST_SECONDS after their first parcel: give them time, twice.
            if time.perf_counter() - calm_since > 3 * DIGEST_SECONDS + 2:
                return time.perf_counter() - t0
        else:
            calm_since = None
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the platform did not settle in {timeout:.0f} s")


async def wait_stream(conn: asyncpg.Connection, tracking: int, sla: int,
                      timeout: float = 900.0) -> float:
    """Wait until tracking and SLA hold these many events (the direct-to-Kafka mode)."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < timeout:
        row = await conn.fetchrow(PROGRESS_SQL)
        if row["tracking"] >= tracking and row["sla"] >= sla:
            return time.perf_counter() - t0
        await asyncio.sleep(0.25)
    raise TimeoutError(f"the worker did not take in every event in {timeout:.0f} s")
