"""Demo traffic for `gongpei up`: tokens for each role, and a county day that shows on every panel.

The day, as on a real one: households order parcels (one in three gets two or three at once, so
its arrival SMS names several pickup codes); parcels go down the chain in a few seconds and then
wait at the village point, most of them for hours (the demo never collects them), some collected
after a few minutes; one household in three has agreed to station delivery; one in ten has a
number that no longer exists (the gateway reports the SMS undelivered: the call list); one parcel
in eight was scanned at the centre by a handheld that was offline half a day (late legs), a few
are damaged at the centre (problem scans, cause 问题件), one household in twenty waits at the
centre ten hours after its scan there (the at-risk queue), one run in five leaves late and one in
eight arrives late.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from api import auth
from entrypoints.platform import Platform
from infra.county_file import load_county
from loadtest.traffic import LIFECYCLE, CountyTraffic, Parcel, county_time, envelope

# The demo county's arrival SMS: a digest closes a minute after its first parcel (a real county
# waits ten) and there are no quiet hours, so SMS go out within minutes at any hour.
DEMO_DIGEST_SECONDS = 60
STORED = next(i for i, (action, _) in enumerate(LIFECYCLE) if action == "stored")
SORTED = next(i for i, (action, _) in enumerate(LIFECYCLE) if action == "sorted")
HELD_HOURS = 10  # a held household's centre scan happened this long ago (its leg allows 12)
# Numbers ending so get a failed delivery report from the local gateway (its default).
UNREACHABLE_SUFFIX = "4444"
# Upward produce (农产品上行): every this many steps a co-op hands a box in at a village point; it
# then moves one scan a step — received at the centre, into the cold store, (one in three) out of
# it and back, and onto the plane — so the dashboard's upward panel shows true, on-time figures.
UPWARD_EVERY = 5
UPWARD_PATH = ("received", "cold_in", "air_loaded")
UPWARD_SPELL = ("received", "cold_in", "cold_out", "cold_in", "air_loaded")
# Batches an unreachable API did not take are kept and sent again, in order, up to this many
# (about five minutes of demo); past it the oldest are dropped with a word on the console.
MAX_UNSENT_BATCHES = 300


def demo_county_file(state: Path, base: Path) -> tuple[Path, str]:
    """The county file the demo runs on: `base` with a one-minute digest window and no quiet
    hours, written into the state folder; and a line for the banner saying so. A county file
    without `[sms]` is used as it is."""
    text = base.read_text(encoding="utf-8")
    changed, n = re.subn(r"^digest_(minutes|seconds)\s*=.*$", f"digest_seconds = {DEMO_DIGEST_SECONDS}",
                         text, flags=re.MULTILINE)
    if n == 0 and "[sms]" not in text:
        return base, ""
    if n == 0:
        changed = changed.replace("[sms]\n", f"[sms]\ndigest_seconds = {DEMO_DIGEST_SECONDS}\n", 1)
    changed = re.sub(r'^quiet_(start|end)\s*=.*$', lambda m: f'quiet_{m.group(1)} = "00:00"',
                     changed, flags=re.MULTILINE)
    path = state / f"demo-{base.stem}.toml"
    path.write_text("# Written by `gongpei up` for the demo: " + base.name + " with a "
                    f"{DEMO_DIGEST_SECONDS}-second SMS digest and no quiet hours.\n" + changed,
                    encoding="utf-8")
    return path, (f"SMS digests close after {DEMO_DIGEST_SECONDS} s (a real county: "
                  "digest_minutes), no quiet hours")


@dataclass
class Household:
    village: str
    phone: str
    consents: bool
    parcels: list[Parcel] = field(default_factory=list)
    problem: bool = False      # its parcels are damaged at the centre (a problem scan)
    problem_sent: bool = False
    held: bool = False         # sorted 10 h ago and left at the centre a while: at risk
    hold_until: float | None = None  # monotonic
    pickup_at: float | None = None  # monotonic; None: still waiting when the demo stops


class DemoTraffic:
    """Every step: a new household's parcels registered, every household on the way one scan
    further (to its village point, where most wait), and the pickups that are due."""

    def __init__(self, platform: Platform, state: Path, new_per_step: int = 1,
                 max_in_flight: int = 60, seed: int | None = None,
                 pickup_after: tuple[float, float] = (120.0, 900.0),
                 hold_for: tuple[float, float] = (300.0, 1200.0)) -> None:
        assert platform.settings is not None
        self.platform = platform
        self.county = load_county(platform.settings.county_file)
        seed = int(datetime.now(UTC).timestamp()) % 97 if seed is None else seed
        # One parcel in eight comes from a scanner that was offline half a day: the dashboard then
        # has breaches to explain, as on a real morning.
        self.traffic = CountyTraffic(self.county, seed=seed, late_share=0.125)
        self.rng = random.Random(f"demo-{seed}")
        self.tokens_dir = state / "demo-tokens"
        self.new_per_step = new_per_step
        self.max_in_flight = max_in_flight
        self.pickup_after = pickup_after
        self.tokens: dict[str, str] = {}
        self.client = httpx.Client(base_url=platform.api_url, timeout=10)
        self.households = 0
        self.moving: list[Household] = []    # registered, not yet at their village point
        self.waiting: list[Household] = []   # at the point, to be collected at pickup_at
        self.consents: list[dict[str, Any]] = []  # sent the step after the manifests
        self.arrived: set[tuple[str, str]] = set()  # (trip, township) a vehicle.arrived went for
        self.hold_for = hold_for
        self.steps = 0
        self.upward: list[tuple[str, str, list[str]]] = []   # (brand, waybill, scans to come)
        # (token, events) not yet taken by the API (it was down or restarting): sent first next
        # step. Resending is safe: event_id is the idempotency key.
        self.unsent: list[tuple[str, list[dict[str, Any]]]] = []
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, every: float = 2.0) -> None:
        """Step every `every` seconds on a thread of its own, so that an API that is slow to
        answer (the database away, a restart under way) never holds up the supervisor's loop."""
        self._stopping.clear()
        self._thread = threading.Thread(target=self._run, args=(every,), name="demo", daemon=True)
        self._thread.start()

    def _run(self, every: float) -> None:
        while not self._stopping.is_set():
            began = time.monotonic()
            self.step()
            self._stopping.wait(max(0.0, every - (time.monotonic() - began)))

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(15)

    # -- tokens ---------------------------------------------------------------------------

    def prepare(self) -> None:
        """Issue demo tokens (state/demo-tokens/, one file per token, owner-only). A token from
        an earlier run of the same state folder is kept while it is valid for another day, so
        a bookmarked dashboard link survives a restart."""
        self.tokens_dir.mkdir(mode=0o700, exist_ok=True)
        wanted: list[tuple[str, str, list[str]]] = [
            ("manager", "manager", []), ("admin", "admin", []),
            ("finance", "finance", []), ("finance-admin", "finance-admin", []),
            ("scanner", "pda-demo", list(self.county.brands)),
        ]
        for brand in self.county.brands:
            wanted += [("brand-system", f"{brand}-system", [brand]), ("brand", f"{brand}-brand", [brand]),
                       ("finance", f"{brand}-finance", [brand])]
        kept = {name: path.read_text().strip() for _, name, _ in wanted
                if (path := self.tokens_dir / name).is_file()}
        self.tokens = asyncio.run(self._issue(wanted, kept))
        for name, token in self.tokens.items():
            if kept.get(name) == token:
                continue
            path = self.tokens_dir / name
            path.touch(mode=0o600)
            path.chmod(0o600)
            path.write_text(token + "\n")

    async def _issue(self, wanted: list[tuple[str, str, list[str]]],
                     kept: dict[str, str]) -> dict[str, str]:
        assert self.platform.settings is not None
        conn = await asyncpg.connect(self.platform.settings.database_url)
        try:
            out = {}
            for role, name, brands in wanted:
                old = kept.get(name)
                if old:
                    digest = auth.hash_token(old)
                    if await conn.fetchval(
                            "SELECT 1 FROM tokens WHERE token_hash = $1 AND name = $2 AND role = $3"
                            " AND revoked_at IS NULL AND (expires_at IS NULL"
                            " OR expires_at > now() + interval '1 day')", digest, name, role):
                        out[name] = old
                        continue
                    # About to expire (or of another role): the earlier run's stops working.
                    await conn.execute("UPDATE tokens SET revoked_at = now() WHERE token_hash = $1"
                                       " AND revoked_at IS NULL", digest)
                _, out[name] = await auth.create(conn, role=role, name=name, brands=brands)
            return out
        finally:
            await conn.close()

    # -- traffic --------------------------------------------------------------------------

    def _post(self, token: str, events: list[dict[str, Any]]) -> None:
        if events:
            r = self.client.post("/v1/scan-batches", json={"events": events},
                                 headers={"Authorization": f"Bearer {token}"})
            r.raise_for_status()

    def _send(self, batches: list[tuple[str, list[dict[str, Any]]]]) -> None:
        """Send what is still unsent, then `batches`, in order; stop at the first the API does
        not take (down, restarting, 503, 429) and keep the rest for the next step. A batch it
        refuses as a whole (another 4xx) is dropped: sending it again would not help."""
        self.unsent += [(token, events) for token, events in batches if events]
        while self.unsent:
            token, events = self.unsent[0]
            try:
                self._post(token, events)
            except httpx.HTTPStatusError as exc:
                status = exc.response.status_code
                if status < 500 and status != 429:
                    print(f"demo: a batch was refused ({status}); dropped", flush=True)
                    self.unsent.pop(0)
                    continue
                self._keep_unsent(f"HTTP {status}")
                return
            except httpx.HTTPError as exc:
                self._keep_unsent(type(exc).__name__)
                return
            self.unsent.pop(0)

    def _keep_unsent(self, why: str) -> None:
        dropped = len(self.unsent) - MAX_UNSENT_BATCHES
        if dropped > 0:
            del self.unsent[:dropped]
        print(f"demo: upload failed ({why}); {len(self.unsent)} batches kept to send again"
              + (f", {dropped} oldest dropped" if dropped > 0 else ""), flush=True)

    def _new_household(self, now: datetime) -> list[dict[str, Any]]:
        """A household's order: one to three parcels, possibly of different brands."""
        n = self.households
        self.households += 1
        phone = f"1{self.rng.choice('3578')}{self.rng.randrange(10**9):09d}"
        if n % 10 == 4:
            phone = phone[:-4] + UNREACHABLE_SUFFIX
        house = Household(self.rng.choice(self.traffic.villages), phone,
                          consents=n % 3 == 1, problem=n % 25 == 7, held=n % 20 == 12)
        count = (2, 3)[self.rng.randrange(2)] if n % 3 == 0 else 1
        events = []
        for _ in range(count):
            parcel, event = self.traffic.register(now, to=(house.village, house.phone))
            if house.problem:
                # Damaged on the way in and its centre scan uploaded late: a late leg whose
                # cause is the problem scan.
                parcel.late_upload_hours = self.traffic.late_upload_hours
            elif house.held:
                # Received at the centre ten hours ago (of its twelve): on the at-risk queue
                # while it waits there for a run.
                parcel.late_upload_hours = HELD_HOURS
            house.parcels.append(parcel)
            events.append(event)
            if house.consents:
                self.consents.append(envelope("consent.recorded", 1, now, parcel.brand, "manifest", {
                    "waybill": parcel.waybill, "consent": True, "channel": "app"}))
        self.moving.append(house)
        return events

    def _problem_scan(self, house: Household, now: datetime) -> list[dict[str, Any]]:
        house.problem_sent = True
        return [envelope("parcel.scanned", 1, now, p.brand, "op-centre", {
            "waybill": p.waybill, "action": "problem", "node_id": self.county.centre.id,
            "problem_reason": "damaged"}) for p in house.parcels]

    def _run_arrivals(self, scans: list[dict[str, Any]], now: datetime) -> list[dict[str, Any]]:
        """One `vehicle.arrived` at each township a run is first seen arriving at; one run in
        eight arrives more than the tolerance late."""
        out = []
        for scan in scans:
            payload = scan["payload"]
            trip = payload.get("trip_id")
            if scan["type"] != "parcel.scanned" or payload.get("action") != "arrived" or not trip:
                continue
            if (trip, payload["node_id"]) in self.arrived:
                continue
            self.arrived.add((trip, payload["node_id"]))
            route = trip.split("-", 2)[2].rsplit("-", 1)[0]
            late = self.rng.choice((0, 3, 6, 10, 2, 0, 5, 40))
            out.append(envelope("vehicle.arrived", 1, now, scan["brand"], "driver", {
                "trip_id": trip, "route_id": route, "run_id": f"{route}-{trip[-2:]}",
                "node_id": payload["node_id"],
                "scheduled_at": (now - timedelta(minutes=late)).isoformat()}))
        return out

    def _upward(self, now: datetime) -> list[dict[str, Any]]:
        """A hand-in every UPWARD_EVERY steps (plums where the county has them), and each box
        in hand one scan further at the centre."""
        out = []
        still = []
        for brand, waybill, path in self.upward:
            out.append(envelope("parcel.scanned", 1, now, brand, "op-centre", {
                "waybill": waybill, "action": path[0], "node_id": self.county.centre.id}))
            if path[1:]:
                still.append((brand, waybill, path[1:]))
        self.upward = still
        if self.steps % UPWARD_EVERY == 0 and self.traffic.villages:
            n = self.steps // UPWARD_EVERY
            brand = self.rng.choice(self.county.brands)
            waybill = self.traffic.waybill(brand)
            perishable = next((c for c in ("plum", "produce") if c in self.county.perishables),
                              None)
            out.append(envelope("parcel.handed_in", 1, now, brand, "op-village", {
                "waybill": waybill, "shipper_id": f"COOP-DEMO-{n % 40:03d}",
                "origin_village": self.rng.choice(self.traffic.villages),
                "weight_g": self.rng.randrange(2000, 15001),
                "perishable": perishable}))
            if perishable is not None:
                self.upward.append((brand, waybill,
                                    list(UPWARD_SPELL if n % 3 == 0 else UPWARD_PATH)))
            else:
                self.upward.append((brand, waybill, ["received"]))
        return out

    def step(self) -> None:
        """One step of the county day. It never raises: the demo is an auxiliary of `gongpei
        up`, and nothing it meets (the API killed or restarting, the database away, a bug of
        its own) may stop the supervisor it runs in."""
        try:
            self._step()
        except Exception as exc:  # noqa: BLE001 - see the docstring; the next step goes on
            # The type only: a message could quote an event, and events carry phone numbers.
            print(f"demo: a step failed ({type(exc).__name__}); will go on", flush=True)

    def _step(self) -> None:
        now = county_time(self.county, datetime.now(UTC))
        clock = time.monotonic()
        consents, self.consents = self.consents, []
        registrations: list[dict[str, Any]] = []
        for _ in range(self.new_per_step if len(self.moving) < self.max_in_flight else 0):
            registrations += self._new_household(now)
        scans: list[dict[str, Any]] = []
        still_moving = []
        for house in self.moving:
            if house.problem and not house.problem_sent and house.parcels[0].step == SORTED:
                scans += self._problem_scan(house, now)
                still_moving.append(house)
                continue
            if house.held and house.parcels[0].step == SORTED:
                if house.hold_until is None:
                    house.hold_until = clock + self.rng.uniform(*self.hold_for)
                if clock < house.hold_until:
                    still_moving.append(house)
                    continue
            scans += [e for p in house.parcels if (e := self.traffic.advance(p, now))]
            if house.parcels[0].step < STORED:
                still_moving.append(house)
                continue
            # At the village point: most are still there when the demo stops.
            if self.rng.random() < 0.3:
                house.pickup_at = clock + self.rng.uniform(*self.pickup_after)
                self.waiting.append(house)
        self.moving = still_moving
        due = [h for h in self.waiting if h.pickup_at is not None and h.pickup_at <= clock]
        self.waiting = [h for h in self.waiting if h not in due]
        scans += [e for h in due for p in h.parcels if (e := self.traffic.advance(p, now))]
        scans += self.traffic.departures(scans, now) + self._run_arrivals(scans, now)
        self.steps += 1
        scans += self._upward(now)
        self.traffic.parcels.clear()  # the demo keeps its own lists; this one would only grow
        by_brand: dict[str, list[dict[str, Any]]] = {}
        for event in registrations + consents:
            by_brand.setdefault(event["brand"], []).append(event)
        self._send([*((self.tokens[f"{brand}-system"], events) for brand, events in by_brand.items()),
                    (self.tokens["pda-demo"], scans)])
