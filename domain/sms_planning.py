"""Arrival SMS planning: what the SMS planner decides when it reads an event, and when it looks at
the clock. Which arrivals of one household share an SMS (digests), when a digest or reminder is
requested (quiet hours, reminder stages), which arrivals a collection or a move ends, when a parcel
goes on the station keeper's call list. No I/O and no clock of its own: the state is reached
through `PlanStore` (PostgreSQL in projections/sms_state.py, a dict in the unit tests) and "now"
is passed in. The decisions are events (`parcel.pickup_assigned`, `sms.requested`) returned to the
caller, which writes them to the journal; state follows only when they are read back."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from domain import sms as rules
from domain.envelope import Envelope
from domain.events import (
    ConsentRecorded,
    ParcelRegistered,
    ParcelScanned,
    Payload,
    PickupAssigned,
    ScanAction,
    SealedPhone,
    SmsDelivered,
    SmsFailed,
    SmsKind,
    SmsParcel,
    SmsRequested,
    SmsSubmitted,
)

# The payloads the planner reads (`SmsPlanning.apply` has a case for each); the journal types it
# selects are derived from them (domain.events.PAYLOADS), not spelled again.
READS: tuple[type[Payload], ...] = (
    ParcelRegistered, ParcelScanned, PickupAssigned, ConsentRecorded, SmsRequested, SmsSubmitted,
    SmsDelivered, SmsFailed)
# A digest names at most this many parcels (a shop or a co-op receiving a wave): more start another.
MAX_DIGEST_PARCELS = 100
# Scans that end a parcel's wait at the point: picked up, taken home, sent back.
COLLECTING = (ScanAction.delivered, ScanAction.returned, ScanAction.out_for_delivery)
DEVICE = "gongpei-sms"
# What the SMS tables show for a number that was erased (or whose month was shredded).
ERASED = "erased"
_LAST4 = re.compile(r"尾号[0-9]{4}")


class NumberErased(Exception):
    """The number an SMS is for was erased: the SMS cannot be composed."""


def platform_event(event_type: str, payload: Payload, event_id: str, brand: str,
                   at: datetime) -> Envelope:
    """An event the SMS service writes to the journal; its id is derived, so writing it twice
    (after a crash, or from a rebuilt state) is one event."""
    return Envelope(event_id=event_id, type=event_type, schema_version=1, occurred_at=at,
                    recorded_at=at, device_id=DEVICE, brand=brand, operator_id="sms-service",
                    payload=payload)


def without_last4(text: str) -> str:
    """The text with a long SMS's "凭尾号5678取件" hidden, for a number erased since."""
    return _LAST4.sub("尾号****", text)


# ----------------------------------------------------------------------------------- the state


@dataclass(frozen=True)
class Recipient:
    """What the planner knows of a waybill's recipient (never the number itself)."""

    phone_ref: str | None          # None: no manifest yet
    known_at: datetime | None      # when the platform learned of the manifest
    collected_at: datetime | None  # the latest collection (pickup, home delivery, return)
    collected_by: str | None


@dataclass(frozen=True)
class Arrival:
    """A parcel stored at a village point (its first `stored` scan there)."""

    arrival_id: str
    waybill: str
    brand: str
    node_id: str
    stored_at: datetime
    known_at: datetime             # when the platform learned of it (recorded_at)
    pickup_code: str | None


@dataclass(frozen=True)
class Digest:
    """An open digest: the arrivals of one phone at one point that will share an SMS."""

    digest_id: str
    node_id: str
    closes_at: datetime


@dataclass(frozen=True)
class Candidate:
    """A waiting parcel as an SMS about it is composed from."""

    arrival_id: str
    waybill: str
    brand: str
    node_id: str
    pickup_code: str | None
    stored_at: datetime
    known_at: datetime
    consent: bool | None
    sealed_phone: Mapping[str, Any] | None   # the sealed object as stored (its `masked` is read)
    phone_ref: str = ""
    reminders: int = 0                       # reminders already requested
    last_sms_at: datetime | None = None      # when the last SMS about it reached a provider


