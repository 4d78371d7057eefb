"""Arrival SMS decided on journal time: the same journal gives the same `sms.requested` decisions
whatever the planner's lag (on time, minutes or hours behind) and however it pages the journal
(1, 7, all at once), and a digest closing at T names exactly the parcels recorded before T and
not collected (recorded) before T (docs/sms.md). The planner is driven as the projection drives
it (projections/sms_planner.py): `close_until(recorded_at)` before each event, its decisions
appended to the journal at the end of each page, `due()` on the wall clock once caught up."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest

from domain import sms
from domain.envelope import Envelope
from domain.events import ParcelRegistered, ParcelScanned, Payload, ScanAction, SmsRequested
from domain.sms_planning import SmsPlanning
from tests.unit.test_sms_planning import OFFSET, POINTS, POLICY, FakeStore, at, sealed

NODES = sorted(POINTS)
WINDOW = timedelta(seconds=POLICY.digest_seconds)


def envelope(event_type: str, payload: Payload, recorded: datetime, version: int = 1) -> Envelope:
    return Envelope(event_id=str(uuid.uuid4()), type=event_type, schema_version=version,
                    occurred_at=recorded, recorded_at=recorded, device_id="pda-1", brand="ZTO",
                    operator_id="op-1", payload=payload)


@dataclass(frozen=True)
class Upload:
    """An event, and when its upload committed to the journal (at or a little after its
    `recorded_at`: appends in flight)."""

    e: Envelope
    committed: datetime


def county_day(seed: int, jitter: float) -> tuple[list[Upload], dict[str, str]]:
    """A morning at two points: 40 households, parcels stored over 40 minutes, many picked up
    soon after, some within seconds of their digest's end. Returns the uploads in journal
    (commit) order and each waybill's household."""
    rng = random.Random(seed)
    households = [f"{i:064x}" for i in range(1, 41)]
    events: list[Envelope] = []
    phone_of: dict[str, str] = {}
    n = 0
    for h in households:
        node = rng.choice(NODES)
        first: datetime | None = None
        for _ in range(rng.choice((1, 1, 2, 3, 4))):
            n += 1
            wb = f"ZT73{n:011d}"
            phone_of[wb] = h
            events.append(envelope("parcel.registered", ParcelRegistered(
                waybill=wb, recipient_phone=sealed(h), destination_village=node, weight_g=500),
                at(11, 9) + timedelta(seconds=n), version=2))
            if first is None or rng.random() < 0.3:
                stored = at(11, 10) + timedelta(seconds=rng.uniform(0, 2400))
            else:  # near the end of the first one's window: either side of it
                stored = first + WINDOW + timedelta(seconds=rng.uniform(-4, 4))
            first = first or stored
            code = None if rng.random() < 0.5 else f"9-9-{n:04d}"
            events.append(envelope("parcel.scanned", ParcelScanned(
                waybill=wb, action=ScanAction.stored, node_id=node, pickup_code=code), stored))
            if rng.random() < 0.6:
                # picked up: soon, or about when its digest closes, or long after
                after = rng.choice((rng.uniform(5, 300), rng.uniform(595, 605),
                                    rng.uniform(1, 1200)))
                events.append(envelope("parcel.scanned", ParcelScanned(
                    waybill=wb, action=ScanAction.delivered, node_id=node),
                    stored + timedelta(seconds=after)))
    uploads = [Upload(e, e.recorded_at + timedelta(seconds=rng.uniform(0, jitter)))
               for e in events]
    uploads.sort(key=lambda u: u.committed)
    return uploads, phone_of


