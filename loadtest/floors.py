"""Consumer floors: how fast a consumer that does nothing but read and decode can go through the
same Kafka topics on the same broker. Each runs in a process of its own (the bench starts it) and
prints one JSON line with its timings:

    python -m loadtest.floors faust    --bootstrap HOST:PORT --topics parcel-events,vehicle-events \
        --expect 24000 [--partitions 4] [--session-timeout 4] [--batch 500]
    python -m loadtest.floors aiokafka --bootstrap HOST:PORT --topics ... --expect 24000

- faust: a bare Faust app (its own, fresh consumer group; the embedded-broker tuning of
  streams/app.py) with one agent that takes batches of `--batch` events (`take_events`, as the
  platform's worker does) and decodes each value with orjson, nothing else.
- aiokafka: a plain AIOKafkaConsumer, partitions assigned by hand (no group), `getmany` batches
  of `--batch`, orjson decode, nothing else.

Timed from the first message received to having read `--expect` messages (`first_s`) and from
partitions assigned to the same point (`assigned_s`); `cpu_s` is this process's CPU time over the
first-message interval."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from typing import Any

import orjson


def _report(out: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()


def run_faust(args: argparse.Namespace) -> None:
    import faust

    servers = args.bootstrap.replace(",", ";kafka://")
    app = faust.App(
        f"gongpei-bench-floor-{uuid.uuid4().hex[:8]}",  # a fresh group: reads from the start
        broker=f"kafka://{servers}", store="memory://",
        datadir=tempfile.mkdtemp(prefix="gongpei-floor-"), web_enabled=False,
        topic_partitions=args.partitions, topic_replication_factor=1,
        # The platform's embedded profile (streams/app.py, infra/settings.py): Tansu makes every
        # group join wait half the session timeout.
        broker_session_timeout=args.session_timeout, broker_heartbeat_interval=1.0,
        broker_rebalance_timeout=args.session_timeout * 2,
        consumer_auto_offset_reset="earliest", broker_commit_every=args.batch,
        broker_commit_interval=1.0,
    )
    topic = app.topic(*args.topics.split(","), key_type=bytes, value_type=bytes,
                      key_serializer="raw", value_serializer="raw")
    state: dict[str, Any] = {"n": 0, "first": None, "assigned": None}

    @app.on_partitions_assigned.connect  # type: ignore[arg-type]
    async def assigned(sender: Any, assigned: set[Any], **_: Any) -> None:
        if assigned and state["assigned"] is None:
            state["assigned"] = time.perf_counter()

    @app.agent(topic)
    async def floor(stream: Any) -> None:
        async for batch in stream.take_events(args.batch, within=0.05):
            if state["first"] is None:
                state["first"] = time.perf_counter()
                state["cpu"] = time.process_time()
            for event in batch:
                orjson.loads(event.value)
            state["n"] += len(batch)
            if state["n"] >= args.expect:
                done = time.perf_counter()
                _report({"consumer": "faust", "events": state["n"],
                         "first_s": done - state["first"],
                         "assigned_s": done - (state["assigned"] or state["first"]),
                         "cpu_s": time.process_time() - state["cpu"]})
                os._exit(0)  # a fresh group nobody reuses: no need to leave it politely

    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()


async def run_aiokafka(args: argparse.Namespace) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=args.bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    try:
        await consumer.topics()  # fetches the metadata
        tps = [TopicPartition(t, p) for t in args.topics.split(",")
               for p in sorted(consumer.partitions_for_topic(t) or ())]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        assigned = time.perf_counter()
        n, first, cpu = 0, None, 0.0
        while n < args.expect:
            got = await consumer.getmany(timeout_ms=1000, max_records=args.batch)
            for messages in got.values():
                if first is None:
                    first, cpu = time.perf_counter(), time.process_time()
                for m in messages:
                    orjson.loads(m.value)
                n += len(messages)
        done = time.perf_counter()
        _report({"consumer": "aiokafka", "events": n, "first_s": done - (first or assigned),
                 "assigned_s": done - assigned, "cpu_s": time.process_time() - cpu})
    finally:
        await consumer.stop()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("consumer", choices=["faust", "aiokafka"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topics", required=True, help="comma-separated topic names")
    ap.add_argument("--expect", type=int, required=True, help="messages to read in all")
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--session-timeout", type=float, default=4.0)
    ap.add_argument("--batch", type=int, default=500)
    args = ap.parse_args()
    if args.consumer == "faust":
        run_faust(args)
    else:
        asyncio.run(run_aiokafka(args))


if __name__ == "__main__":
    main()
