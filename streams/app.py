"""The Faust app factory and the tracking agent.

Agents are thin: decode, hand the batch to the store (a pure reducer underneath), record offsets in
the same PostgreSQL transaction. PostgreSQL, not Kafka's committed offsets, is where a consumer
resumes: Faust acks a `take` buffer even when its body raises, so on every assignment the agent
seeks each partition back to the offset stored with the rows it produced."""

from __future__ import annotations

import asyncio
import logging
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import faust
import orjson
from faust.types import TP
from pydantic import ValidationError

from domain.county import County
from domain.envelope import Envelope
from infra.db import TRANSIENT_DB_ERRORS, create_pool
from infra.settings import Settings
from projections import sla_queries, sla_store, tracking_store
from projections.metrics import (
    CONSUMER_LAG,
    DEAD_LETTERS,
    PROJECTION_APPLY_SECONDS,
    PROJECTION_EVENTS,
)
from streams.topics import DEAD_LETTER, PARCEL_EVENTS, VEHICLE_EVENTS

# Which topics each projection reads: a partition resumes at the lowest offset among its readers.
READERS = {"tracking": (PARCEL_EVENTS.name,), "sla": (PARCEL_EVENTS.name, VEHICLE_EVENTS.name)}

log = logging.getLogger("gongpei.worker")
APP_ID = "gongpei-tracking"
# A failing database is retried this long before the agent crashes the worker (loudly).
APPLY_RETRY_SECONDS = 60.0


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
    """Build the tracking worker's Faust app for these settings and this county."""
    app = faust.App(
        APP_ID,
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
    )
    resources = Resources(settings)
    parcel_topic = app.topic(PARCEL_EVENTS.name, key_type=bytes, value_type=bytes,
                             key_serializer="raw", value_serializer="raw")
    movements = app.topic(PARCEL_EVENTS.name, VEHICLE_EVENTS.name, key_type=bytes,
                          value_type=bytes, key_serializer="raw", value_serializer="raw")
    dead_letter = app.topic(DEAD_LETTER.name, key_type=bytes, value_type=bytes,
                            key_serializer="raw", value_serializer="raw")

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def seek_to_stored(sender: Any, assigned: set[Any], **_: Any) -> None:
        readers = READERS if county.sla is not None else {"tracking": READERS["tracking"]}
        deadline = time.monotonic() + APPLY_RETRY_SECONDS
        while True:  # no partition is consumed before we know where its read models left off
            try:
                pool = await resources.pool()
                async with pool.acquire() as conn:
                    stored = await tracking_store.stored_offsets(conn, readers)
                break
            except TRANSIENT_DB_ERRORS as exc:
                if time.monotonic() > deadline:
                    raise
                log.warning("resume: database unavailable (%s); retrying", type(exc).__name__)
                await asyncio.sleep(0.5)
        # seek_wait runs inside the consumer's own thread; Faust's plain seek() touches aiokafka's
        # fetcher from ours and races it (a KeyError in fetched_records after a restart).
        resume = {tp: stored[(tp.topic, tp.partition)] for tp in assigned
                  if (tp.topic, tp.partition) in stored}
        if resume:
            await app.consumer.seek_wait(resume)
            log.info("resumed %d partitions at their stored offsets", len(resume))
        if ready_file is not None and assigned:
            ready_file.touch()  # the supervisor waits for this before calling the platform ready

    @app.agent(movements)
    async def keep_sla(stream: faust.StreamT[bytes]) -> None:
        batches = stream.take_events(settings.worker_batch_size, within=0.05)  # type: ignore[attr-defined]
        async for batch in batches:
            envelopes, offsets = await _decode(batch, dead_letter)
            if county.sla is not None:
                await _apply_with_retry(await resources.pool(), county, envelopes, offsets,
                                        sla_store.apply_batch, "sla")

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

    @app.agent(parcel_topic)
    async def track(stream: faust.StreamT[bytes]) -> None:
        batches = stream.take_events(settings.worker_batch_size, within=0.05)  # type: ignore[attr-defined]
        async for batch in batches:
            envelopes, offsets = await _decode(batch, dead_letter)
            await _apply_with_retry(await resources.pool(), county, envelopes, offsets,
                                    tracking_store.apply_batch, "tracking")
            _report_lag(app, offsets)

    return app


async def _decode(batch: list[Any], dead_letter: Any) -> tuple[list[Envelope], dict[tuple[str, int], int]]:
    envelopes: list[Envelope] = []
    offsets: dict[tuple[str, int], int] = {}
    for event in batch:
        msg = event.message
        tp = (msg.topic, msg.partition)
        offsets[tp] = max(offsets.get(tp, 0), msg.offset + 1)
        try:
            envelopes.append(Envelope.from_wire(orjson.loads(event.value)))
        except (orjson.JSONDecodeError, ValidationError, ValueError, KeyError, TypeError) as exc:
            # A poison message must not stop the partition; it is kept where people can look.
            reason = type(exc).__name__
            DEAD_LETTERS.labels(reason=reason).inc()
            log.error("dead-lettering %s[%s]@%s: %s", msg.topic, msg.partition, msg.offset, reason)
            await dead_letter.send(key=msg.key, value=event.value, headers={
                "reason": reason.encode(), "source": f"{msg.topic}/{msg.partition}/{msg.offset}".encode(),
            })
    return envelopes, offsets


async def _apply_with_retry(pool: asyncpg.Pool, county: County, envelopes: list[Envelope],
                            offsets: dict[tuple[str, int], int], apply: Any,
                            projection: str) -> None:
    deadline = time.monotonic() + APPLY_RETRY_SECONDS
    delay = 0.2
    while True:
        started = time.perf_counter()
        try:
            async with pool.acquire() as conn:
                result = await apply(conn, county, envelopes, offsets)
        except TRANSIENT_DB_ERRORS as exc:
            if time.monotonic() > deadline:
                raise  # crash loudly: the supervisor restarts us and we resume from stored offsets
            log.warning("database unavailable (%s); retrying in %.1f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
            continue
        PROJECTION_APPLY_SECONDS.labels(projection=projection).observe(time.perf_counter() - started)
        PROJECTION_EVENTS.labels(projection=projection, result="new").inc(result.new)
        PROJECTION_EVENTS.labels(projection=projection, result="duplicate").inc(result.duplicate)
        return


def _report_lag(app: faust.App, offsets: dict[tuple[str, int], int]) -> None:
    for (topic, partition), next_offset in offsets.items():
        high = app.consumer.highwater(TP(topic, partition))
        if high is not None:
            CONSUMER_LAG.labels(consumer="tracking", topic=topic, partition=str(partition)).set(
                max(0, high - next_offset))
