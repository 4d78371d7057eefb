"""The county's traffic over some days, seeded: who uploads which events when (event time), for
the drivers to replay and the oracle to judge.

Downward: trunk arrivals at the centre in waves, sorting, the fixed runs to the townships and
villages (a departure and an arrival per trip, now and then late), parcels shelved at the village
point in one upload per run and village, waiting there for hours, then picked up; a few problem
parcels (damaged and held a day, lost at the township, refused and returned). Upward: hand-ins at
village points (`received` there, with the 14:00 cut-off), collected by the run that passes the
village and scanned in at the centre when it is back. Every event carries the device that uploads
it and the instant of its upload, which the chaos knobs move (late, offline, twice, reordered)."""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any

from loadtest.countyfile import CountyFile, Route, Run
from loadtest.traffic import waybill_for

ORCHARD_TOWNSHIPS = 3          # the first few townships' villages grow the plums


@dataclass(frozen=True)
class Profile:
    """What a scenario sets: volumes per day, the waves, the upward flow and the chaos knobs."""

    name: str
    start: date
    days: int
    parcels_per_day: int = 30_000
    inbound_factor: float = 1.0
    waves: tuple[tuple[str, float], ...] = (("04:00", 0.55), ("11:00", 0.45))
    upward_share: float = 0.06          # upward hand-ins per inbound parcel
    upward_factor: float = 1.0          # from orchard villages (plum: x5)
    problem_rate: float = 0.008         # damaged at the centre, held a day
    lost_rate: float = 0.001
    refused_rate: float = 0.005
    repeat_household: float = 0.08      # orders to a household that already had one
    late_run_rate: float = 0.04
    tail_hours: int = 30                # the run goes on this long after the last inbound day
    # chaos
    twice: float = 0.0                  # share of batches uploaded a second time
    reorder: float = 0.0                # share of batches sent with their events shuffled
    late_24h: float = 0.0               # share of batches uploaded more than 24 h late
    skewed_clock: float = 0.0           # share of devices whose clock is hours off
    offline: float = 0.0                # share of handhelds offline for hours, then bursting


@dataclass
class Sent:
    """One event, the device that sends it and when (event-time scale) it is uploaded."""

    event: dict[str, Any]
    device: str
    upload_at: datetime


@dataclass
class Upload:
    device: str
    at: datetime
    events: list[dict[str, Any]]
    index: int = 0
    repeat_of: int | None = None


@dataclass
class Traffic:
    profile: Profile
    sent: list[Sent] = field(default_factory=list)
    households: dict[str, list[str]] = field(default_factory=dict)  # phone -> waybills
    end: datetime | None = None


@dataclass
class Trip:
    """One run of a route on a day, as it happened."""

    id: str
    route: Route
    run: Run
    scheduled: datetime
    departs: datetime
    arrives_scheduled: datetime
    arrives: datetime
    township_at: datetime
    village_at: dict[str, datetime]
    emitted: bool = False


def _at(day: date, hm: str | time, cf: CountyFile) -> datetime:
    t = hm if isinstance(hm, time) else time.fromisoformat(hm)
    return datetime.combine(day, t, cf.tz)


