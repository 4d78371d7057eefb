"""The seeded fault harness: its own embedded platform, simulated handhelds uploading through the
real API until each batch gets a 2xx, faults injected at seeded points, and the oracle's verdict.

Everything random comes from the seed (traffic, event ids, phones, where each fault lands), so a
seed that fails fails again (timing aside: a race may need a few replays). The handhelds never
run far past the next fault's point, so each fault lands while uploads are in flight, and they
pause while the part recovers: the county goes quiet, so a recovery must not need new traffic. The harness runs the supervisor loop itself (the one `gongpei
up` runs) on a thread, so whatever it kills is restarted by the platform's own code.

A kill here is a fault, not a crash loop: before each one the harness marks the part as having run
long (its Watch), so the supervisor restarts it at once rather than with crash-loop backoff, and
the time to recover is the platform's, not the backoff's (tests/unit/test_restart_backoff.py and
tests/integration/test_supervision.py prove the backoff)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import shutil
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api import auth
from entrypoints.platform import GATEWAYS, STABLE_AFTER, Platform
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.faults.oracle import (
    Observed,
    Record,
    SentParcel,
    Verdict,
    compare,
    expect,
    gateway_phones,
    tariff_of,
)
from loadtest.traffic import LIFECYCLE, CountyTraffic, Parcel, county_time

FAULTS = ("worker", "api", "ledger", "sms", "postgres", "broker", "freeze")


@dataclass(frozen=True)
class Tier:
    events: int
    handhelds: int
    faults: dict[str, int]


TIERS = {
    "short": Tier(10_000, 10, {"worker": 2, "api": 1, "ledger": 1, "sms": 1, "postgres": 1,
                               "broker": 1, "freeze": 1}),
    "full": Tier(100_000, 50, {"worker": 20, "api": 10, "ledger": 2, "sms": 2, "postgres": 1,
                               "broker": 1, "freeze": 1}),
}
RECOVERY_TIMEOUT = 180.0   # a fault not recovered from within this is a finding
SETTLE_TIMEOUT = 240.0     # after the traffic: how long the read models may take to match
STORM_WINDOW = 15.0        # after a freeze: rebalances must stop within this window
# A frozen worker stays stopped this long: past the embedded profile's 4 s session timeout and
# its 8 s rebalance timeout.
FREEZE_SECONDS = 12.0
WAVE = 25                  # parcels a handheld registers together and walks down the chain


@dataclass
class FaultRun:
    kind: str
    at_events: int              # acknowledged events when it was injected
    recovered_s: float | None   # None: not within RECOVERY_TIMEOUT
    note: str = ""


@dataclass
class Report:
    seed: int
    tier: str
    events_sent: int = 0
    events_acked: int = 0
    batches: int = 0
    answers: Counter[str] = field(default_factory=Counter)   # HTTP status (or error) → count
    faults: list[FaultRun] = field(default_factory=list)
    rebalances: int = 0
    storm: int = 0                      # rebalances inside the storm windows after freezes
    findings: list[str] = field(default_factory=list)    # driver-side: a 500, a refused batch…
    verdict: Verdict = field(default_factory=Verdict)
    checked: str = ""                   # what the oracle compared, in numbers
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.verdict.clean and not self.findings and not self.storm and all(
            f.recovered_s is not None for f in self.faults)

    def table(self) -> str:
        lines = [(f"seed {self.seed}, tier {self.tier}: {self.events_acked:,} of "
                  f"{self.events_sent:,} events acknowledged in {self.batches:,} batches,"
                  f" {self.seconds:.0f} s"),
                 "answers: " + ", ".join(f"{k} ×{n}" for k, n in sorted(self.answers.items())),
                 "", f"{'fault':<9} {'injected':>8}  {'time to recover (s): min / median / max'}"]
        kinds: dict[str, list[FaultRun]] = {}
        for f in self.faults:
            kinds.setdefault(f.kind, []).append(f)
        for kind, runs in kinds.items():
            times = [f.recovered_s for f in runs if f.recovered_s is not None]
            spread = (f"{min(times):.1f} / {statistics.median(times):.1f} / {max(times):.1f}"
                      if times else "-")
            missed = len(runs) - len(times)
            notes = "; ".join(sorted({f.note for f in runs if f.note}))
            lines.append(f"{kind:<9} {len(runs):>8}  {spread}"
                         + (f"  NOT RECOVERED ×{missed}" if missed else "")
                         + (f"  ({notes})" if notes else ""))
        v = self.verdict
        lines += ["", f"oracle: {self.checked}" if self.checked else "oracle: not reached",
                  f"rebalances {self.rebalances}, in the storm windows {self.storm}",
                  f"lost {v.lost_total}" + (f" ({dict(v.lost)})" if v.lost_total else ""),
                  f"doubled {v.doubled_total}" + (f" ({dict(v.doubled)})" if v.doubled_total else ""),
                  "wrong " + (str(dict(v.wrong)) if sum(v.wrong.values()) else "0")]
        lines += [f"  finding: {x}" for x in self.findings[:12]]
        lines += [f"  e.g. {x}" for x in v.examples]
        lines.append("RESULT: " + ("ok" if self.ok else "DIFFERENCES (above)"))
        return "\n".join(lines)


# ------------------------------------------------------------------------------------ traffic

@dataclass
class Batch:
    token: str          # the name of the token that sends it
    events: list[dict[str, Any]]


def county_for_harness(folder: Path) -> Path:
    """The demo county with SMS rules the harness can wait for: a 3-second digest window and no
    quiet hours (it runs at any hour)."""
    text = DEMO_COUNTY.read_text(encoding="utf-8")
    for old, new in (("digest_minutes = 10", "digest_seconds = 3"),
                     ('quiet_start = "21:00"', 'quiet_start = "00:00"'),
                     ('quiet_end = "08:00"', 'quiet_end = "00:00"')):
        if old not in text:
            raise RuntimeError(f"the demo county changed: {old!r} not found")
        text = text.replace(old, new)
    path = folder / "haicheng-faults.toml"
    path.write_text(text, encoding="utf-8")
    return path


def plan_traffic(county_file: Path, seed: int, events: int, handhelds: int,
                 ) -> tuple[Record, list[list[Batch]]]:
    """Each handheld's batches, in the order it sends them, and the record of every parcel.
    A parcel goes down the chain as far as its seeded last step: most to delivered, many left
    stored at the village point (an SMS each), some stopped on the way."""
    county = load_county(county_file)
    rng = random.Random(seed)
    traffic = CountyTraffic(county, seed=seed)
    record = Record()
    now = datetime.now(UTC)
    start = county_time(county, now - timedelta(hours=3))
    # A rough number of events per parcel (the mix below makes ≈ 6.9, so a tier sends a few
    # per cent more than it names); kept as it is, so that the seeds in docs/reliability.md
    # replay the same traffic.
    per_parcel = 1 + (7 + 6 + 4) / 3
    parcels = max(handhelds, round(events / per_parcel))
    phones: set[str] = set()
    plans: list[list[Batch]] = [[] for _ in range(handhelds)]
    for h in range(handhelds):
        mine = parcels // handhelds + (1 if h < parcels % handhelds else 0)
        for w0 in range(0, mine, WAVE):
            at = start + timedelta(seconds=rng.randrange(3 * 3600 - 900))
            wave: list[tuple[SentParcel, Parcel, int]] = []
            regs: dict[str, list[dict[str, Any]]] = {}
            for _ in range(min(WAVE, mine - w0)):
                phone = _phone(rng, phones)
                parcel, event = traffic.register(at, to=(rng.choice(traffic.villages), phone))
                event["event_id"] = _event_id(rng)
                last = rng.choices((len(LIFECYCLE) - 1, len(LIFECYCLE) - 2, rng.randrange(-1, 5)),
                                   weights=(45, 40, 15))[0]
                sent = SentParcel(parcel.waybill, parcel.brand, phone,
                                  event["payload"]["weight_g"], event["event_id"])
                record.parcels[sent.waybill] = sent
                regs.setdefault(parcel.brand, []).append(event)
                wave.append((sent, parcel, last))
            plans[h] += [Batch(f"{brand}-system", evs) for brand, evs in sorted(regs.items())]
            for step in range(len(LIFECYCLE)):
                scans = []
                for sent, parcel, last in wave:
                    if step > last:
                        continue
                    scan = traffic.advance(parcel, at + timedelta(minutes=step + 1))
                    assert scan is not None
                    scan["event_id"] = _event_id(rng)
                    sent.scans.append((scan["event_id"], scan["payload"]["action"]))
                    scans.append(scan)
                if scans:
                    plans[h].append(Batch(f"pda-{h}", scans))
    return record, plans


def _phone(rng: random.Random, taken: set[str]) -> str:
    while True:
        phone = f"1{rng.choice('3578')}{rng.randrange(10**9):09d}"
        if phone not in taken:
            taken.add(phone)
            return phone


def _event_id(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def fault_schedule(seed: int, faults: dict[str, int], events: int) -> list[tuple[int, str]]:
    """(acknowledged events, fault) in order: seeded points spread over the run's middle, each
    kind spread over the whole of it."""
    rng = random.Random(f"faults-{seed}")
    kinds = [k for k, n in faults.items() for _ in range(n)]
    rng.shuffle(kinds)
    n = len(kinds)
    points = [int(events * (0.05 + 0.85 * (i + rng.random()) / n)) for i in range(n)]
    return list(zip(sorted(points), kinds))


# ------------------------------------------------------------------------------------- harness

class Harness:
    def __init__(self, tier: str, seed: int, faults: tuple[str, ...] = FAULTS,
                 events: int | None = None, handhelds: int | None = None,
                 state_dir: Path | None = None, log: Callable[[str], None] = print) -> None:
        spec = TIERS[tier]
        self.tier, self.seed = tier, seed
        self.events = events or spec.events
        self.handhelds = handhelds or spec.handhelds
        self.faults = {k: n for k, n in spec.faults.items() if k in faults}
        self.own_dir = state_dir is None
        self.folder = Path(state_dir or tempfile.mkdtemp(prefix="gongpei-faults-"))
        self.log = log
        self.report = Report(seed, tier)
        self.platform: Platform | None = None
        self._stop_supervising = threading.Event()
        self.tokens: dict[str, str] = {}
        self.acked_events = 0
        self.limit = 0       # handhelds wait while this many events are acknowledged
        self.started = time.monotonic()
        self.freeze_seconds = FREEZE_SECONDS

    # -- the platform --------------------------------------------------------------------
    def start(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        county = county_for_harness(self.folder)
        self.platform = Platform(
            self.folder / "state", county_file=county, topic_partitions=4,
            settings_changes={"upload_burst": 10**6, "upload_events_burst": 10**9,
                              "upload_concurrency": 256, "read_burst": 10**6})
        self.platform.start(timeout=120)
        threading.Thread(target=self._supervise, name="supervisor", daemon=True).start()
        self.tokens = asyncio.run(self._issue_tokens())

    def _supervise(self) -> None:
        assert self.platform is not None
        while not self._stop_supervising.is_set():
            for name in self.platform.supervise_once():
                self.log(f"  supervisor restarted {name}")
            self._stop_supervising.wait(0.2)

    def stop(self) -> None:
        self._stop_supervising.set()
        time.sleep(0.3)
        if self.platform is not None:
            self.platform.stop()
        if self.own_dir and self.report.ok:  # a failing run's logs are kept for a look
            shutil.rmtree(self.folder, ignore_errors=True)

    async def _issue_tokens(self) -> dict[str, str]:
        assert self.platform is not None and self.platform.settings is not None
        county = load_county(self.platform.county_file)
        conn = await asyncpg.connect(self.platform.settings.database_url)
        try:
            out = {}
            for h in range(self.handhelds):
                out[f"pda-{h}"] = (await auth.create(conn, role="scanner", name=f"pda-faults-{h}",
                                                     brands=list(county.brands)))[1]
            for brand in county.brands:
                out[f"{brand}-system"] = (await auth.create(
                    conn, role="brand-system", name=f"{brand}-faults", brands=[brand]))[1]
            return out
        finally:
            await conn.close()

    # -- running -------------------------------------------------------------------------
    def run(self) -> Report:
        self.log(f"seed {self.seed}")  # first, so that a failing run can be replayed
        self.log(f"tier {self.tier}: {self.events:,} events, {self.handhelds} handhelds, faults "
                 + ", ".join(f"{k} ×{n}" for k, n in self.faults.items()))
        record, plans = plan_traffic(DEMO_COUNTY, self.seed, self.events, self.handhelds)
        self.record = record
        self.report.events_sent = sum(len(b.events) for p in plans for b in p)
        schedule = fault_schedule(self.seed, self.faults, self.report.events_sent)
        started = time.monotonic()
        try:
            self.start()
            self.log(f"platform up in {time.monotonic() - started:.0f} s ({self.folder})")
            self.started = time.monotonic()
            asyncio.run(self._drive(plans, schedule))
            self.report.verdict = asyncio.run(self._settle())
        finally:
            self.report.seconds = time.monotonic() - self.started
            self.stop()
        return self.report

    async def _drive(self, plans: list[list[Batch]], schedule: list[tuple[int, str]]) -> None:
        self.limit = schedule[0][0] + 200 if schedule else math.inf  # type: ignore[assignment]
        assert self.platform is not None
        async with httpx.AsyncClient(base_url=self.platform.api_url, timeout=30) as client:
            self.client = client
            handhelds = [asyncio.create_task(self._handheld(plan)) for plan in plans]
            injector = asyncio.create_task(self._inject(schedule))
            await asyncio.gather(*handhelds, injector)
            self.report.rebalances = await self._rebalances()

    async def _handheld(self, plan: list[Batch]) -> None:
        for batch in plan:
            while self.acked_events >= self.limit:
                await asyncio.sleep(0.05)
            await self._send(batch)

    async def _send(self, batch: Batch) -> None:
        """POST until a 2xx; record each event it acknowledges (accepted, or a duplicate of an
        earlier try whose answer was lost)."""
        headers = {"Authorization": f"Bearer {self.tokens[batch.token]}"}
        delay = 0.1
        while True:
            try:
                r = await self.client.post("/v1/scan-batches", json={"events": batch.events},
                                           headers=headers)
            except httpx.HTTPError as exc:
                self.report.answers[type(exc).__name__] += 1
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            self.report.answers[str(r.status_code)] += 1
            if 200 <= r.status_code < 300:
                break
            if r.status_code in (503, 429):
                if "Retry-After" not in r.headers:
                    self.report.findings.append(f"{r.status_code} without Retry-After")
                await asyncio.sleep(min(float(r.headers.get("Retry-After", 1)), 1.0))
                continue
            self.report.findings.append(f"HTTP {r.status_code}: {r.text[:160]}")
            if r.status_code >= 500:
                await asyncio.sleep(delay)
                continue
            return  # refused as a whole: nothing acknowledged
        self.report.batches += 1
        results = r.json()["results"]
        for result in results:
            event = batch.events[result["index"]]
            if result["status"] in ("accepted", "duplicate"):
                self.record.acked.add(event["event_id"])
                self.acked_events += 1
            else:
                self.report.findings.append(
                    f"{event['type']} {result['status']}: {result.get('reason')}")
        self.report.events_acked = len(self.record.acked)

    # -- faults --------------------------------------------------------------------------
    async def _inject(self, schedule: list[tuple[int, str]]) -> None:
        for i, (point, kind) in enumerate(schedule):
            while self.acked_events < point:
                await asyncio.sleep(0.05)
                if self._all_sent():
                    break
            at = self.acked_events
            self.log(f"  {time.monotonic() - self.started:6.1f} s  {at:>7,} acked: {kind}")
            run = await self._fault(kind, at)
            # The next fault's point is where the handhelds wait, so it lands mid-traffic.
            self.limit = schedule[i + 1][0] + 200 if i + 1 < len(schedule) else math.inf  # type: ignore[assignment]
            self.report.faults.append(run)
            self.log(f"           recovered in {run.recovered_s:.1f} s {run.note}"
                     if run.recovered_s is not None else f"           NOT RECOVERED {run.note}")

    def _all_sent(self) -> bool:
        return self.acked_events >= self.report.events_sent

    def _fault_only(self, name: str) -> None:
        """Mark a part as stably up: the supervisor restarts it at once (see the docstring)."""
        assert self.platform is not None
        watch = (self.platform.watches[name] if name in self.platform.watches
                 else self.platform.children[name].watch)
        watch.up_at = time.monotonic() - STABLE_AFTER - 1
        watch.delay = 0.0

    def _pid(self, name: str) -> int:
        assert self.platform is not None and self.platform.pg and self.platform.broker
        proc = {"postgres": self.platform.pg.proc, "broker": self.platform.broker.proc}.get(name)
        if proc is None and name in self.platform.children:
            proc = self.platform.children[name].proc
        assert proc is not None
        return proc.pid

    async def _fault(self, kind: str, at: int) -> FaultRun:
        note = await self._until_busy(kind) if kind != "postgres" else ""
        name = "worker" if kind == "freeze" else kind
        self._fault_only(name)
        pid = self._pid(name)
        if kind == "freeze":
            before = await self._rebalances()
            os.kill(pid, signal.SIGSTOP)
            frozen = self.freeze_seconds
            await asyncio.sleep(frozen)
            os.kill(pid, signal.SIGCONT)
            t0 = time.monotonic()
            recovered = await self._recovered(kind, t0)
            after = await self._rebalances()
            await asyncio.sleep(STORM_WINDOW)
            storm = await self._rebalances() - after
            self.report.storm += storm
            return FaultRun(kind, at, recovered, f"{note}, frozen {frozen:.0f} s, rebalances"
                            f" +{after - before}, then +{storm} in {STORM_WINDOW:.0f} s")
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        return FaultRun(kind, at, await self._recovered(kind, t0), note)

    async def _until_busy(self, kind: str) -> str:
        """Wait (a few seconds at most) until the part has work in hand, so the fault lands
        mid-batch: the ledger's or SMS service's journal position behind the journal's end;
        for the rest, the journal's newest parcel event not yet in tracking (published and not
        yet applied, or not yet published)."""
        if kind in ("ledger", "sms"):
            sql = ("SELECT (SELECT max(seq) FROM journal) >= (SELECT next_offset FROM"
                   " consumer_offsets WHERE consumer = $1 AND topic = 'journal') AS busy")
            args: tuple[str, ...] = (kind,)
        else:
            sql = ("SELECT NOT EXISTS (SELECT 1 FROM tracking_events WHERE event_id = (SELECT"
                   " event_id FROM journal WHERE type IN ('parcel.registered', 'parcel.scanned')"
                   " ORDER BY seq DESC LIMIT 1)) AS busy")
            args = ()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            row = await self._fetchrow(sql, *args)
            if row and row["busy"]:
                return "with work pending"
            await asyncio.sleep(0.02)
        return "while idle"

    async def _recovered(self, kind: str, t0: float) -> float | None:
        """Seconds from the fault until a new upload is acknowledged and, for the part hit,
        processed: projected into tracking (worker, broker, API, PostgreSQL), or passed by the
        journal follower (ledger, SMS)."""
        probe = self._probe()
        deadline = t0 + RECOVERY_TIMEOUT
        try:
            await asyncio.wait_for(self._send(probe), RECOVERY_TIMEOUT)
        except TimeoutError:
            return None
        event_id = probe.events[0]["event_id"]
        waybill = probe.events[0]["payload"]["waybill"]
        name = kind if kind in ("ledger", "sms") else None
        while time.monotonic() < deadline:
            if name is None:
                done = await self._fetchrow("SELECT 1 FROM parcels WHERE waybill = $1", waybill)
            else:
                done = await self._fetchrow(
                    "SELECT 1 FROM consumer_offsets c, journal j WHERE c.consumer = $1 AND"
                    " c.topic = 'journal' AND j.event_id = $2 AND c.next_offset > j.seq",
                    name, event_id)
                done = done if done and self.platform and self.platform.children[
                    name].alive() else None
            if done:
                return time.monotonic() - t0
            await asyncio.sleep(0.1)
        return None

    def _probe(self) -> Batch:
        """A new parcel's manifest (seeded like the rest; the oracle expects it too)."""
        rng = random.Random(f"probe-{self.seed}-{len(self.report.faults)}")
        county = load_county(DEMO_COUNTY)
        traffic = CountyTraffic(county, seed=rng.randrange(10**9))
        phone = _phone(rng, {p.phone for p in self.record.parcels.values()})
        parcel, event = traffic.register(county_time(county, datetime.now(UTC)),
                                         to=(rng.choice(traffic.villages), phone))
        event["event_id"] = _event_id(rng)
        self.record.parcels[parcel.waybill] = SentParcel(
            parcel.waybill, parcel.brand, phone, event["payload"]["weight_g"], event["event_id"])
        self.report.events_sent += 1
        return Batch(f"{parcel.brand}-system", [event])

    async def _rebalances(self) -> int:
        """`gongpei_worker_rebalances_total`, summed over every worker process there was (the
        API serves the multiprocess folder). Asked again for a while if the API does not answer:
        a missed reading must not look like a storm, nor hide one."""
        deadline = time.monotonic() + 30
        while True:
            try:
                r = await self.client.get("/metrics")
                if r.status_code == 200:
                    return int(sum(float(line.split()[-1]) for line in r.text.splitlines()
                                   if line.startswith("gongpei_worker_rebalances_total ")))
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("the API's /metrics did not answer for 30 s")
            await asyncio.sleep(0.5)

    async def _fetchrow(self, sql: str, *args: Any) -> asyncpg.Record | None:
        """One query as the schema owner; None while the database is away."""
        assert self.platform is not None and self.platform.settings is not None
        try:
            conn = await asyncpg.connect(self.platform.settings.database_url, timeout=5)
        except (TimeoutError, OSError, asyncpg.PostgresError):
            return None
        try:
            return await conn.fetchrow(sql, *args)
        except (OSError, asyncpg.PostgresError):
            return None
        finally:
            with contextlib.suppress(Exception):
                await conn.close()

    # -- the verdict ---------------------------------------------------------------------
    async def _settle(self) -> Verdict:
        """Compare with the oracle until the read models match or SETTLE_TIMEOUT passes."""
        assert self.platform is not None
        exp = expect(self.record, tariff_of(self.platform.county_file))
        self.report.checked = (
            f"{len(exp.timeline):,} parcels, {sum(map(len, exp.timeline.values())):,} timeline"
            f" entries, {len(exp.ledger):,} fee lines ({sum(exp.brand_totals.values()):,} fen"
            f" over {len(exp.brand_totals)} brands), SMS: {len(exp.sms_exactly_one):,} exactly"
            f" one, {len(exp.sms_at_most_one):,} at most one (collected within the digest)")
        deadline = time.monotonic() + SETTLE_TIMEOUT
        self.log(f"  {time.monotonic() - self.started:6.1f} s  traffic done; comparing with the"
                 " oracle")
        while True:
            verdict = compare(self.record, exp, await self._observe())
            # Waiting cannot mend an acknowledged event missing from the journal, nor a double.
            final = verdict.lost.get("journal") or verdict.doubled_total
            if verdict.clean or final or time.monotonic() > deadline:
                return verdict
            await asyncio.sleep(2.0)

    async def _observe(self) -> Observed:
        assert self.platform is not None and self.platform.settings is not None
        waybills = sorted(self.record.parcels)
        ids = sorted(self.record.acked)
        phones = {p.phone for p in self.record.parcels.values()}
        conn = await asyncpg.connect(self.platform.settings.database_url)
        try:
            journal = Counter({r["event_id"]: r["n"] for r in await conn.fetch(
                "SELECT event_id, count(*) AS n FROM journal WHERE event_id = ANY($1)"
                " GROUP BY 1", ids)})
            parcels = {r["waybill"]: (r["status"], list(r["ids"] or [])) for r in await conn.fetch(
                "SELECT waybill, status, ARRAY(SELECT t->>'event_id' FROM"
                " jsonb_array_elements(view->'timeline') t) AS ids FROM parcels"
                " WHERE waybill = ANY($1)", waybills)}
            inbox = Counter({r["event_id"]: r["n"] for r in await conn.fetch(
                "SELECT event_id, count(*) AS n FROM tracking_events WHERE waybill = ANY($1)"
                " GROUP BY 1", waybills)})
            units = [f"parcel:{w}" for w in waybills]
            lines = [(r["unit"], r["kind"], r["account"], r["amount_fen"]) for r in await conn.fetch(
                "SELECT unit, kind, account, amount_fen FROM ledger_lines WHERE unit = ANY($1)",
                units)]
            set_aside = [(r["projection"], r["reason"]) for r in await conn.fetch(
                "SELECT projection, reason FROM projection_set_aside")]
        finally:
            await conn.close()
        sms = gateway_phones([self.platform.gateway_log(g) for g in GATEWAYS], phones)
        return Observed(journal, parcels, inbox, lines, sms, set_aside)


def run(tier: str, seed: int | None = None, faults: tuple[str, ...] = FAULTS,
        events: int | None = None, handhelds: int | None = None, state_dir: Path | None = None,
        log: Callable[[str], None] = print) -> Report:
    """One run of the harness; the seed is drawn (and printed first) when not given. Its state
    folder (a temporary one unless given) is removed after a clean run, kept after a failing one."""
    seed = seed if seed is not None else random.SystemRandom().randrange(10**6)
    return Harness(tier, seed, faults, events, handhelds, state_dir, log=log).run()


__all__ = ["FAULTS", "TIERS", "Harness", "Report", "run"]
