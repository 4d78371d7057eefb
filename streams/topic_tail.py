"""`gongpei topic`: look at what is on a topic, on any broker the platform runs on (the embedded
Tansu broker included, which Debian's kcat cannot talk to), with partition, offset, key and the
decoded event; a sealed phone is shown by its masked form only, and anything else that looks like
a mobile number is masked too."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, TopicPartition

from domain.redact import mask_lone_mobiles


def readable(value: bytes | None) -> str:
    """A message value as one line of JSON: sealed phones as their masked form, no clear number."""
    if value is None:
        return "null"
    try:
        body = orjson.loads(value)
    except orjson.JSONDecodeError:
        return "(not JSON) " + mask_lone_mobiles(value.decode("utf-8", "replace"))
    return mask_lone_mobiles(orjson.dumps(_masked(body)).decode())


def _masked(node: Any) -> Any:
    if isinstance(node, dict):
        if {"ciphertext", "masked"} <= node.keys():
            return node["masked"]   # a SealedPhone: only its masked form is fit to show
        return {k: _masked(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_masked(v) for v in node]
    return node


async def tail(bootstrap: str, topic: str, last: int, follow: bool,
               emit: Callable[[str], None], idle_seconds: float = 1.0) -> int:
    """Print the last `last` messages of each partition of `topic` (all of them when `last` is 0),
    then, with `follow`, new ones as they come. Reads without a consumer group: it moves no
    one's offsets. Returns how many messages were printed."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, group_id=None,
                                enable_auto_commit=False, auto_offset_reset="earliest")
    await consumer.start()
    printed = 0
    try:
        if topic not in await consumer.topics():
            raise LookupError(f"no topic {topic!r} on {bootstrap}")
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        consumer.assign(parts)
        ends = await consumer.end_offsets(parts)
        starts = await consumer.beginning_offsets(parts)
        for tp in parts:
            consumer.seek(tp, max(starts[tp], ends[tp] - last) if last else starts[tp])
        quiet = 0.0
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_seconds * 1000), max_records=500)
            records = [r for rs in batch.values() for r in rs]
            for r in sorted(records, key=lambda r: (r.partition, r.offset)):
                key = r.key.decode("utf-8", "replace") if r.key else "-"
                emit(f"{r.topic}/{r.partition}@{r.offset} key={mask_lone_mobiles(key)}"
                     f" {readable(r.value)}")
                printed += 1
            if records:
                quiet = 0.0
                continue
            quiet += idle_seconds
            done = True
            for tp in parts:
                done = done and await consumer.position(tp) >= ends[tp]
            if not follow and (done or quiet >= 5 * idle_seconds):
                return printed
    finally:
        await consumer.stop()