class Planner:
    """The SMS planner over a journal that grows as uploads commit, run in rounds at wall times."""

    def __init__(self, uploads: list[Upload], page: int) -> None:
        self.pending = list(uploads)
        self.page = page
        self.store = FakeStore()
        self.journal: list[Envelope] = []
        self.ids: set[str] = set()
        self.pos = 0
        self.requested: list[Envelope] = []

    def append(self, events: list[Envelope]) -> None:
        for e in events:
            if e.event_id not in self.ids:  # the journal dedupes by event_id
                self.ids.add(e.event_id)
                self.journal.append(e)
                if e.type == "sms.requested":
                    self.requested.append(e)

    async def catch_up(self, wall: datetime) -> None:
        while True:
            while self.pending and self.pending[0].committed <= wall:
                self.append([self.pending.pop(0).e])
            batch = self.journal[self.pos:self.pos + self.page]
            if not batch:
                return
            plan = SmsPlanning(self.store, POLICY, OFFSET, POINTS, wall)
            out: list[Envelope] = []
            for e in batch:
                out += await plan.close_until(min(e.recorded_at, wall))
                out += await plan.apply(e)
            self.pos += len(batch)
            self.append(out)

    async def round(self, wall: datetime) -> None:
        await self.catch_up(wall)
        self.append(await SmsPlanning(self.store, POLICY, OFFSET, POINTS, wall).due())
        await self.catch_up(wall)

    async def run(self, rounds: list[datetime]) -> dict[str, tuple[object, ...]]:
        for wall in rounds:
            await self.round(wall)
        assert not self.pending
        return decisions(self.requested)


def decisions(requested: list[Envelope]) -> dict[str, tuple[object, ...]]:
    """What an SMS was decided to be: which parcels with which codes, and its text."""
    out = {}
    for r in requested:
        p = r.payload
        assert isinstance(p, SmsRequested)
        out[r.event_id] = (p.sms_id, p.kind, p.node_id, tuple(sorted(
            (x.waybill, x.arrival_id, x.pickup_code) for x in p.parcels)), p.text,
            p.template_code, p.consented, p.first_known_at)
    return out


def by_rule(uploads: list[Upload], phone_of: dict[str, str]) -> list[tuple[str, ...]]:
    """The documented rule, on its own: per household and point, the first parcel opens a digest
    closing its window after it was recorded; parcels recorded before that join; a parcel
    collected (recorded) before it leaves; a digest left empty is gone; what it holds at its end
    is one SMS. The waybills of each SMS."""
    events = sorted((u.e for u in uploads), key=lambda e: e.recorded_at)
    open_: dict[tuple[str, str], tuple[datetime, list[str]]] = {}
    out: list[tuple[str, ...]] = []

    def close(before: datetime) -> None:
        for key, (closes, members) in list(open_.items()):
            if closes <= before:
                del open_[key]
                out.append(tuple(sorted(members)))

    for e in events:
        close(e.recorded_at)
        p = e.payload
        if not isinstance(p, ParcelScanned):
            continue
        key = (phone_of[p.waybill], p.node_id)
        if p.action == ScanAction.stored:
            if key in open_:
                open_[key][1].append(p.waybill)
            else:
                open_[key] = (sms.digest_closes_at(e.recorded_at, POLICY, OFFSET), [p.waybill])
        elif key in open_ and p.waybill in open_[key][1]:
            open_[key][1].remove(p.waybill)
            if not open_[key][1]:
                del open_[key]
    close(datetime.max.replace(tzinfo=at(11, 0).tzinfo))
    return sorted(out)


def on_time(start: datetime, end: datetime, every: timedelta) -> list[datetime]:
    rounds, t = [], start
    while t <= end:
        rounds.append(t)
        t += every
    return [*rounds, end + timedelta(minutes=30)]  # and later, when every digest has closed


START, END = at(11, 9, 59), at(11, 11, 15)
LAGS = {
    "on time": on_time(START, END, timedelta(seconds=1)),
    "minutes behind": on_time(START, END, timedelta(minutes=7)),
    "hours behind": [at(11, 15)],
}