class Generator:
    """Builds a Traffic from a profile and a seed; every random draw comes from one rng."""

    def __init__(self, cf: CountyFile, profile: Profile, seed: int, scale: float) -> None:
        self.cf, self.p, self.scale = cf, profile, scale
        self.rng = random.Random(seed)
        self.waybill_rng = random.Random(f"waybills-{seed}")
        self.ids = random.Random(f"ids-{seed}")
        self.issued: set[str] = set()
        self.out = Traffic(profile)
        self.trips: dict[str, Trip] = {}
        self.codes: dict[str, int] = {}
        brands = [b for b in cf.brands if cf.shares.get(b, 0) > 0]
        self.brands, self.weights = brands, [cf.shares[b] for b in brands]
        townships = sorted({cf.parent[v] for v in cf.villages})
        self.orchards = [v for v in cf.villages if cf.parent[v] in townships[:ORCHARD_TOWNSHIPS]]
        self.end = _at(profile.start + timedelta(days=profile.days - 1), "23:59", cf) \
            + timedelta(hours=profile.tail_hours)
        self.out.end = self.end

    # -- ids and envelopes -------------------------------------------------------------------
    def event_id(self) -> str:
        return str(uuid.UUID(int=self.ids.getrandbits(128), version=4))

    def waybill(self, brand: str) -> str:
        while True:
            w = waybill_for(brand, self.waybill_rng)
            if w not in self.issued:
                self.issued.add(w)
                return w

    def emit(self, device: str, at: datetime, etype: str, brand: str, operator: str,
             payload: dict[str, Any], version: int = 1, upload_at: datetime | None = None) -> None:
        if at > self.end:
            return  # beyond the run: it has not happened yet
        event = {"event_id": self.event_id(), "type": etype, "schema_version": version,
                 "occurred_at": at.isoformat(), "brand": brand, "operator_id": operator,
                 "payload": payload}
        self.out.sent.append(Sent(event, device, upload_at or at))

    def brand(self) -> str:
        return self.rng.choices(self.brands, self.weights)[0]

    def minutes(self, lo: float, hi: float) -> timedelta:
        return timedelta(minutes=self.rng.uniform(lo, hi))

    # -- runs --------------------------------------------------------------------------------
    def trip(self, route: Route, run: Run, day: date) -> Trip:
        """A run of `route` on `day`: its id and actual times, drawn once; its vehicle events are
        emitted when the first parcel boards."""
        trip_id = f"T-{day:%Y%m%d}-{route.id}-{run.id.rsplit('-', 1)[-1]}"
        if trip_id in self.trips:
            return self.trips[trip_id]
        sched = _at(day, run.departs, self.cf)
        late = self.rng.random() < self.p.late_run_rate
        delay = self.minutes(20, 45) if late else self.minutes(-3, 10)
        arrives_sched = _at(day, run.arrives, self.cf)
        departs = sched + delay
        township_at = departs + timedelta(minutes=30 + 2 * self.cf.routes.index(route) % 40)
        villages = [s for s in route.stops if self.cf.tier.get(s) == "village"]
        t = Trip(trip_id, route, run, sched, departs, arrives_sched,
                 arrives_sched + delay + self.minutes(-8, 8), township_at,
                 {v: township_at + timedelta(minutes=35 + 15 * i) for i, v in enumerate(villages)})
        self.trips[trip_id] = t
        return t

    def board(self, t: Trip) -> None:
        if t.emitted:
            return
        t.emitted = True
        driver = f"driver:{t.route.id}"
        brand = self.brand()  # a vehicle event's brand is the operator's choice of label
        common = {"trip_id": t.id, "route_id": t.route.id, "run_id": t.run.id}
        self.emit(driver, t.departs, "vehicle.departed", brand, f"drv-{t.route.id[2:10]}",
                  {**common, "node_id": self.cf.centre, "scheduled_at": t.scheduled.isoformat()})
        self.emit(driver, t.arrives, "vehicle.arrived", brand, f"drv-{t.route.id[2:10]}",
                  {**common, "node_id": t.route.stops[-1],
                   "scheduled_at": t.arrives_scheduled.isoformat()})

    def next_trip(self, route: Route, ready: datetime) -> Trip:
        """The first run of the route leaving at least 20 minutes after `ready`."""
        local = ready.astimezone(self.cf.tz)
        for offset in range(3):
            day = local.date() + timedelta(days=offset)
            for run in sorted(route.runs, key=lambda r: r.departs):
                if _at(day, run.departs, self.cf) >= ready + timedelta(minutes=20):
                    return self.trip(route, run, day)
        raise AssertionError("a route with no runs")

    # -- downward ----------------------------------------------------------------------------
    def household(self) -> tuple[str, str]:
        if self.out.households and self.rng.random() < self.p.repeat_household:
            phone = self.rng.choice(list(self.out.households))
            return phone, self.out.households[phone][0].split("|", 1)[1]
        while True:
            phone = f"1{self.rng.choice('3578')}{self.rng.randrange(10**9):09d}"
            if phone not in self.out.households:
                return phone, self.rng.choice(self.cf.villages)

    def order(self, received: datetime) -> None:
        phone, village = self.household()
        n = 1 if self.rng.random() < 0.67 else self.rng.choice((2, 2, 3))
        for _ in range(n):
            brand = self.brand()
            waybill = self.waybill(brand)
            self.out.households.setdefault(phone, []).append(f"{waybill}|{village}")
            self.parcel(brand, waybill, phone, village, received + self.minutes(0, 40))

    def parcel(self, brand: str, waybill: str, phone: str, village: str, received: datetime) -> None:
        cf, rng = self.cf, self.rng
        centre, township, _ = cf.chain(village)
        route = cf.route_of(village)
        manifest_at = received - self.minutes(60, 480)
        self.emit(f"manifest:{brand}", manifest_at, "parcel.registered", brand, "manifest",
                  {"waybill": waybill, "recipient_phone": phone, "destination_village": village,
                   "weight_g": int(min(60000, rng.lognormvariate(7.0, 0.9)) + 50)}, version=2)
        desk = f"centre-{rng.randrange(6)}"
        scan = self._scanner(brand, waybill)
        scan(desk, received, "received", centre)
        sorted_at = received + self.minutes(3, 40)
        scan(desk, sorted_at, "sorted", centre)
        ready = sorted_at
        if rng.random() < self.p.problem_rate:
            scan(desk, sorted_at + self.minutes(2, 20), "problem", centre, problem_reason="damaged")
            ready = sorted_at + self.minutes(24 * 60, 30 * 60)  # repacked, on a run a day later
        t = self.next_trip(route, ready)
        self.board(t)
        scan(desk, max(ready + self.minutes(1, 5), t.scheduled - self.minutes(5, 25)), "loaded",
             centre, trip_id=t.id)
        arrived = t.township_at + self.minutes(0, 5)
        scan(f"twn:{township}", arrived, "arrived", township, trip_id=t.id)
        if rng.random() < self.p.lost_rate:
            scan(f"twn:{township}", arrived + self.minutes(30, 300), "problem", township,
                 problem_reason="lost")
            return
        scan(f"twn:{township}", arrived + self.minutes(5, 20), "out_for_delivery", township)
        stored = t.village_at[village]  # the keeper shelves the run's parcels in one go
        self.codes[village] = self.codes.get(village, 0) + 1
        k = self.codes[village]
        code = f"{k // 500 % 20 + 1}-{k // 100 % 5 + 1}-{1000 + k % 9000}"
        scan(f"vil:{village}", stored, "stored", village, pickup_code=code)
        if rng.random() < self.p.refused_rate:
            refused = stored + self.minutes(120, 1200)
            scan(f"vil:{village}", refused, "problem", village, problem_reason="refused")
            scan(f"vil:{village}", refused + self.minutes(5, 30), "returned", village)
            return
        wait = timedelta(hours=min(40.0, 3 + rng.expovariate(1 / 8)))
        scan(f"vil:{village}", stored + wait, "delivered", village)

    def _scanner(self, brand: str, waybill: str) -> Any:
        def scan(device: str, at: datetime, action: str, node: str, **extra: Any) -> None:
            self.emit(device, at, "parcel.scanned", brand, f"op-{device.split(':')[-1][-8:]}",
                      {"waybill": waybill, "action": action, "node_id": node, **extra})
        return scan

    # -- upward ------------------------------------------------------------------------------
    def hand_in(self, day: date, village: str) -> None:
        """A co-op's parcel handed in at a village point, collected by the next run that passes
        it and scanned in at the centre when that run is back."""
        brand = self.brand()
        waybill = self.waybill(brand)
        at = _at(day, "08:00", self.cf) + self.minutes(0, 600)
        scan = self._scanner(brand, waybill)
        scan(f"vil:{village}", at, "received", village)
        route = self.cf.route_of(village)
        missed = self.rng.random() < 0.02  # the run was full or the parcel not ready
        for offset in range(3):
            d = day + timedelta(days=offset)
            for run in sorted(route.runs, key=lambda r: r.departs):
                t = self.trip(route, run, d)
                if t.village_at[village] < at + timedelta(minutes=10):
                    continue
                if missed:
                    missed = False
                    continue
                self.board(t)
                scan(f"vil:{village}", t.village_at[village] + self.minutes(0, 5), "loaded",
                     village, trip_id=t.id)
                scan(f"centre-{self.rng.randrange(6)}", t.arrives + self.minutes(40, 80),
                     "arrived", self.cf.centre, trip_id=t.id)
                return

    # -- the run -----------------------------------------------------------------------------
    def build(self) -> Traffic:
        p, cf = self.p, self.cf
        for d in range(p.days):
            day = p.start + timedelta(days=d)
            inbound = round(p.parcels_per_day * p.inbound_factor * self.scale)
            for wave, share in p.waves:
                orders = round(inbound * share / 1.45)  # ~1.45 parcels an order
                start = _at(day, wave, cf)
                for _ in range(orders):
                    self.order(start + self.minutes(0, 50))
            ups = round(p.parcels_per_day * self.scale * p.upward_share)
            for _ in range(ups):
                self.hand_in(day, self.rng.choice(cf.villages))
            for _ in range(round(ups * (p.upward_factor - 1))):
                self.hand_in(day, self.rng.choice(self.orchards))
        self._chaos()
        return self.out

    def _chaos(self) -> None:
        """Devices whose clocks are hours off (their events' times are as the device says) and
        handhelds that go offline for hours, then upload in a burst."""
        p, rng = self.p, self.rng
        devices = sorted({s.device for s in self.out.sent if not s.device.startswith("manifest:")})
        skewed = {d: timedelta(hours=rng.choice((-5, -3, 2, 4))) for d in devices
                  if rng.random() < p.skewed_clock}
        offline = {d: self.minutes(120, 600) for d in devices if rng.random() < p.offline}
        for s in self.out.sent:
            if s.device in skewed:
                at = datetime.fromisoformat(s.event["occurred_at"]) + skewed[s.device]
                s.event["occurred_at"] = at.isoformat()
            if s.device in offline:
                s.upload_at = s.upload_at + offline[s.device]


