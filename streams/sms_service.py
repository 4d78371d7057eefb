"""The SMS service: follows the journal (arrivals, collections, consents, its own decisions),
requests the SMS of closed digests and due reminders, and sends them through the providers.

At most one SMS per (parcel, arrival) and per digest, across crashes, restarts and rebuilds:
- which parcels an SMS names is decided once, as an `sms.requested` event with a derived id;
- before each provider call the attempt is committed to `sms_attempts`; a call that got no answer
  (a crash, a timeout) is settled by asking the provider for our out-id before anything is sent
  again, on any provider;
- a message is handed to the failover provider only once every earlier call is known not to have
  been accepted.
Messages are sent concurrently (a bounded number in progress, one per number at a time, each
provider paced by a token bucket at its account's rate); every rule above holds per message.
One instance works at a time (a PostgreSQL advisory lock); a second is a standby."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Literal

import asyncpg

from domain import sms as rules
from domain.county import County
from domain.events import SmsFailed, SmsSubmitted
from domain.sms_planning import platform_event
from infra.db import TRANSIENT_DB_ERRORS
from infra.pii import InvalidTag, Keyring, PhoneErased
from projections import sms_outbox, sms_planner
from projections.locks import Lock
from projections.metrics import (
    SMS_ARRIVAL_TO_SUBMITTED,
    SMS_FAILURES,
    SMS_OUTCOMES,
    SMS_OVERDUE,
)
from projections.tracking_store import use_all_brands
from streams.follow import follow_journal
from streams.sms_pacing import TokenBucket, work_through
from streams.sms_providers import BEIJING, Provider, ProviderUnavailable, SendResult

log = logging.getLogger("gongpei.sms")
SENDER_LOCK = int(Lock.SMS_SENDER)
OVERDUE_AFTER = timedelta(minutes=5)
FOLLOW_PAGE = 200
CLOSE_PAGE, CLOSE_PAGES = 500, 20


class Sender:
    """Sends due messages. `providers` in order of preference; `query_after` is how long an
    unanswered call is left before the provider is asked about it (its records may lag).
    `concurrency` calls are in progress at once (1: one after the other), never two for one
    number; `qps` paces each named provider's SendSms to its account's rate."""

    def __init__(self, county: County, providers: Sequence[Provider], *, keys: Keyring,
                 transient_limit: int = 3, query_after: timedelta = timedelta(seconds=2),
                 give_up_after: timedelta = timedelta(minutes=30),
                 retry_window: timedelta = timedelta(hours=6),
                 clock: Callable[[], datetime] = lambda: datetime.now(UTC),
                 concurrency: int = 1, qps: Mapping[str, float] | None = None,
                 slice_seconds: float = 2.0, batch: int = 200) -> None:
        if not providers:
            raise ValueError("at least one SMS provider is needed")
        self.county = county
        self.keys = keys  # opens a message's phone for the moment of a provider call
        self.policy = county.sms
        self.providers = {p.name: p for p in providers}
        self.order = [p.name for p in providers]
        self.transient_limit = transient_limit
        self.query_after = query_after
        self.give_up_after = give_up_after  # an unanswered call no one can confirm: to the keeper
        self.retry_window = retry_window    # transient failures, from the first call: then give up
        self.clock = clock
        self.concurrency = max(1, concurrency)
        # One bucket per provider account, shared by every call in progress.
        self.buckets = {name: TokenBucket(rate) for name, rate in (qps or {}).items()
                        if name in self.providers}
        # How long one round keeps starting calls before the planner gets its turn (new digests
        # to request, the sender's own events to read back), and how many due messages it reads
        # from the queue at a time.
        self.slice_seconds = slice_seconds
        self.batch = max(batch, self.concurrency)

    async def send_due(self, pool: asyncpg.Pool) -> int:
        """Work through the messages due now; returns how many calls were made. The advisory
        lock is held until every call started here has its outcome recorded (a rebuild waits)."""
        async with pool.acquire() as conn:
            if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", SENDER_LOCK):
                return 0
            try:
                return await self._send_slice(pool)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", SENDER_LOCK)

    async def _send_slice(self, pool: asyncpg.Pool) -> int:
        """Up to `concurrency` messages in progress, one per number, for one slice."""
        async def fetch(in_progress: list[sms_outbox.Outgoing]) -> list[sms_outbox.Outgoing]:
            async with pool.acquire() as conn:
                return await sms_outbox.due_messages(conn, self.clock(), self.batch,
                                                     skip=[m.sms_id for m in in_progress])

        return await work_through(fetch, lambda m: self._one(pool, m),
                                  key=lambda m: m.phone_ref, concurrency=self.concurrency,
                                  batch=self.batch, seconds=self.slice_seconds)

    async def _one(self, pool: asyncpg.Pool, m: sms_outbox.Outgoing) -> int:
        """One message: settle earlier calls, check the budget, then one provider call, recorded
        before it is made and answered in the same transaction as its event. Returns 1 if a
        send was made."""
        async with pool.acquire() as conn:
            chosen = await self._prepare(conn, m)
        if chosen is None:
            return 0
        name, phone = chosen
        bucket = self.buckets.get(name)
        if bucket is not None:
            await bucket.take()
        attempt = m.attempts + 1
        async with pool.acquire() as conn:
            await sms_outbox.begin_attempt(conn, m.sms_id, attempt, name, self.clock())
        result = await self.providers[name].send(
            phone=phone, sign_name=self.policy.sign_name, template_code=m.template_code,
            params=m.params, out_id=m.sms_id)
        async with pool.acquire() as conn:
            await self._answered(conn, m, name, attempt, result)
        return 1

    async def _prepare(self, conn: asyncpg.Connection, m: sms_outbox.Outgoing
                       ) -> tuple[str, str] | None:
        """The provider to call now and the number to send to; None when the message is not to
        be sent now (waiting, cancelled, settled as already sent, failed for good)."""
        now = self.clock()
        # Accepted by a provider: the sms.submitted written with that answer is in the journal
        # and on its way to this state (a rebuild is replaying), so it waits, never sent again.
        # Its parcels all collected while it waited: cancelled. Quiet hours begun: held.
        gate, until = rules.send_gate(accepted=m.accepted, waiting=m.waiting, now=now,
                                      policy=self.policy,
                                      utc_offset_minutes=self.county.utc_offset_minutes)
        if gate == "wait":
            await sms_outbox.defer(conn, m.sms_id, until)
            return None
        if gate == "cancel":
            await self._failed(conn, m, "gongpei", "COLLECTED", permanent=False, stage="cancelled")
            return None
        phone: str | None = None
        # 1. Calls that got no answer: ask before anything else is sent.
        for provider_name, started in m.uncertain:
            if now - started < self.query_after:
                await sms_outbox.defer(conn, m.sms_id, started + self.query_after)
                return None
            provider = self.providers.get(provider_name)
            if provider is None:
                # Nobody left to ask: sending again could be a second SMS. The keeper calls.
                await self._failed(conn, m, provider_name, "PROVIDER_GONE", permanent=True)
                return None
            if phone is None and (phone := await self._open(conn, m)) is None:
                return None
            try:
                found = await provider.find(phone=phone, out_id=m.sms_id,
                                            sent_on=self._provider_day(started))
            except ProviderUnavailable as exc:
                if now - started > self.give_up_after:
                    await self._failed(conn, m, provider_name, "UNCONFIRMED", permanent=True)
                    return None
                log.warning("sms %s: cannot ask %s about an unanswered call (%s); later",
                            m.sms_id, provider_name, exc)
                await sms_outbox.defer(conn, m.sms_id, now + timedelta(seconds=10))
                return None
            if found is not None:
                log.info("sms %s: %s had accepted it before we could record that; recorded,"
                         " not resent", m.sms_id, provider_name)
                await self._submitted(conn, m, provider_name, found, m.attempts, recovered=True)
                return None
            if not provider.lists_every_send:
                # Its list shows a message only once a carrier reported on it: keep asking for a
                # while, then leave it to the keeper rather than risk a second SMS.
                if now - started > self.give_up_after:
                    await self._failed(conn, m, provider_name, "UNCONFIRMED", permanent=True)
                else:
                    await sms_outbox.defer(conn, m.sms_id, now + self.query_after)
                return None
            log.info("sms %s: %s has no record of it; sending", m.sms_id, provider_name)
            await sms_outbox.settle_uncertain(conn, m.sms_id, "not_sent")
        # 2. The per-number daily budget (exact: no other call for this number is in progress).
        day_start = rules.county_day_start(now, self.county.utc_offset_minutes)
        if rules.over_budget(await sms_outbox.sent_today(conn, m.phone_ref, day_start),
                             self.policy):
            await self._failed(conn, m, "gongpei", "DAILY_BUDGET", permanent=True)
            return None
        # 3. The provider: the first this message has not failed on too often; once all have,
        # the last keeps being tried (per-number limits pass) until the retry window is over.
        name = rules.pick_provider(self.order, m.transient, self.transient_limit)
        if m.first_attempt_at is not None and now - m.first_attempt_at > self.retry_window:
            await self._failed(conn, m, name, "RETRIES_EXHAUSTED", permanent=True)
            return None
        if phone is None and (phone := await self._open(conn, m)) is None:
            return None
        return name, phone

    async def _answered(self, conn: asyncpg.Connection, m: sms_outbox.Outgoing, name: str,
                        attempt: int, result: SendResult) -> None:
        """Record a call's answer, with the event it makes."""
        if result.outcome == "ok":
            assert result.message_id is not None
            await self._submitted(conn, m, name, result.message_id, attempt, recovered=False)
        elif result.outcome == "permanent":
            await self._failed(conn, m, name, result.code, permanent=True, attempt=attempt)
        elif result.outcome == "transient":
            SMS_FAILURES.labels(provider=name, code=result.code, permanent="false").inc()
            delay = rules.retry_delay(m.transient)
            await sms_outbox.end_attempt(conn, m.sms_id, attempt, "transient",
                                         retry_at=self.clock() + delay)
            log.warning("sms %s to %s: %s from %s; retrying in %.0f s", m.sms_id, m.phone_masked,
                        result.code, name, delay.total_seconds())
        else:  # no answer: left uncertain, to be asked about
            log.warning("sms %s to %s: no answer from %s (%s)", m.sms_id, m.phone_masked, name,
                        result.code)
            await sms_outbox.defer(conn, m.sms_id, self.clock() + self.query_after)

    async def _open(self, conn: asyncpg.Connection, m: sms_outbox.Outgoing) -> str | None:
        """The message's number in clear, for one provider call; None (and the message failed
        for good, its parcels to the keeper) when it was erased or its month shredded."""
        try:
            sealed, waybill = sms_outbox.open_sealed(m.sealed_phone or {"erased": True})
            return await self.keys.open(conn, sealed, waybill)
        except PhoneErased:
            await self._failed(conn, m, "gongpei", "PHONE_ERASED", permanent=True)
            return None
        except (InvalidTag, ValueError):  # not this waybill's ciphertext, or a damaged one
            await self._failed(conn, m, "gongpei", "PHONE_UNREADABLE", permanent=True)
            return None

    def _provider_day(self, t: datetime) -> date:
        return t.astimezone(BEIJING).date()

    async def _submitted(self, conn: asyncpg.Connection, m: sms_outbox.Outgoing, provider: str,
                         message_id: str, attempt: int, *, recovered: bool) -> None:
        now = self.clock()
        event = platform_event(
            "sms.submitted",
            SmsSubmitted(sms_id=m.sms_id, provider=provider, provider_message_id=message_id[:64],
                         attempt=max(1, attempt), recovered=recovered),
            rules.derived_id("sms.submitted", m.sms_id), m.brand, now)
        # Recovered: the calls it was found by were the unanswered ones; they become 'ok'.
        await sms_outbox.record(conn, [event], m.sms_id, "ok", None if recovered else attempt)
        SMS_OUTCOMES.labels(outcome="submitted").inc()
        SMS_ARRIVAL_TO_SUBMITTED.observe(max(0.0, (now - m.first_known_at).total_seconds()))

    async def _failed(self, conn: asyncpg.Connection, m: sms_outbox.Outgoing, provider: str,
                      code: str, *, permanent: bool, attempt: int | None = None,
                      stage: Literal["submit", "cancelled"] = "submit") -> None:
        event = platform_event(
            "sms.failed", SmsFailed(sms_id=m.sms_id, provider=provider, provider_code=code[:64],
                                    permanent=permanent, stage=stage),
            rules.derived_id("sms.failed", m.sms_id, stage), m.brand, self.clock())
        cancelled = stage == "cancelled"
        await sms_outbox.record(conn, [event], m.sms_id, "cancelled" if cancelled else "permanent",
                                attempt)
        SMS_OUTCOMES.labels(outcome="cancelled" if cancelled else "failed").inc()
        if cancelled:
            log.info("sms %s not sent: its parcels were collected first", m.sms_id)
            return
        SMS_FAILURES.labels(provider=provider, code=code, permanent=str(permanent).lower()).inc()
        log.warning("sms %s to %s failed: %s from %s", m.sms_id, m.phone_masked, code, provider)