@pytest.mark.parametrize("jitter", [0.0, 1.5])
async def test_the_same_journal_gives_the_same_sms_at_any_lag_and_page_size(jitter: float) -> None:
    uploads, _ = county_day(20261113, jitter)
    seen: dict[tuple[str, int], dict[str, tuple[object, ...]]] = {}
    for lag, rounds in LAGS.items():
        for page in (1, 7, 100_000):
            seen[lag, page] = await Planner(uploads, page).run(rounds)
    reference = seen["on time", 1]
    assert len(reference) > 20
    for key, got in seen.items():
        assert got == reference, key


async def test_a_digest_names_what_was_recorded_before_it_closed_and_not_collected_before() -> None:
    uploads, phone_of = county_day(20261114, 0.0)
    expected = by_rule(uploads, phone_of)
    # the scenario has parcels picked up within seconds either side of their digest's end
    assert len(expected) > 20
    for rounds in LAGS.values():
        got = await Planner(uploads, 7).run(rounds)
        assert sorted(tuple(sorted(x[0] for x in d[3])) for d in got.values()) == expected


async def test_a_pickup_recorded_just_after_the_digest_closed_leaves_the_parcel_in_its_sms() -> None:
    """The case the load harness found: stored 10:00:00, picked up 10:10:05 (the digest closed
    at 10:10:00). A planner hours behind applies both in one page; it must still name it."""
    reg = envelope("parcel.registered", ParcelRegistered(
        waybill="ZT7300000000001", recipient_phone=sealed("a" * 64), destination_village=NODES[0],
        weight_g=500), at(11, 9), version=2)
    stored = envelope("parcel.scanned", ParcelScanned(
        waybill="ZT7300000000001", action=ScanAction.stored, node_id=NODES[0],
        pickup_code="1-1-0001"), at(11, 10))
    picked = envelope("parcel.scanned", ParcelScanned(
        waybill="ZT7300000000001", action=ScanAction.delivered, node_id=NODES[0]),
        at(11, 10, 10, 5))
    uploads = [Upload(e, e.recorded_at) for e in (reg, stored, picked)]
    for rounds in LAGS.values():
        planner = Planner(uploads, 100)
        got = await planner.run(rounds)
        [(_sms_id, kind, _node, parcels, *_)] = got.values()
        assert kind == "arrival" and [x[0] for x in parcels] == ["ZT7300000000001"]
        # decided on journal time: stamped when the digest closed, not when it was noticed
        [r] = planner.requested
        assert r.recorded_at == at(11, 10, 10) or rounds == LAGS["on time"]


async def test_a_pickup_recorded_before_the_digest_closed_takes_the_parcel_out_at_any_lag() -> None:
    events = [envelope("parcel.registered", ParcelRegistered(
        waybill=wb, recipient_phone=sealed("a" * 64), destination_village=NODES[0], weight_g=500),
        at(11, 9), version=2) for wb in ("ZT7300000000001", "ZT7300000000002")]
    events += [envelope("parcel.scanned", ParcelScanned(
        waybill=wb, action=ScanAction.stored, node_id=NODES[0], pickup_code=code), t)
        for wb, code, t in (("ZT7300000000001", "1-1-0001", at(11, 10)),
                            ("ZT7300000000002", "1-1-0002", at(11, 10, 2)))]
    events.append(envelope("parcel.scanned", ParcelScanned(
        waybill="ZT7300000000002", action=ScanAction.delivered, node_id=NODES[0]),
        at(11, 10, 9, 58)))
    # a later event, long after, that a lagging planner applies in the same page
    events.append(envelope("parcel.registered", ParcelRegistered(
        waybill="ZT7300000000003", recipient_phone=sealed("b" * 64),
        destination_village=NODES[0], weight_g=500), at(11, 10, 30), version=2))
    uploads = [Upload(e, e.recorded_at) for e in events]
    for rounds in LAGS.values():
        got = await Planner(uploads, 100).run(rounds)
        [(_, _, _, parcels, *_)] = got.values()
        assert [x[0] for x in parcels] == ["ZT7300000000001"]
