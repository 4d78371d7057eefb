"""The Faust app factory and the stream worker's agents, one per Kafka-fed projection.

Agents are thin: each decodes its batch once (the stored wire form, no re-validation) and hands
it to the projection runtime (projections/runtime.py), which applies it in one PostgreSQL
transaction with the projection's offsets. One agent per projection, so that tracking (what
people look up) never waits behind the heavier SLA. PostgreSQL, not Kafka's committed offsets, is
where a consumer resumes: Faust acks a `take` buffer even when its body raises, so after every
assignment the worker seeks each partition back to the lowest offset its projections stored (the
start, when one of them has stored none), just before Faust's recovery resumes the flow."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import faust
from faust.types import TP

from domain.county import County
from domain.envelope import Envelope
from infra.db import TRANSIENT_DB_ERRORS, create_pool
from infra.settings import Settings
from projections import runtime, sla_queries
from projections.metrics import CONSUMER_LAG, DEAD_LETTERS, PROJECTION_LAG, WORKER_REBALANCES
from projections.runtime import Projection, Stored
from projections.sla_store import SlaProjection
from projections.tracking_store import TrackingProjection
from streams.assignment import write_assignment
from streams.topics import DEAD_LETTER, PARCEL_EVENTS, VEHICLE_EVENTS, TopicSpec, namespaced

log = logging.getLogger("gongpei.worker")
APP_ID = "gongpei-tracking"
# A failing database is retried this long before the agent crashes the worker (loudly).
APPLY_RETRY_SECONDS = 60.0
KAFKA_TOPICS: tuple[TopicSpec, ...] = (PARCEL_EVENTS, VEHICLE_EVENTS)


def topics_of(reads: frozenset[str]) -> tuple[str, ...]:
    """The Kafka topics that carry these event types."""
    return tuple(t.name for t in KAFKA_TOPICS if any(r.startswith(t.families) for r in reads))


def kafka_projections(county: County) -> list[Projection[Envelope]]:
    """The projections the stream worker keeps (the SLA only where the county sets targets)."""
    out: list[Projection[Envelope]] = [TrackingProjection(county)]
    if county.sla is not None:
        out.append(SlaProjection(county))
    return out


# Which topics each Kafka-fed projection reads (the load bench resets them).
READERS = {kind.name: topics_of(kind.reads) for kind in (TrackingProjection, SlaProjection)}


class Resources:
    """Connections the agents share, opened on first use inside the worker's event loop."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await create_pool(self.settings.database_url_for("worker"), max_size=4)
            return self._pool


