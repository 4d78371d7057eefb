"""One way to keep a read model: the projection contract and the runtime that runs every one.

A projection (tracking, SLA, the ledger, SMS planning, and whatever comes next) says what it is:
a name, the event types it reads, where it reads them (Kafka, where per-key order is enough, or
the journal, where it needs the total order), the tables it keeps, how it decodes a stored event,
how it applies a batch and how it empties itself. The runtime does the rest, the same way for all:

- **One transaction per batch**, holding the read-model rows *and* the projection's position
  (`consumer_offsets`, the one cursor table: Kafka partitions by topic, the journal as topic
  `journal`, partition 0, next seq). A crash anywhere resumes exactly where the rows left off.
- **Poison is set aside, never looped on, never skipped silently.** A body that cannot be decoded,
  or an event that makes the reducer raise, is recorded in `projection_set_aside` with its reason
  and position, counted (`gongpei_projection_set_aside_total`) and alerted on; the rest of its
  batch is applied. A database outage is not poison: it propagates and the caller retries.
- **The same metrics**: events applied (new / duplicate / set aside), apply latency and lag, per
  projection.
- **Retry** (`retry_set_aside`): once a reducer is fixed, what it set aside is applied and
  leaves the list (`gongpei projections retry NAME`).
- **Rebuild** (`rebuild`): replay the journal into a scratch copy of the projection's tables,
  compare it with the live model table by table, and, if asked, swap it in.

Lock ids live in projections/locks.py."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, ClassVar, Protocol, TypeVar

import asyncpg
import orjson

from domain.county import County
from domain.envelope import Envelope
from domain.redact import mask_digit_runs
from infra.db import TRANSIENT_DB_ERRORS
from projections.locks import Lock
from projections.metrics import (
    PROJECTION_APPLY_SECONDS,
    PROJECTION_EVENTS,
    PROJECTION_LAG,
    PROJECTION_SET_ASIDE,
)

log = logging.getLogger("gongpei.projections")

JOURNAL = "journal"   # the topic name a journal follower's position is stored under
T = TypeVar("T")


class Source(StrEnum):
    KAFKA = "kafka"
    JOURNAL = "journal"


@dataclass(frozen=True)
class Applied:
    new: int
    duplicate: int


@dataclass(frozen=True)
class Stored:
    """One event as delivered to a projection: where it came from, and its wire form."""

    topic: str        # Kafka topic, or "journal"
    partition: int
    position: int     # Kafka offset, or journal seq
    event_id: str | None
    body: bytes | dict[str, Any]   # Kafka value bytes, or the journal's jsonb (already a dict)


@dataclass
class Outcome:
    applied: Applied = field(default_factory=lambda: Applied(0, 0))
    set_aside: list[tuple[Stored, str]] = field(default_factory=list)


class Projection(Protocol[T]):
    """A read model kept from events. Implementations are small classes in projections/*."""

    name: str
    source: Source
    reads: frozenset[str]        # the event types it reads
    lock: Lock                   # journal followers: the live catch-up's; Kafka: the swap lock
    # The tables it keeps, each with the columns a rebuild compares ("*": all of them); a rebuild
    # copies their shape into a scratch schema.
    tables: ClassVar[Mapping[str, str]]
    swappable: ClassVar[bool]     # False: a rebuild is compared, never swapped in (the ledger)
    # Journal followers: an SQL condition on the journal's `type` and `body` narrowing what is
    # even fetched ("" for none).
    journal_filter: ClassVar[str]
    # Errors that are not the event's fault (a missing key): they stop the batch, never set it aside.
    not_poison: ClassVar[tuple[type[BaseException], ...]]

    def decode(self, seq: int, wire: dict[str, Any]) -> T:
        """A stored event (validated at ingest) as what `apply` reads; raise on a bad body."""
        ...

    async def apply(self, conn: asyncpg.Connection, items: Sequence[T]) -> Applied:
        """Fold a batch into the read model, inside the runtime's transaction."""
        ...

    async def reset(self, conn: asyncpg.Connection) -> None:
        """Empty the read model (rows only; the runtime clears the position)."""
        ...

    async def prepare(self, conn: asyncpg.Connection, next_seq: int) -> bool:
        """Journal followers: work owed before the next page (True: call again first)."""
        ...


class Base:
    """Defaults for the optional parts of the contract."""

    swappable: ClassVar[bool] = True
    journal_filter: ClassVar[str] = ""
    not_poison: ClassVar[tuple[type[BaseException], ...]] = ()

    async def prepare(self, conn: asyncpg.Connection, next_seq: int) -> bool:
        return False


def decode_envelope(seq: int, wire: dict[str, Any]) -> Envelope:
    """What every Kafka-fed projection reads: the envelope, decoded once per message."""
    return Envelope.from_wire(wire)


class EnvelopeProjection(Base):
    """A Kafka-fed projection of a county that reads envelopes and folds them with `fold`."""

    source = Source.KAFKA

    def __init__(self, county: County) -> None:
        self.county = county

    def decode(self, seq: int, wire: dict[str, Any]) -> Envelope:
        return decode_envelope(seq, wire)

    async def fold(self, conn: asyncpg.Connection, county: County,
                   events: Sequence[Envelope]) -> Applied:
        raise NotImplementedError

    async def apply(self, conn: asyncpg.Connection, items: Sequence[Envelope]) -> Applied:
        return await self.fold(conn, self.county, items)


async def use_all_brands(conn: asyncpg.Connection) -> None:
    """Projections see every brand's rows (row-level security is scoped per transaction)."""
    await conn.execute("SELECT set_config('gongpei.brand_scope', '*', true)")


# ---------------------------------------------------------------------------------- batches

def decode_batch(decode: Callable[[int, dict[str, Any]], T], items: Sequence[Stored],
                 ) -> tuple[list[tuple[Stored, T]], list[tuple[Stored, str]]]:
    """Decode each stored event once: (decoded, undecodable with the reason)."""
    decoded: list[tuple[Stored, T]] = []
    poison: list[tuple[Stored, str]] = []
    for s in items:
        try:
            wire = orjson.loads(s.body) if isinstance(s.body, bytes | str) else s.body
            if not isinstance(wire, dict):
                raise TypeError("the body is not a JSON object")
            decoded.append((s, decode(s.position, wire)))
        except (orjson.JSONDecodeError, ValueError, KeyError, TypeError, AttributeError) as exc:
            poison.append((s, f"undecodable: {type(exc).__name__}: {_short(exc)}"))
    return decoded, poison


async def apply_decoded(conn: asyncpg.Connection, projection: Projection[T],
                        decoded: Sequence[tuple[Stored, T]], poison: Sequence[tuple[Stored, str]],
                        positions: Mapping[tuple[str, int], int]) -> Outcome:
    """Apply one decoded batch and store `positions` (next position per topic partition), all in
    one transaction; `poison` (undecodable events) and events the reducer raises on are set
    aside (see the module's docstring). A database outage raises one of TRANSIENT_DB_ERRORS with
    nothing written."""
    out = Outcome(set_aside=list(poison))
    started = time.perf_counter()
    async with conn.transaction():
        await use_all_brands(conn)
        if projection.source is Source.KAFKA:  # a swap of a rebuilt model waits for this batch
            await conn.execute("SELECT pg_advisory_xact_lock_shared($1)", int(projection.lock))
        await _apply_recorded(conn, projection, decoded, out)
        await save_positions(conn, projection.name, positions)
    _count(projection.name, out, time.perf_counter() - started)
    return out


async def _apply_guarded(conn: asyncpg.Connection, projection: Projection[T],
                         decoded: Sequence[tuple[Stored, T]], out: Outcome) -> Applied:
    if not decoded:
        return Applied(0, 0)
    try:
        async with conn.transaction():  # a savepoint: a raising reducer leaves nothing behind
            return await projection.apply(conn, [t for _, t in decoded])
    except TRANSIENT_DB_ERRORS:
        raise
    except projection.not_poison:
        raise
    except Exception as exc:  # noqa: BLE001 - any reducer failure is this event's poison
        if len(decoded) == 1:
            out.set_aside.append((decoded[0][0], f"{type(exc).__name__}: {_short(exc)}"))
            log.error("projection %s set aside %s at %s/%s/%s: %s", projection.name,
                      decoded[0][0].event_id, decoded[0][0].topic, decoded[0][0].partition,
                      decoded[0][0].position, type(exc).__name__)
            return Applied(0, 0)
    # Halve until the raising events are alone: a clean half is applied as it came.
    half = len(decoded) // 2
    first = await _apply_guarded(conn, projection, decoded[:half], out)
    second = await _apply_guarded(conn, projection, decoded[half:], out)
    return Applied(first.new + second.new, first.duplicate + second.duplicate)


async def _apply_recorded(conn: asyncpg.Connection, projection: Projection[T],
                          decoded: Sequence[tuple[Stored, T]], out: Outcome) -> None:
    """Apply, and record what was set aside (undecodable ones already in `out`)."""
    out.applied = await _apply_guarded(conn, projection, decoded, out)
    if out.set_aside:
        await _record_set_aside(conn, projection.name, out.set_aside)


async def _journal_rows(conn: asyncpg.Connection, projection: Projection[Any], next_seq: int,
                        page: int) -> list[asyncpg.Record]:
    """A page of the journal events a follower reads, from seq `next_seq` on."""
    filtered = f" AND {projection.journal_filter}" if projection.journal_filter else ""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT seq, event_id, body FROM journal WHERE seq >= $1 AND type = ANY($2::text[])"
        + filtered + " ORDER BY seq LIMIT $3", next_seq, sorted(projection.reads), page)
    return rows


async def _apply_rows(conn: asyncpg.Connection, projection: Projection[Any],
                      rows: Sequence[asyncpg.Record]) -> Outcome:
    """Decode, apply and set aside a page of journal rows, in the caller's transaction."""
    items = [Stored(JOURNAL, 0, r["seq"], r["event_id"], r["body"]) for r in rows]
    decoded, poison = decode_batch(projection.decode, items)
    out = Outcome(set_aside=poison)
    await _apply_recorded(conn, projection, decoded, out)
    return out


def _short(exc: BaseException) -> str:
    """An error's text for the set-aside record: one line, short, every run of 7+ digits masked
    as the API masks what it echoes (a reducer that opened a phone may quote it)."""
    return mask_digit_runs(str(exc).replace("\n", " ")[:300])


async def _record_set_aside(conn: asyncpg.Connection, name: str,
                            items: Sequence[tuple[Stored, str]]) -> None:
    await conn.executemany(
        "INSERT INTO projection_set_aside (projection, topic, partition, position, event_id,"
        " reason, body) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (projection, topic, partition, position) DO NOTHING",
        [(name, s.topic, s.partition, s.position, s.event_id, reason, _text(s.body))
         for s, reason in items])


def _text(body: bytes | dict[str, Any]) -> str:
    if isinstance(body, dict):
        return orjson.dumps(body).decode()
    return body.decode("utf-8", errors="replace")


def _count(name: str, out: Outcome, seconds: float) -> None:
    PROJECTION_APPLY_SECONDS.labels(projection=name).observe(seconds)
    PROJECTION_EVENTS.labels(projection=name, result="new").inc(out.applied.new)
    PROJECTION_EVENTS.labels(projection=name, result="duplicate").inc(out.applied.duplicate)
    if out.set_aside:
        PROJECTION_EVENTS.labels(projection=name, result="set_aside").inc(len(out.set_aside))
        for _, reason in out.set_aside:
            kind = "undecodable" if reason.startswith("undecodable:") else "reducer_raised"
            PROJECTION_SET_ASIDE.labels(projection=name, reason=kind).inc()


# -------------------------------------------------------------------------------- positions

async def save_positions(conn: asyncpg.Connection, name: str,
                         positions: Mapping[tuple[str, int], int]) -> None:
    if positions:
        await conn.executemany(
            "INSERT INTO consumer_offsets (consumer, topic, partition, next_offset)"
            " VALUES ($1, $2, $3, $4) ON CONFLICT (consumer, topic, partition) DO UPDATE"
            " SET next_offset = greatest(consumer_offsets.next_offset, EXCLUDED.next_offset),"
            " updated_at = now()",
            [(name, t, p, o) for (t, p), o in positions.items()])


async def journal_position(conn: asyncpg.Connection, name: str) -> int:
    """The next journal seq a journal follower reads (1: from the start)."""
    value = await conn.fetchval(
        "SELECT next_offset FROM consumer_offsets WHERE consumer = $1 AND topic = $2"
        " AND partition = 0", name, JOURNAL)
    return int(value) if value is not None else 1


async def resume_offsets(conn: asyncpg.Connection, readers: Mapping[str, Sequence[str]],
                         assigned: Iterable[tuple[str, int]]) -> dict[tuple[str, int], int]:
    """Where a Kafka consumer serving several projections resumes each assigned partition: the
    lowest offset any projection reading that topic stored, and the start when one of them has
    stored none (a new projection, or one whose rebuilt model was swapped in): never the group's
    committed offset. What is re-read is dropped by each projection's dedupe."""
    rows = await conn.fetch(
        "SELECT consumer, topic, partition, next_offset FROM consumer_offsets"
        " WHERE consumer = ANY($1::text[])", list(readers))
    stored = {(r["consumer"], r["topic"], r["partition"]): r["next_offset"] for r in rows}
    out: dict[tuple[str, int], int] = {}
    for topic, partition in assigned:
        offsets = [stored.get((name, topic, partition), 0)
                   for name, topics in readers.items() if topic in topics]
        if offsets:
            out[(topic, partition)] = min(offsets)
    return out


async def forget_positions(conn: asyncpg.Connection, name: str) -> None:
    await conn.execute("DELETE FROM consumer_offsets WHERE consumer = $1", name)


# ------------------------------------------------------------------------ journal followers

async def catch_up(conn: asyncpg.Connection, projection: Projection[T], page: int = 2000,
                   lock: Lock | None = None) -> int:
    """Apply every journal event of the projection's types not yet applied; returns how many
    events were read. Another holder of its lock (a second instance) makes this a no-op."""
    total, more = 0, True
    while more:
        n, more = await _journal_page(conn, projection, page, lock or projection.lock)
        total += n
    return total


async def _journal_page(conn: asyncpg.Connection, projection: Projection[T], page: int,
                        lock: Lock) -> tuple[int, bool]:
    started = time.perf_counter()
    async with conn.transaction():
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", int(lock)):
            return 0, False
        await use_all_brands(conn)
        next_seq = await journal_position(conn, projection.name)
        if await projection.prepare(conn, next_seq):
            return 0, True
        rows = await _journal_rows(conn, projection, next_seq, page)
        if not rows:
            PROJECTION_LAG.labels(projection=projection.name).set(0)
            return 0, False
        out = await _apply_rows(conn, projection, rows)
        await save_positions(conn, projection.name, {(JOURNAL, 0): rows[-1]["seq"] + 1})
        last = await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal")
    PROJECTION_LAG.labels(projection=projection.name).set(max(0, last - rows[-1]["seq"]))
    _count(projection.name, out, time.perf_counter() - started)
    return len(rows), len(rows) == page


# ------------------------------------------------------------------------------------ retry

@dataclass(frozen=True)
class RetryReport:
    projection: str
    applied: int      # set-aside events that now applied (and left the list)
    duplicate: int    # of those, how many the model already held
    still: int        # still undecodable or still raising: kept, with the new reason


async def retry_set_aside(conn: asyncpg.Connection, projection: Projection[T]) -> RetryReport:
    """Re-apply what `projection` set aside, once its reducer (or decoder) is fixed: oldest
    first, each in its own transaction with the live model's lock, as its live batches take it.
    An event that applies now is folded (a dedupe drops what the model already holds) and leaves
    `projection_set_aside`; one that still fails stays there with its new reason. The position
    does not move: a set-aside event is behind it already."""
    rows = await conn.fetch(
        "SELECT topic, partition, position, event_id, body FROM projection_set_aside"
        " WHERE projection = $1 ORDER BY set_aside_at, topic, partition, position", projection.name)
    applied = duplicate = still = 0
    for r in rows:
        stored = Stored(r["topic"], r["partition"], r["position"], r["event_id"], r["body"])
        key = (projection.name, r["topic"], r["partition"], r["position"])
        decoded, poison = decode_batch(projection.decode, [stored])
        out = Outcome(set_aside=list(poison))
        started = time.perf_counter()
        async with conn.transaction():
            await use_all_brands(conn)
            lock = ("pg_advisory_xact_lock_shared" if projection.source is Source.KAFKA
                    else "pg_advisory_xact_lock")
            await conn.execute(f"SELECT {lock}($1)", int(projection.lock))
            out.applied = await _apply_guarded(conn, projection, decoded, out)
            if out.set_aside:
                await conn.execute(
                    "UPDATE projection_set_aside SET reason = $5, set_aside_at = now()"
                    " WHERE projection = $1 AND topic = $2 AND partition = $3 AND position = $4",
                    *key, out.set_aside[0][1])
                still += 1
            else:
                await conn.execute(
                    "DELETE FROM projection_set_aside"
                    " WHERE projection = $1 AND topic = $2 AND partition = $3 AND position = $4",
                    *key)
                applied += 1
                duplicate += out.applied.duplicate
        _count(projection.name, out, time.perf_counter() - started)
        log.info("projection %s: set-aside %s/%s/%s %s", projection.name, r["topic"],
                 r["partition"], r["position"], "still fails" if out.set_aside else "applied")
    return RetryReport(projection.name, applied, duplicate, still)


# ----------------------------------------------------------------------------------- rebuild

@dataclass(frozen=True)
class TableDiff:
    table: str
    live: int
    rebuilt: int
    only_live: int
    only_rebuilt: int


@dataclass(frozen=True)
class RebuildReport:
    projection: str
    events: int
    set_aside: int
    tables: tuple[TableDiff, ...]
    swapped: bool

    @property
    def differing(self) -> int:
        return sum(t.only_live + t.only_rebuilt for t in self.tables)


def scratch_schema(name: str) -> str:
    return f"rebuild_{name}"


async def rebuild(conn: asyncpg.Connection, projection: Projection[T], page: int = 5000,
                  swap: bool = False) -> RebuildReport:
    """Replay the whole journal into a scratch copy of the projection's tables, compare it with
    the live model, and with `swap` make it the live model. `conn` is the schema owner's.

    The live model keeps running meanwhile. A swap takes the projection's lock alone (its live
    batches wait), replays what reached the journal since, and replaces the live rows in the same
    transaction; a Kafka-fed projection then re-reads its topics from the offsets the rebuilt
    rows imply (its dedupe drops what they already hold)."""
    if swap and not projection.swappable:
        raise ValueError(f"a rebuilt {projection.name} is compared, never swapped in")
    schema = scratch_schema(projection.name)
    await conn.execute("SELECT pg_advisory_lock($1)", int(Lock.REBUILD))
    try:
        await conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE; CREATE SCHEMA {schema}")
        for table in (*projection.tables, "consumer_offsets", "projection_set_aside"):
            await conn.execute(f"CREATE TABLE {schema}.{table} (LIKE public.{table} INCLUDING ALL)")
        await conn.execute(f"SET search_path TO {schema}, public")
        replay = _Replay(projection, page)
        events = await replay.run(conn)
        set_aside = int(await conn.fetchval(f"SELECT count(*) FROM {schema}.projection_set_aside"))
        if swap:
            async with conn.transaction():
                # Kafka batches share it, the journal follower tries it: both wait or skip.
                await conn.execute("SELECT pg_advisory_xact_lock($1)", int(projection.lock))
                events += await replay.run_in(conn)   # the tail, inside the swap
                diffs = await _compare(conn, projection, schema)
                await _swap(conn, projection, schema)
        else:
            diffs = await _compare(conn, projection, schema)
        return RebuildReport(projection.name, events, set_aside, tuple(diffs), swap)
    finally:
        await conn.execute(f"RESET search_path; DROP SCHEMA IF EXISTS {schema} CASCADE")
        await conn.execute("SELECT pg_advisory_unlock($1)", int(Lock.REBUILD))


@dataclass
class _Replay:
    """Feeds the journal, in seq order, through a projection into whatever search_path names."""

    projection: Projection[Any]
    page: int
    next_seq: int = 1

    async def run(self, conn: asyncpg.Connection) -> int:
        """Every page, each in its own transaction."""
        total = 0
        while True:
            async with conn.transaction():
                n = await self.run_in(conn, one_page=True)
            total += n
            if n == 0:
                return total

    async def run_in(self, conn: asyncpg.Connection, one_page: bool = False) -> int:
        """Pages up to the journal's end (or one), in the caller's transaction."""
        total = 0
        while rows := await _journal_rows(conn, self.projection, self.next_seq, self.page):
            await use_all_brands(conn)
            await _apply_rows(conn, self.projection, rows)
            self.next_seq = rows[-1]["seq"] + 1
            await save_positions(conn, self.projection.name, {(JOURNAL, 0): self.next_seq})
            total += len(rows)
            if one_page:
                break
        return total


async def _compare(conn: asyncpg.Connection, projection: Projection[Any],
                   schema: str) -> list[TableDiff]:
    return await compare_tables(conn, projection.tables, live="public", rebuilt=schema)


async def compare_tables(conn: asyncpg.Connection, tables: Mapping[str, str], *, live: str,
                         rebuilt: str) -> list[TableDiff]:
    """Row counts, and rows found only on one side (EXCEPT ALL: duplicates count), per table."""
    out = []
    for table, columns in tables.items():
        old = f"(SELECT {columns} FROM {live}.{table})"
        new = f"(SELECT {columns} FROM {rebuilt}.{table})"
        row = await conn.fetchrow(
            f"SELECT (SELECT count(*) FROM {live}.{table}) AS live,"
            f" (SELECT count(*) FROM {rebuilt}.{table}) AS rebuilt,"
            f" (SELECT count(*) FROM ({old} EXCEPT ALL {new}) a) AS only_live,"
            f" (SELECT count(*) FROM ({new} EXCEPT ALL {old}) b) AS only_rebuilt")
        assert row is not None
        out.append(TableDiff(table, row["live"], row["rebuilt"], row["only_live"],
                             row["only_rebuilt"]))
    return out


async def _swap(conn: asyncpg.Connection, projection: Projection[Any], schema: str) -> None:
    """Replace the live rows by the rebuilt ones (the caller's transaction). A journal follower
    takes the rebuilt position; a Kafka-fed projection forgets its offsets, so its consumer
    re-reads its topics from the start at its next assignment and dedupes what it holds."""
    for table in projection.tables:
        await conn.execute(f"DELETE FROM public.{table}")
        await conn.execute(f"INSERT INTO public.{table} SELECT * FROM {schema}.{table}")
    await conn.execute("DELETE FROM public.consumer_offsets WHERE consumer = $1", projection.name)
    if projection.source is Source.JOURNAL:
        await conn.execute(f"INSERT INTO public.consumer_offsets SELECT * FROM {schema}.consumer_offsets"
                           " WHERE consumer = $1", projection.name)