def batches(traffic: Traffic, flush_minutes: float, rng: random.Random) -> list[Upload]:
    """Each device's events grouped into the batches it uploads: what it has gathered every
    `flush_minutes` (a village keeper's shelving of a run is one batch), at most 500 each, in
    upload order; then the chaos knobs: batches sent twice, shuffled, or a day late."""
    p = traffic.profile
    groups: dict[tuple[str, int], list[Sent]] = {}
    for s in traffic.sent:
        bucket = math.floor(s.upload_at.timestamp() / (flush_minutes * 60))
        groups.setdefault((s.device, bucket), []).append(s)
    uploads: list[Upload] = []
    for (device, bucket), items in groups.items():
        at = datetime.fromtimestamp((bucket + 1) * flush_minutes * 60, tz=items[0].upload_at.tzinfo)
        for i in range(0, len(items), 500):
            uploads.append(Upload(device, at, [s.event for s in items[i:i + 500]]))
    end = traffic.end
    assert end is not None
    extra: list[Upload] = []
    for u in uploads:
        if rng.random() < p.late_24h:
            u.at = u.at + timedelta(hours=rng.uniform(24.5, 30))
        if rng.random() < p.reorder:
            u.events = rng.sample(u.events, len(u.events))
        if rng.random() < p.twice:
            extra.append(Upload(u.device, u.at + timedelta(minutes=rng.uniform(1, 90)),
                                list(u.events)))
    uploads += extra
    # Whatever would be uploaded after the run's end is uploaded at its end (the backlog syncs).
    for u in uploads:
        u.at = min(u.at, end)
    uploads.sort(key=lambda u: (u.at, u.device))
    for i, u in enumerate(uploads):
        u.index = i
    return uploads


def iter_events(uploads: list[Upload]) -> Iterator[tuple[Upload, dict[str, Any]]]:
    for u in uploads:
        for e in u.events:
            yield u, e