def create_app(settings: Settings, county: County, data_dir: Path | None = None,
               ready_file: Path | None = None) -> faust.App:
    """Build the stream worker's Faust app for these settings and this county."""
    namespace = settings.kafka_namespace
    app = faust.App(
        namespaced(APP_ID, namespace),  # the consumer group: every worker of a county shares it
        broker=f"kafka://{settings.kafka_bootstrap_servers.replace(',', ';kafka://')}",
        store="memory://",
        datadir=str(data_dir or Path(tempfile.gettempdir()) / "gongpei-faust"),
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        broker_session_timeout=settings.broker_session_timeout,
        broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=settings.broker_session_timeout * 2,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        broker_commit_every=settings.worker_batch_size,
        broker_commit_interval=1.0,
        # Do not wait for the agents' in-flight events before a rebalance: the projections are
        # idempotent (event-id dedupe, positions stored with the rows and only ever raised), and
        # waiting hung the worker in `wait_empty` for minutes after a broker restart when the
        # county went quiet (fault harness, seed 954333; docs/reliability.md).
        stream_wait_empty=False,
    )
    resources = Resources(settings)
    projections = kafka_projections(county)
    readers = {p.name: tuple(namespaced(t, namespace) for t in topics_of(p.reads))
               for p in projections}
    topics = sorted({t for names in readers.values() for t in names})
    dead_letter = app.topic(namespaced(DEAD_LETTER.name, namespace), key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw")

    # The last lag seen per partition, per projection; a partition this worker no longer holds
    # is dropped from it at the next assignment (another worker reports it now).
    lags: dict[str, dict[tuple[str, int], int]] = {p.name: {} for p in projections}

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def on_assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        WORKER_REBALANCES.inc()  # a steady worker: one at start; a storm: a rising rate
        _forget_lag(lags, {(tp.topic, tp.partition) for tp in assigned if tp.topic in topics})
        if ready_file is not None:
            # The partitions this worker now holds (every assignment replaces the last): the
            # supervisor calls the worker ready once it holds some, tests see how a group split.
            write_assignment(ready_file, sorted((tp.topic, tp.partition) for tp in assigned
                                                if tp.topic in topics))

    # Where each partition resumes is decided here, not at the assignment signal: Faust's recovery
    # runs beside that signal's handlers and seeks every partition to the group's committed offset
    # (dropping what lies below it) while they still run, so a seek made there could be undone
    # partition by partition, its committed offset read before ours landed and applied after our
    # seek (a worker restarted after a reset replayed half its partitions and stalled on the rest,
    # tests/integration/test_projections.py). This signal is awaited by the recovery just before
    # that seek, with the flow still stopped: the group's committed offsets are made ours first
    # (a commit may move back), so its seek lands where ours does.
    @app.on_rebalance_complete.connect  # type: ignore[arg-type]
    async def seek_to_stored(sender: Any, **_: Any) -> None:
        assigned = {tp for tp in app.consumer.assignment() if tp.topic in topics}
        if not assigned:
            return
        deadline = time.monotonic() + APPLY_RETRY_SECONDS
        while True:  # no partition is consumed before we know where its read models left off
            try:
                pool = await resources.pool()
                async with pool.acquire() as conn:
                    stored = await runtime.resume_offsets(
                        conn, readers, {(tp.topic, tp.partition) for tp in assigned})
                break
            except TRANSIENT_DB_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("resume: database unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
        resume = {tp: stored[(tp.topic, tp.partition)] for tp in assigned
                  if (tp.topic, tp.partition) in stored}
        if not resume:
            return
        if not await app.consumer._commit(resume):  # type: ignore[attr-defined]
            # Only when the group has already moved on: the next assignment comes here again.
            log.warning("resume: the group rebalanced again before the stored offsets were set")
            return
        # seek_wait runs inside the consumer's own thread; Faust's plain seek() touches aiokafka's
        # fetcher from ours and races it (a KeyError in fetched_records after a restart). Faust's
        # own seek skips offset 0, so ours is the one that takes a partition back to the start.
        await app.consumer.seek_wait(resume)
        log.info("resumed %d partitions at their stored offsets", len(resume))

    # One agent per projection, so that the lighter one (tracking, what people look up) is never
    # held up behind the heavier (SLA): each decodes its batch once and applies it in one
    # transaction with its offsets. An undecodable message is dead-lettered once, by the first
    # projection reading its topic, and set aside by every projection that reads it.
    first_reader = {t: next(p.name for p in projections if t in readers[p.name]) for t in topics}
    for projection in projections:
        _agent(app, settings, resources, projection, readers[projection.name],
               tuple(t for t, name in first_reader.items() if name == projection.name),
               dead_letter, lags[projection.name])

    @app.timer(interval=15.0)
    async def sla_gauges() -> None:
        # Gauges for alert rules; "now" is the worker's clock here, never inside a reducer.
        if county.sla is None:
            return
        try:
            pool = await resources.pool()
            async with pool.acquire() as conn:
                await sla_queries.export_gauges(conn, county, datetime.now(UTC))
        except TRANSIENT_DB_ERRORS:
            log.warning("sla gauges: database unavailable")

    return app


def _agent(app: faust.App, settings: Settings, resources: Resources,
           projection: Projection[Envelope], topics: tuple[str, ...],
           dead_letters_for: tuple[str, ...], dead_letter: Any,
           behind: dict[tuple[str, int], int]) -> None:
    source = app.topic(*topics, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")

    async def project(stream: faust.StreamT[bytes]) -> None:
        batches = stream.take_events(settings.worker_batch_size, within=0.05)  # type: ignore[attr-defined]
        async for batch in batches:
            items = [Stored(e.message.topic, e.message.partition, e.message.offset, None, e.value)
                     for e in batch]
            positions: dict[tuple[str, int], int] = {}
            for s in items:
                tp = (s.topic, s.partition)
                positions[tp] = max(positions.get(tp, 0), s.position + 1)
            decoded, poison = runtime.decode_batch(projection.decode, items)
            for stored, reason in poison:  # kept where people can look, as well as set aside
                if stored.topic in dead_letters_for:
                    await _dead_letter(dead_letter, stored, reason)
            mine = [(s, e) for s, e in decoded if e.type in projection.reads]
            await _apply_with_retry(await resources.pool(), projection, mine, poison, positions)
            _report_lag(app, projection.name, positions, behind)

    project.__name__ = project.__qualname__ = f"project_{projection.name}"
    app.agent(source, name=f"gongpei.project.{projection.name}")(project)


async def _dead_letter(dead_letter: Any, stored: Stored, reason: str) -> None:
    kind = reason.split(":")[1].strip() if ":" in reason else reason
    DEAD_LETTERS.labels(reason=kind).inc()
    log.error("dead-lettering %s[%s]@%s: %s", stored.topic, stored.partition, stored.position, kind)
    body = stored.body if isinstance(stored.body, bytes) else b""
    await dead_letter.send(key=None, value=body, headers={
        "reason": kind.encode(),
        "source": f"{stored.topic}/{stored.partition}/{stored.position}".encode()})


async def _apply_with_retry(pool: asyncpg.Pool, projection: Projection[Envelope],
                            decoded: Sequence[tuple[Stored, Envelope]],
                            poison: Sequence[tuple[Stored, str]],
                            positions: dict[tuple[str, int], int]) -> None:
    """Apply a batch with its offsets; a database outage is retried for a while, then the worker
    crashes loudly (the supervisor restarts it and it resumes from the stored offsets)."""
    deadline = time.monotonic() + APPLY_RETRY_SECONDS
    delay = 0.2
    while True:
        try:
            async with pool.acquire() as conn:
                await runtime.apply_decoded(conn, projection, decoded, poison, positions)
            return
        except TRANSIENT_DB_ERRORS as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _forget_lag(lags: dict[str, dict[tuple[str, int], int]], held: set[tuple[str, int]]) -> None:
    """Stop reporting the lag of partitions this worker no longer holds: their gauges go to 0
    here (the new holder's value is the one the maximum across workers then shows) and each
    projection's sum covers what this worker holds (the sum across workers is the total)."""
    for name, behind in lags.items():
        for topic, partition in [tp for tp in behind if tp not in held]:
            del behind[(topic, partition)]
            CONSUMER_LAG.labels(consumer=name, topic=topic, partition=str(partition)).set(0)
        PROJECTION_LAG.labels(projection=name).set(sum(behind.values()))


def _report_lag(app: faust.App, name: str, positions: dict[tuple[str, int], int],
                behind: dict[tuple[str, int], int]) -> None:
    """Messages behind each partition's end, per projection, and their sum."""
    for (topic, partition), next_offset in positions.items():
        high = app.consumer.highwater(TP(topic, partition))
        if high is not None:
            behind[(topic, partition)] = max(0, high - next_offset)
            CONSUMER_LAG.labels(consumer=name, topic=topic, partition=str(partition)).set(
                behind[(topic, partition)])
    PROJECTION_LAG.labels(projection=name).set(sum(behind.values()))