async def _follow(conn: asyncpg.Connection, county: County, now: datetime, keys: Keyring) -> int:
    """Catch up with the journal (an event the planner raises on is set aside by the runtime,
    so one bad event does not stop every SMS), committing every FOLLOW_PAGE events: the
    sender, in its own loop, starts on the first messages of a release while the rest are
    still being applied."""
    return await sms_planner.catch_up(conn, county, now=now, keys=keys, page=FOLLOW_PAGE)


def pool_size(concurrency: int) -> int:
    """Connections the service needs: each call in progress takes one around each of its short
    writes, and under load those writes wait on the CPU, so a pool much smaller than the calls in
    progress caps the rate (8 for 64 calls did, at ~45 SMS/s); besides them the journal
    listener, the planner and the sender's lock."""
    return min(concurrency, 32) + 3


async def plan(pool: asyncpg.Pool, county: County, sender: Sender, now: datetime,
               due: asyncio.Event) -> int:
    """The planner's round: follow the journal, request what is due, follow again. Sets `due`
    when it applied anything, so the sender looks for new work at once."""
    requested = 0
    async with pool.acquire() as conn:
        applied = await _follow(conn, county, now, sender.keys)
        # Closed a page at a time, each read back before the next: at 08:00 the first of the
        # night's thousands of digests reach the sender while the rest are still being closed.
        # (A page that added nothing to read back ends the round, and a round closes at most
        # CLOSE_PAGES pages: a digest whose request cannot be applied is not retried in a loop.)
        for _ in range(CLOSE_PAGES):
            closed = await sms_planner.close_due(conn, county, now, limit=CLOSE_PAGE)
            if not closed:
                break
            requested += closed
            read = await _follow(conn, county, now, sender.keys)
            applied += read
            due.set()
            if closed < CLOSE_PAGE or not read:
                break
        async with conn.transaction(readonly=True):
            await use_all_brands(conn)
            SMS_OVERDUE.set(await sms_outbox.overdue(conn, now - OVERDUE_AFTER))
    if requested:
        SMS_OUTCOMES.labels(outcome="requested").inc(requested)
    if applied:
        due.set()
    return applied + requested


async def send(pool: asyncpg.Pool, sender: Sender, stop: asyncio.Event, due: asyncio.Event,
               tick: float) -> None:
    """The sender's loop: round after round while rounds make calls; otherwise until the
    planner applies something, or `tick`. Rides out database restarts."""
    while not stop.is_set():
        due.clear()
        try:
            if await sender.send_due(pool):
                continue
        except TRANSIENT_DB_ERRORS as exc:
            log.warning("database unavailable (%s); retrying", type(exc).__name__)
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(due.wait())]
        await asyncio.wait(waiters, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
        for w in waiters:
            w.cancel()


async def run(pool: asyncpg.Pool, county: County, sender: Sender, stop: asyncio.Event,
              tick: float = 0.5) -> None:
    """Run until `stop` is set: the planner (woken by the journal's NOTIFY and every `tick`)
    and the sender, each in a loop of its own, so a long catch-up never holds up calls and a
    release of thousands of SMS never holds up the planner. An error other than a database
    outage stops both, loudly."""
    due = asyncio.Event()
    async with asyncio.TaskGroup() as group:
        group.create_task(follow_journal(
            pool, stop, lambda: plan(pool, county, sender, sender.clock(), due), log, tick))
        group.create_task(send(pool, sender, stop, due, tick))
