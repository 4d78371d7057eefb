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

from loadtest.countyfile import BusLine, CountyFile, Route, Run
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
    legacy_upward: float = 0.15         # upward parcels with no hand-in event (the older way)
    bus_village_share: float = 0.1      # of the other hand-ins, at a village a bus line serves
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
    bus: bool = False


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
        if t.bus:
            self._bus_moves(t)
            return
        driver = f"driver:{t.route.id}"
        brand = self.brand()  # a vehicle event's brand is the operator's choice of label
        common = {"trip_id": t.id, "route_id": t.route.id, "run_id": t.run.id}
        self.emit(driver, t.departs, "vehicle.departed", brand, f"drv-{t.route.id[2:10]}",
                  {**common, "node_id": self.cf.centre, "scheduled_at": t.scheduled.isoformat()})
        self.emit(driver, t.arrives, "vehicle.arrived", brand, f"drv-{t.route.id[2:10]}",
                  {**common, "node_id": t.route.stops[-1],
                   "scheduled_at": t.arrives_scheduled.isoformat()})

    def _bus_moves(self, t: Trip) -> None:
        """A bus run's departure from the centre and its arrival back there (its own handheld)."""
        common = {"trip_id": t.id, "route_id": t.route.id, "run_id": t.run.id}
        brand = self.brand()
        self.emit(f"bus:{t.route.id}", t.departs, "vehicle.departed", brand, "drv-bus",
                  {**common, "node_id": self.cf.centre, "scheduled_at": t.scheduled.isoformat()})
        self.emit(f"bus:{t.route.id}", t.arrives, "vehicle.arrived", brand, "drv-bus",
                  {**common, "node_id": self.cf.centre,
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
    def hand_in(self, day: date, village: str, orchard: bool = False) -> None:
        """A co-op's parcel handed in at a village point (`parcel.handed_in`, a perishable class
        or none), collected by the next run (or bus of a bus line) that passes the village,
        `received` at the centre when that run is back; perishables go into the cold store there,
        some leave it for a while (a few too long), and those that fly are `air_loaded` for the
        18:00 cut-off (a few after it). A few hand-ins say it the older way: only a `received`
        scan at the village, an `arrived` at the centre."""
        cf, rng = self.cf, self.rng
        brand = self.brand()
        waybill = self.waybill(brand)
        scan = self._scanner(brand, waybill)
        classes = list(cf.perishables)
        if not orchard and rng.random() < self.p.legacy_upward:
            at = _at(day, "08:00", cf) + self.minutes(0, 600)
            scan(f"vil:{village}", at, "received", village)
            self._collect(scan, village, at, "arrived")
            return
        if orchard and "plum" in classes and rng.random() < 0.85:
            cls: str | None = "plum"
        else:
            cls = rng.choice([*classes, None, None]) if classes else None
        # Plums are picked at dawn and handed in in the morning; the rest through the day.
        at = _at(day, "05:30", cf) + self.minutes(0, 180) if cls == "plum" \
            else _at(day, "08:00", cf) + self.minutes(0, 600)
        shipper = f"COOP-{village.split('-', 1)[-1]}-{rng.randrange(1, 60):03d}"
        self.emit(f"vil:{village}", at, "parcel.handed_in", brand, f"op-{village[-8:]}",
                  {"waybill": waybill, "shipper_id": shipper, "origin_village": village,
                   "weight_g": int(min(30000, rng.lognormvariate(8.3, 0.6))) + 200,
                   "perishable": cls})
        scan(f"vil:{village}", at + self.minutes(0.5, 3), "received", village)
        village_cold = cls is not None and rng.random() < 0.05
        if village_cold:
            # The village point's own cold box: the chain starts here, the run is time outside.
            scan(f"vil:{village}", at + self.minutes(5, 15), "cold_in", village)
        got = self._collect(scan, village, at, "received", cold=village_cold)
        if got is None or cls is None:
            return
        self._cold_chain(scan, got, cf.perishables[cls].air)

    def _collect(self, scan: Any, village: str, at: datetime, action: str,
                 cold: bool = False) -> datetime | None:
        """Loaded at the village on the first run (or bus) passing it after `at` (now and then
        the one after: the run was full), scanned in (`action`) at the centre when it is back:
        when that was."""
        missed = self.rng.random() < 0.02
        for leaving, trip, arrives in self._pickups(village, at):
            if missed:
                missed = False
                continue
            if cold:
                scan(f"vil:{village}", leaving - self.minutes(1, 4), "cold_out", village)
            scan(f"vil:{village}", leaving + self.minutes(0, 5), "loaded", village, trip_id=trip)
            back = arrives + self.minutes(40, 80)
            scan(f"centre-{self.rng.randrange(6)}", back, action, self.cf.centre, trip_id=trip)
            return back
        return None

    def _pickups(self, village: str, at: datetime) -> Iterator[tuple[datetime, str, datetime]]:
        """The runs that pass the village after `at`, in order: (at the village, trip, back).
        A village on a bus line sends half its produce by bus."""
        line = next((b for b in self.cf.bus_lines if village in b.stops[1:]), None)
        by_bus = line is not None and self.rng.random() < 0.5
        for offset in range(3):
            d = at.astimezone(self.cf.tz).date() + timedelta(days=offset)
            if by_bus and line is not None:
                for dep in line.departures:
                    b = self.bus(line, d, dep)
                    if b.village_at[village] >= at + timedelta(minutes=10):
                        self.board(b)
                        yield b.village_at[village], b.id, b.arrives
                continue
            route = self.cf.route_of(village)
            for run in sorted(route.runs, key=lambda r: r.departs):
                t = self.trip(route, run, d)
                if t.village_at[village] >= at + timedelta(minutes=10):
                    self.board(t)
                    yield t.village_at[village], t.id, t.arrives

    def bus(self, line: BusLine, day: date, dep: time) -> Trip:
        """A run of a bus line (客货邮): out from the county centre along its stops and back; its
        arrival is the one back at the centre, where its parcels are unloaded."""
        trip_id = f"{line.id}-{day:%Y%m%d}-{dep:%H%M}"
        if trip_id in self.trips:
            return self.trips[trip_id]
        sched = _at(day, dep, self.cf)
        late = self.rng.random() < self.p.late_run_rate
        delay = self.minutes(20, 45) if late else self.minutes(-3, 10)
        stops = {s: sched + delay + timedelta(minutes=35 * i) for i, s in enumerate(line.stops)}
        back_sched = sched + timedelta(minutes=35 * 2 * (len(line.stops) - 1) + 10)
        run = Run(f"{line.id}-{dep:%H%M}", dep, back_sched.time())
        route = Route(line.id, line.stops, 0, (run,))
        t = Trip(trip_id, route, run, sched, sched + delay, back_sched,
                 back_sched + delay + self.minutes(-8, 8), stops[line.stops[1]],
                 {s: at for s, at in stops.items() if self.cf.tier.get(s) == "village"},
                 bus=True)
        self.trips[trip_id] = t
        return t

    def _cold_chain(self, scan: Any, received: datetime, air: bool) -> None:
        """At the centre: into the cold store (now and then hours later), maybe out and back for
        repacking (a few left out too long), then for the air classes out to the airline by the
        cut-off of the day it went in (a few after it)."""
        rng, cf, centre = self.rng, self.cf, self.cf.centre
        desk = f"cold-{rng.randrange(2)}"
        slow = rng.random() < 0.05
        cold_in = received + (self.minutes(120, 480) if slow else self.minutes(5, 45))
        scan(desk, cold_in, "cold_in", centre)
        last = cold_in
        if rng.random() < 0.3:
            out = last + self.minutes(20, 90)
            long = rng.random() < 0.15
            back = out + (self.minutes(130, 300) if long else self.minutes(10, 60))
            scan(desk, out, "cold_out", centre)
            scan(desk, back, "cold_in", centre)
            last = back
        if not air or cf.air_cutoff is None:
            return
        local = cold_in.astimezone(cf.tz)
        day = local.date() if local.time() <= cf.air_cutoff else local.date() + timedelta(days=1)
        cutoff = datetime.combine(day, cf.air_cutoff, cf.tz)
        if rng.random() < 0.06:
            loaded = cutoff + self.minutes(5, 120)   # the truck to the airport left without it
        else:
            loaded = max(last + self.minutes(30, 60), cutoff - self.minutes(15, 240))
        scan(desk, loaded - self.minutes(10, 50), "cold_out", centre)
        scan(desk, loaded, "air_loaded", centre)

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
            on_bus = sorted({s for b in cf.bus_lines for s in b.stops if cf.tier.get(s) == "village"})
            for _ in range(ups):
                near_bus = on_bus and self.rng.random() < p.bus_village_share
                self.hand_in(day, self.rng.choice(on_bus if near_bus else cf.villages))
            for _ in range(round(ups * (p.upward_factor - 1))):
                self.hand_in(day, self.rng.choice(self.orchards), orchard=True)
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
