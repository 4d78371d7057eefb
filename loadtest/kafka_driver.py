"""The direct-to-Kafka driver: the same uploads published straight onto the platform's topics in
the journal's wire form, keyed as the relay keys them, so the stream side (the worker's tracking
and SLA projections) is measured alone — no API, no journal, no ledger or SMS planning (they
follow the journal, which this mode bypasses)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from datetime import UTC, datetime
from typing import Any

import orjson

from loadtest.drivers import Sent
from loadtest.model import Upload


def sealed(phone: str, waybill: str) -> dict[str, str]:
    """A phone in the journal's sealed shape (docs/events.md) with no key behind it: the stream
    projections read its shape, never its content (only the SMS sender opens one)."""
    digest = hashlib.sha256(f"{waybill}|{phone}".encode()).digest()
    return {"key_id": digest[:16].hex(), "ciphertext": base64.b64encode(digest * 2).decode(),
            "masked": f"{phone[:3]}****{phone[-4:]}",
            "household": hashlib.sha256(phone.encode()).hexdigest()}


def wire(event: dict[str, Any], device: str, recorded: datetime) -> tuple[str, bytes, bytes]:
    """(topic, key, value) of an uploaded event as the relay would publish it."""
    from streams.topics import topic_for

    body = {**event, "recorded_at": recorded.isoformat(), "device_id": device}
    payload = event["payload"]
    if event["type"] == "parcel.registered":
        payload = {**payload, "recipient_phone": sealed(payload["recipient_phone"], payload["waybill"])}
        body["payload"] = payload
    key = payload.get("waybill") or payload["trip_id"]
    return topic_for(event["type"]), key.encode(), orjson.dumps(body)


async def replay(bootstrap: str, uploads: list[Upload], sim0: datetime,
                 seconds_per_sim_second: float, concurrency: int = 48) -> tuple[list[Sent], float]:
    """Publish each upload at its compressed instant (acks from every replica, as the relay asks),
    at most `concurrency` uploads in flight; latency is until the broker acknowledged them all."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5)
    await producer.start()
    gate = asyncio.Semaphore(concurrency)
    out: list[Sent] = []
    started = time.perf_counter()

    async def one(u: Upload) -> None:
        due = (u.at - sim0).total_seconds() * seconds_per_sim_second
        wait = due - (time.perf_counter() - started)
        if wait > 0:
            await asyncio.sleep(wait)
        async with gate:
            sent = time.perf_counter() - started
            now = datetime.now(UTC)
            futures = [await producer.send(*_args(wire(e, u.device, now))) for e in u.events]
            await asyncio.gather(*futures)
            lat = time.perf_counter() - started - sent
        out.append(Sent(u.index, u.device, len(u.events), due, sent, lat, 200,
                        {"published": len(u.events)}, [], ["accepted"] * len(u.events)))

    try:
        await asyncio.gather(*(one(u) for u in uploads))
    finally:
        await producer.stop()
    return sorted(out, key=lambda s: s.index), time.perf_counter() - started


def _args(t: tuple[str, bytes, bytes]) -> tuple[str, bytes, bytes]:
    return t[0], t[2], t[1]  # send(topic, value, key)