class PlanStore(Protocol):
    """The planner's state: recipients, arrivals, digests, messages. Every write is idempotent
    (a rebuild replays the journal through it)."""

    # recipients
    async def register(self, waybill: str, brand: str, sealed: SealedPhone,
                       registered_at: datetime, known_at: datetime) -> None: ...
    async def record_consent(self, waybill: str, consent: bool, at: datetime) -> None: ...
    async def record_collection(self, waybill: str, by: str, at: datetime) -> None: ...
    async def recipient(self, waybill: str) -> Recipient | None: ...

    # arrivals and pickup codes
    async def waiting_at(self, waybill: str, node_id: str) -> bool: ...
    async def add_arrival(self, arrival: Arrival, closed_at: datetime | None,
                          closed_by: str | None) -> bool: ...
    async def unplanned(self, waybill: str) -> list[Arrival]: ...
    async def close_arrivals(self, waybill: str, at: datetime, by: str) -> None: ...
    async def reserve_codes(self, node_id: str) -> tuple[int, set[str]]: ...
    async def set_next_code(self, node_id: str, next_n: int) -> None: ...
    async def set_pickup_code(self, arrival_id: str, code: str) -> None: ...

    # digests
    async def latest_digest(self, phone_ref: str, node_id: str) -> Digest | None: ...
    async def digest_size(self, digest_id: str) -> int: ...
    async def open_digest(self, digest: Digest, phone_ref: str, opened_at: datetime) -> None: ...
    async def put_in_digest(self, arrival_id: str, digest_id: str, known_at: datetime) -> None: ...
    async def due_digests(self, before: datetime) -> list[Digest]: ...
    async def next_close(self) -> datetime | None: ...
    async def digest_parcels(self, digest_id: str) -> list[Candidate]: ...
    async def drop_digest(self, digest_id: str) -> None: ...
    async def reminder_candidates(self, stages: int, stored_by: datetime) -> list[Candidate]: ...
    async def cannot_compose(self, digest_id: str, arrival_ids: list[str], reason: str,
                             error: str) -> None: ...

    # messages
    async def add_message(self, payload: SmsRequested, requested_at: datetime) -> bool: ...
    async def announced(self, sms_id: str, arrival_ids: list[str]) -> list[Arrival]: ...
    async def reminded(self, arrival_ids: list[str], reminders: int) -> None: ...
    async def to_call_list(self, arrival_ids: list[str], reason: str) -> None: ...
    async def submitted(self, p: SmsSubmitted, at: datetime) -> None: ...
    async def delivered(self, p: SmsDelivered) -> None: ...
    async def failed(self, p: SmsFailed) -> None: ...


# ------------------------------------------------------------------------------ the decisions


