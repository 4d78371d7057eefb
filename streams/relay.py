"""Journal → Kafka relay (the outbox): publishes every journal row, in order, keyed by entity.

It advances its cursor only after the broker acknowledged a whole page (acks=all), so a crash
re-publishes at most a page and consumers dedupe by event_id. If the broker reports a partition
shorter than what it once acknowledged, it lost data (the embedded Tansu keeps all in memory):
the relay re-publishes from the start of the journal and invalidates stored consumer offsets."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import asyncpg
import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

from infra.db import TRANSIENT_DB_ERRORS, discard
from infra.settings import Settings
from projections import journal
from projections.locks import Lock
from projections.metrics import RELAY_LAG, RELAY_PUBLISHED, RELAY_REPUBLISHES
from streams.topic_admin import ensure_topics
from streams.topics import namespaced, topic_for

log = logging.getLogger("gongpei.relay")
CURSOR = "kafka"
RELAY_LOCK = int(Lock.RELAY)
PAGE = 2000


def make_producer(settings: Settings) -> AIOKafkaProducer:
    """A producer that waits for every replica and retries: the relay's only writer to Kafka.

    The idempotent producer stays off because the embedded broker rejects InitProducerId;
    duplicates that retries may cause are removed downstream by event_id."""
    return AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        acks="all", enable_idempotence=False, linger_ms=5,
        max_batch_size=256 * 1024, request_timeout_ms=15000, retry_backoff_ms=200,
        compression_type=None,
    )


class BrokerLostData(Exception):
    """The broker no longer has records it acknowledged to us."""


class Relay:
    """Publishes the journal to Kafka; one instance per deployment (it holds an advisory lock)."""

    def __init__(self, pool: asyncpg.Pool, settings: Settings,
                 producer_factory: Callable[[Settings], AIOKafkaProducer] = make_producer) -> None:
        self.pool = pool
        self.settings = settings
        self.producer_factory = producer_factory
        self.producer: AIOKafkaProducer | None = None
        self.wake = asyncio.Event()
        self.acked: dict[tuple[str, int], int] = {}

    async def _cursor(self, conn: asyncpg.Connection) -> int:
        await conn.execute("INSERT INTO relay_cursor (name) VALUES ($1) ON CONFLICT DO NOTHING",
                           CURSOR)
        return int(await conn.fetchval("SELECT seq FROM relay_cursor WHERE name = $1", CURSOR))

    async def publish_page(self) -> int:
        """Publish the next page of the journal; returns how many rows were published."""
        assert self.producer is not None
        async with self.pool.acquire() as conn:
            cursor = await self._cursor(conn)
            rows = await journal.read_after(conn, cursor, PAGE)
            RELAY_LAG.set(await journal.last_seq(conn) - cursor)
        if not rows:
            return 0
        futures = []
        for row in rows:
            futures.append(await self.producer.send(
                namespaced(topic_for(row["type"]), self.settings.kafka_namespace),
                key=row["partition_key"].encode(),
                value=orjson.dumps(row["body"]),
            ))
        results = await asyncio.gather(*futures)
        low: dict[tuple[str, int], int] = {}
        high: dict[tuple[str, int], int] = {}
        for meta in results:
            tp = (meta.topic, meta.partition)
            low[tp] = min(low.get(tp, meta.offset), meta.offset)
            high[tp] = max(high.get(tp, -1), meta.offset)
        # Offsets only grow: an ack at or below one we had before means the log was lost.
        if any(low[tp] <= self.acked.get(tp, -1) for tp in low):
            raise BrokerLostData("the broker acknowledged offsets it had already given out")
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE relay_cursor SET seq = $2, updated_at = now() WHERE name = $1",
                               CURSOR, rows[-1]["seq"])
            await conn.executemany(
                "INSERT INTO relay_partition_marks (topic, partition, acked_offset, page_low)"
                " VALUES ($1, $2, $3, $4) ON CONFLICT (topic, partition) DO UPDATE"
                " SET acked_offset = EXCLUDED.acked_offset, page_low = EXCLUDED.page_low",
                [(t, p, high[(t, p)], low[(t, p)]) for (t, p) in low],
            )
        self.acked.update(high)
        RELAY_PUBLISHED.inc(len(rows))
        return len(rows)

    async def load_marks(self) -> None:
        async with self.pool.acquire() as conn:
            rows = await conn.fetch("SELECT topic, partition, acked_offset FROM relay_partition_marks")
        self.acked = {(r["topic"], r["partition"]): r["acked_offset"] for r in rows}

    async def broker_lost_data(self) -> bool:
        """True if a partition now ends at or below the first offset of the last page we published.

        Not "below the highest acknowledged offset": Tansu reports a partition's end as the base
        offset of its last record batch + 1, which lags the true end when a batch holds several
        records; the page's lowest offset is a bound that holds on Tansu and on Kafka alike."""
        async with self.pool.acquire() as conn:
            marks = await conn.fetch("SELECT topic, partition, page_low FROM relay_partition_marks")
        if not marks:
            return False
        probe = AIOKafkaConsumer(bootstrap_servers=self.settings.kafka_bootstrap_servers,
                                 enable_auto_commit=False)
        await probe.start()
        try:
            ends = await probe.end_offsets([TopicPartition(m["topic"], m["partition"]) for m in marks])
        finally:
            await probe.stop()
        lost = False
        for m in marks:
            end = ends.get(TopicPartition(m["topic"], m["partition"]), 0)
            if end <= m["page_low"]:
                log.warning("%s[%s] ends at %s, below offset %s we published", m["topic"],
                            m["partition"], end, m["page_low"])
                lost = True
        return lost

    async def rewind(self) -> None:
        """The broker lost data: re-publish the whole journal and forget stored consumer offsets."""
        log.warning("broker lost acknowledged data; re-publishing the journal from the start")
        RELAY_REPUBLISHES.inc()
        async with self.pool.acquire() as conn, conn.transaction():
            await conn.execute("UPDATE relay_cursor SET seq = 0, updated_at = now() WHERE name = $1",
                               CURSOR)
            await conn.execute("DELETE FROM relay_partition_marks")
            # Offsets point into partitions that no longer exist; consumers restart from the
            # beginning and their inboxes drop what they had already applied.
            await conn.execute("UPDATE consumer_offsets SET next_offset = 0, updated_at = now()")
        self.acked.clear()

    def _on_notify(self, *_: object) -> None:
        self.wake.set()

    async def run(self, stop: asyncio.Event, on_ready: Callable[[], Awaitable[None]] | None = None,
                  check_every: float = 2.0) -> None:
        """Publish until `stop` is set, surviving broker and database outages and restarts."""
        ready = False
        while not stop.is_set():
            listen_conn: asyncpg.Connection | None = None
            try:
                listen_conn = await self.pool.acquire()
                # One relay per journal: a second instance waits here as a hot standby.
                await listen_conn.execute("SELECT pg_advisory_lock($1)", RELAY_LOCK)
                await listen_conn.add_listener(journal.NOTIFY_CHANNEL, self._on_notify)
                if on_ready and not ready:
                    ready = True
                    await on_ready()
                while not stop.is_set():
                    try:
                        await self._session(stop, check_every)
                    except (TimeoutError, KafkaError) as exc:
                        log.warning("broker unavailable (%s); retrying in 1 s", type(exc).__name__)
                        await self._close_producer()
                        await _sleep_or_stop(stop, 1.0)
            except TRANSIENT_DB_ERRORS as exc:
                log.warning("database unavailable (%s); retrying in 1 s", type(exc).__name__)
                await _sleep_or_stop(stop, 1.0)
            finally:
                await self._close_producer()
                if listen_conn is not None:
                    await discard(self.pool, listen_conn)

    async def _session(self, stop: asyncio.Event, check_every: float) -> None:
        await ensure_topics(self.settings)
        await self.load_marks()
        if await self.broker_lost_data():
            await self.rewind()
        self.producer = self.producer_factory(self.settings)
        await self.producer.start()
        loop = asyncio.get_running_loop()
        next_check = loop.time() + check_every
        while not stop.is_set():
            try:
                published = await self.publish_page()
            except BrokerLostData as exc:
                log.warning("%s", exc)
                await ensure_topics(self.settings)
                await self.rewind()
                continue
            if loop.time() >= next_check:
                next_check = loop.time() + check_every
                if await self.broker_lost_data():
                    await ensure_topics(self.settings)
                    await self.rewind()
                    continue
            if published < PAGE:
                self.wake.clear()
                await _wait_any(stop, self.wake, timeout=0.5)

    async def _close_producer(self) -> None:
        if self.producer is not None:
            try:
                await self.producer.stop()
            except Exception:
                log.debug("producer stop failed", exc_info=True)
            self.producer = None


async def _wait_any(stop: asyncio.Event, wake: asyncio.Event, timeout: float) -> None:
    waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())]
    try:
        await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waiters:
            w.cancel()


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except TimeoutError:
        pass