class SmsPlanning:
    """The planner's decisions over one store, at one `now` (which only stamps the events it
    writes while applying the journal; it decides what is due in `due`). `points` are the
    county's village points by id, with the names an SMS gives them.

    Two clocks decide when a digest closes. Following the journal, `close_until(r)` before each
    event (recorded at `r`) requests every digest closing at or before `r` (journal time): the
    digest then holds exactly what was recorded before it closed, however far behind the planner
    runs and however the journal is paged. Caught up with the journal, `due` closes what the
    wall clock says is due (minus a grace for appends still in flight)."""

    def __init__(self, store: PlanStore, policy: rules.SmsPolicy, utc_offset_minutes: int,
                 points: Mapping[str, str], now: datetime) -> None:
        self.store = store
        self.policy = policy
        self.offset = utc_offset_minutes
        self.points = points
        self.now = now
        # The earliest closing of an open digest (journal time), fetched once, kept up to date
        # as digests open: the journal clock looks at the digests only when an event passes it.
        self._next_close: datetime | None = None
        self._next_known = False

    async def apply(self, e: Envelope) -> list[Envelope]:
        """Fold one journal event into the state; returns the events it decided (pickup codes)."""
        s = self.store
        match e.payload:
            case ParcelRegistered() as p:
                await s.register(p.waybill, e.brand, p.recipient_phone, e.occurred_at,
                                 e.recorded_at)
                for a in await s.unplanned(p.waybill):
                    await self._plan(a)  # stored before its manifest arrived
            case ConsentRecorded() as p:
                await s.record_consent(p.waybill, p.consent, e.occurred_at)
            case ParcelScanned(action=ScanAction.stored) as p:
                if p.node_id in self.points:
                    return await self._arrive(e, p)
            case ParcelScanned(action=action) as p if action in COLLECTING:
                await s.record_collection(p.waybill, str(action), e.occurred_at)
                await s.close_arrivals(p.waybill, e.occurred_at, str(action))
            case PickupAssigned() as p:
                await s.set_pickup_code(p.arrival_id, p.pickup_code)
            case SmsRequested() as p:
                await self._requested(p, e.occurred_at)
            case SmsSubmitted() as p:
                await s.submitted(p, e.occurred_at)
            case SmsDelivered() as p:
                await s.delivered(p)
            case SmsFailed() as p:
                await s.failed(p)
            case _:
                pass  # not the planner's concern
        return []

    async def _arrive(self, e: Envelope, p: ParcelScanned) -> list[Envelope]:
        s = self.store
        if await s.waiting_at(p.waybill, p.node_id):
            return []  # the same parcel scanned onto the shelf again: still one arrival
        # Stored somewhere else since: the parcel moved on, the old arrival is over.
        await s.close_arrivals(p.waybill, e.occurred_at, "moved")
        recipient = await s.recipient(p.waybill)
        # A scan uploaded late, after the parcel was already collected: it announces nothing.
        collected = (recipient is not None and recipient.collected_at is not None
                     and recipient.collected_at >= e.occurred_at)
        arrival_id = rules.arrival_id(p.waybill, p.node_id, e.event_id)
        code = p.pickup_code
        out: list[Envelope] = []
        if code is None and not collected:
            next_n, in_use = await s.reserve_codes(p.node_id)
            code, next_n = rules.allocate_code(next_n, in_use, self.policy)
            await s.set_next_code(p.node_id, next_n)
            out.append(platform_event(
                "parcel.pickup_assigned",
                PickupAssigned(waybill=p.waybill, node_id=p.node_id, arrival_id=arrival_id,
                               pickup_code=code),
                rules.derived_id("pickup_assigned", arrival_id), e.brand, self.now))
        arrival = Arrival(arrival_id, p.waybill, e.brand, p.node_id, e.occurred_at,
                          e.recorded_at, code)
        closed_at = recipient.collected_at if collected and recipient else None
        closed_by = recipient.collected_by if collected and recipient else None
        if await s.add_arrival(arrival, closed_at, closed_by) and not collected:
            await self._plan(arrival)
        return out

    async def _plan(self, arrival: Arrival) -> None:
        """Put a waiting arrival into its phone's open digest at the point, or open one."""
        s = self.store
        recipient = await s.recipient(arrival.waybill)
        if recipient is None or recipient.phone_ref is None or recipient.known_at is None:
            return  # no manifest yet: planned when it comes
        known_at = max(arrival.known_at, recipient.known_at)
        digest = await s.latest_digest(recipient.phone_ref, arrival.node_id)
        if (digest is not None and rules.joins_digest(digest.closes_at, known_at)
                and await s.digest_size(digest.digest_id) < MAX_DIGEST_PARCELS):
            digest_id = digest.digest_id
        else:
            digest_id = rules.derived_id("digest", arrival.arrival_id)
            closes_at = rules.digest_closes_at(known_at, self.policy, self.offset)
            await s.open_digest(Digest(digest_id, arrival.node_id, closes_at),
                                recipient.phone_ref, known_at)
            if self._next_known and (self._next_close is None or closes_at < self._next_close):
                self._next_close = closes_at
        await s.put_in_digest(arrival.arrival_id, digest_id, known_at)

    async def _requested(self, p: SmsRequested, at: datetime) -> None:
        s = self.store
        if not await s.add_message(p, at):
            return
        ids = [x.arrival_id for x in p.parcels]
        if p.kind == "arrival":
            # A parcel that joined this digest after its SMS was decided (it reached the journal
            # in the moment between) is not in it: it starts a digest of its own.
            for late in await s.announced(p.sms_id, ids):
                await self._plan(late)
            return
        await s.reminded(ids, p.stage + 1)
        if p.stage + 1 >= len(self.policy.reminder_hours):  # the last one: over to the keeper
            await s.to_call_list(ids, "no_pickup_after_reminders")

    # ---------------------------------------------------------------------- what is due: when

    async def close_until(self, t: datetime) -> list[Envelope]:
        """Journal time: the SMS of every digest closing at or before `t`, the `recorded_at` of
        the event about to be applied, each stamped with its own closing time. Called before
        every event, so a digest closing at T holds exactly the parcels recorded before T and
        not collected (recorded) before T, whatever the planner's lag or page size. Cheap: the
        digests are read only when `t` passes the earliest closing."""
        if not self._next_known:
            self._next_close = await self.store.next_close()
            self._next_known = True
        if self._next_close is None or self._next_close > t:
            return []
        out = await self._close(await self.store.due_digests(t), None)
        self._next_close = await self.store.next_close()
        return out

    async def _close(self, digests: Sequence[Digest], at: datetime | None) -> list[Envelope]:
        """Request the SMS of these closed digests (stamped `at`, or each at its own closing
        time), and take them out of the open digests: a digest is decided once, and the parcels
        recorded after it start another (as when the request is read back)."""
        s = self.store
        out: list[Envelope] = []
        for d in digests:
            parcels = await s.digest_parcels(d.digest_id)
            if not parcels:
                await s.drop_digest(d.digest_id)
                continue
            try:
                out.append(self.request("arrival", 0, d.digest_id, d.node_id, parcels,
                                        at=d.closes_at if at is None else at))
            except (ValueError, KeyError, NumberErased) as exc:  # ValidationError is a ValueError
                await self._cannot_compose(d.digest_id, [a.arrival_id for a in parcels], exc)
                continue
            await s.drop_digest(d.digest_id)
        return out

    async def due(self, grace: timedelta = timedelta(seconds=2),
                  limit: int | None = None) -> list[Envelope]:
        """Wall time, once caught up with the journal: the SMS of every digest that has closed
        (`grace` ago: an event recorded before it closed but still on its way into the journal
        gets in; the `limit` first to close, if given) and of every reminder that is due, as
        `sms.requested` events."""
        s = self.store
        now = self.now
        out = await self._close((await s.due_digests(now - grace))[:limit], now)
        candidates = await s.reminder_candidates(
            len(self.policy.reminder_hours), now - timedelta(hours=self.policy.reminder_hours[0]))
        by_id = {c.arrival_id: c for c in candidates}
        waiting = [rules.Waiting(c.arrival_id, c.phone_ref, c.node_id, c.stored_at, c.reminders,
                                 c.last_sms_at) for c in candidates]
        for (_ref, node_id, stage), group in rules.due_reminders(
                waiting, now, self.policy, self.offset).items():
            first = min(w.arrival_id for w in group)
            try:
                out.append(self.request("reminder", stage,
                                        rules.derived_id("reminder", str(stage), first), node_id,
                                        [by_id[w.arrival_id] for w in group]))
            except (ValueError, KeyError, NumberErased) as exc:
                await self._cannot_compose("", [w.arrival_id for w in group], exc)
        return out

    async def _cannot_compose(self, digest_id: str, arrival_ids: list[str],
                              exc: Exception) -> None:
        """An SMS that cannot be composed (a point gone from the county file, say) would fail
        every round: its parcels go to the keeper's call list instead, and the digest is dropped."""
        reason = "phone_erased" if isinstance(exc, NumberErased) else "sms_not_composed"
        await self.store.cannot_compose(digest_id, arrival_ids, reason, type(exc).__name__)

    def request(self, kind: SmsKind, stage: int, sms_id: str, node_id: str,
                parcels: Sequence[Candidate], at: datetime | None = None) -> Envelope:
        """The SMS for these parcels (of one number), decided at `at` (default: `now`). Its
        masked form and last four come from the sealed object's readable `masked`; an erased
        number cannot be composed (NumberErased), nor a point the county no longer has
        (KeyError)."""
        stored = parcels[0].sealed_phone or {}
        if stored.get("erased") or "masked" not in stored:
            raise NumberErased("the number was erased")
        masked = str(stored["masked"])
        codes = [a.pickup_code for a in parcels]
        if any(c is None for c in codes):
            raise ValueError("a parcel without a pickup code")
        listed = [rules.Parcel(a.waybill, a.brand, str(a.pickup_code)) for a in parcels]
        consented = all(a.consent is True for a in parcels)
        oldest = min(a.stored_at for a in parcels)
        now = self.now if at is None else at
        message = rules.compose(kind, listed, self.points[node_id], self.policy,
                                consented=consented, days=max(1, (now - oldest).days),
                                phone_last4=masked[-4:])
        payload = SmsRequested(
            sms_id=sms_id, kind=kind, stage=stage, node_id=node_id, phone_masked=masked,
            parcels=tuple(SmsParcel(waybill=a.waybill, brand=a.brand, arrival_id=a.arrival_id,
                                    pickup_code=str(a.pickup_code)) for a in parcels),
            consented=consented, template_code=message.template, params=message.params,
            text=message.text, segments=message.segments,
            send_after=rules.release_at(now, self.policy, self.offset),
            first_known_at=min(a.known_at for a in parcels))
        return platform_event("sms.requested", payload, rules.derived_id("sms.requested", sms_id),
                              parcels[0].brand, now)
