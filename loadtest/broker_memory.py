"""How much memory the embedded (in-memory) Tansu broker takes per event it holds.

Starts an embedded broker alone, creates the registry's topics as the relay does, and publishes a
county's events in their stored wire form (registrations with a sealed phone, then the scans
down the chain; keyed by waybill) with the relay's own producer, in pages of 2,000 as the relay
sends them. Every `--every` events it records the broker's resident memory (VmRSS); at the end
it prints the curve, the least-squares slope in bytes per event and MiB per million events, and
the events this machine's memory would hold at that slope. Prints `name: value` lines.

    .venv/bin/python -m loadtest.broker_memory --events 300000 --every 50000
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import resource
import secrets
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson

from infra.capacity import GIB, MIB, rss_bytes
from infra.county_file import load_county
from infra.embedded import EmbeddedBroker
from infra.settings import DEMO_COUNTY, Settings
from loadtest.traffic import CountyTraffic, county_time
from streams.relay import PAGE, ensure_topics, make_producer
from streams.topics import topic_for


def stored_form(event: dict[str, Any], at: datetime) -> dict[str, Any]:
    """An uploaded event as the journal stores and the relay publishes it: stamped, and a
    registration's phone sealed (a key id, AES-GCM ciphertext, the masked form, a household
    hash), so the bytes per event are the platform's."""
    body = {**event, "recorded_at": at.isoformat(), "device_id": "pda-bench"}
    payload = dict(event["payload"])
    if "recipient_phone" in payload:
        phone = str(payload["recipient_phone"])
        payload["recipient_phone"] = {
            "key_id": secrets.token_hex(16),
            "ciphertext": base64.b64encode(os.urandom(12 + len(phone) + 16)).decode(),
            "masked": phone[:3] + "****" + phone[-4:],
            "household": base64.urlsafe_b64encode(os.urandom(32)).decode().rstrip("="),
        }
        body["schema_version"] = 2
    body["payload"] = payload
    return body


def county_events(parcels: int, seed: int) -> list[tuple[str, bytes, dict[str, Any]]]:
    """(topic, key, value) for `parcels` parcels: each registered, then scanned down the chain."""
    county = load_county(DEMO_COUNTY)
    traffic = CountyTraffic(county, seed=seed)
    t0 = county_time(county, datetime(2026, 11, 11, tzinfo=UTC))
    out = []
    for _ in range(parcels):
        parcel, event = traffic.register(t0)
        out.append((event, parcel.waybill))
    for step in range(7):
        for parcel in traffic.parcels:
            if scan := traffic.advance(parcel, t0 + timedelta(hours=step + 1)):
                out.append((scan, parcel.waybill))
    return [(topic_for(e["type"]), key.encode(), stored_form(e, t0)) for e, key in out]


async def publish(broker: EmbeddedBroker, total: int, every: int,
                  pool: list[tuple[str, bytes, dict[str, Any]]]
                  ) -> tuple[list[tuple[int, int]], int, float]:
    """Publish `total` events cycling `pool` (each with a fresh event id) until done or the
    broker dies; returns the curve of (events acknowledged, broker RSS), the bytes of values
    sent, and the seconds taken."""
    assert broker.proc is not None
    bootstrap, pid = broker.bootstrap, broker.proc.pid
    settings = Settings("postgresql://bench@127.0.0.1/bench", "x" * 16, bootstrap,
                        profile="embedded", topic_partitions=4)
    await ensure_topics(settings)
    producer = make_producer(settings)
    await producer.start()
    curve = [(0, rss_bytes(pid) or 0)]
    sent = value_bytes = 0
    started = time.monotonic()
    try:
        while sent < total:
            futures = []
            for i in range(min(PAGE, total - sent)):
                topic, key, body = pool[(sent + i) % len(pool)]
                value = orjson.dumps({**body, "event_id": str(uuid.uuid4())})  # a fresh id each
                value_bytes += len(value)
                futures.append(await producer.send(topic, key=key, value=value))
            try:
                await asyncio.wait_for(asyncio.gather(*futures), 30)
            except Exception as exc:  # noqa: BLE001 - the broker at its limit: say how
                print(f"  publishing failed after {sent} events: {type(exc).__name__}: {exc}"
                      f" (broker {'alive' if broker.alive() else 'exited'})", flush=True)
                break
            before = sent
            sent += len(futures)
            if sent // every > before // every or sent == total:
                curve.append((sent, rss_bytes(pid) or 0))
                print(f"  {sent:>9} events  broker RSS {(curve[-1][1]) / MIB:8.1f} MiB", flush=True)
    finally:
        try:
            await asyncio.wait_for(producer.stop(), 20)
        except Exception as exc:  # noqa: BLE001 - a dead broker: nothing left to flush to
            print(f"  producer stopped uncleanly: {type(exc).__name__}", flush=True)
    return curve, value_bytes, time.monotonic() - started


async def read_all(bootstrap: str, pid: int) -> tuple[int, int]:
    """Read every topic from the start, as a worker's replay does; (messages read, the broker's
    highest RSS meanwhile)."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False,
                                auto_offset_reset="earliest")
    await consumer.start()
    try:
        parts = [TopicPartition(t, p) for t in await consumer.topics()
                 for p in consumer.partitions_for_topic(t) or ()]
        consumer.assign(parts)
        await consumer.seek_to_beginning(*parts)
        ends = await consumer.end_offsets(parts)
        read, peak, deadline = 0, 0, time.monotonic() + 600

        async def behind() -> bool:
            return any([await consumer.position(tp) < ends[tp] for tp in parts])

        while await behind() and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=1000, max_records=5000)
            read += sum(len(v) for v in batch.values())
            peak = max(peak, rss_bytes(pid) or 0)
        return read, peak
    finally:
        await consumer.stop()


def slope(curve: list[tuple[int, int]]) -> float:
    """Least-squares bytes of RSS per event over the curve."""
    n = len(curve)
    mx = sum(x for x, _ in curve) / n
    my = sum(y for _, y in curve) / n
    den = sum((x - mx) ** 2 for x, _ in curve)
    return sum((x - mx) * (y - my) for x, y in curve) / den if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--every", type=int, default=50_000, help="events between two samples")
    parser.add_argument("--parcels", type=int, default=5_000,
                        help="parcels in the pool of events cycled (each about 8 events)")
    parser.add_argument("--read", action="store_true",
                        help="then read everything back from the start, as a worker's replay")
    parser.add_argument("--limit-mb", type=int, default=0,
                        help="cap the broker's address space (RLIMIT_AS) to see what it does at"
                             " its limit (0: no cap)")
    parser.add_argument("--seed", type=int, default=time.time_ns() % 10**6)
    args = parser.parse_args()
    print(f"seed: {args.seed}\nload: {Path('/proc/loadavg').read_text().strip()}", flush=True)
    pool = county_events(args.parcels, args.seed)
    log_path = Path(tempfile.mkdtemp(prefix="gongpei-broker-memory-")) / "broker.log"
    broker = EmbeddedBroker(log_path=log_path)
    broker.start()
    try:
        assert broker.proc is not None
        if args.limit_mb:
            cap = args.limit_mb * MIB
            resource.prlimit(broker.proc.pid, resource.RLIMIT_AS, (cap, cap))
        curve, value_bytes, seconds = asyncio.run(publish(broker, args.events, args.every, pool))
        time.sleep(2)
        settled = rss_bytes(broker.proc.pid) or 0
        if args.read and broker.alive():
            began = time.monotonic()
            read, peak = asyncio.run(read_all(broker.bootstrap, broker.proc.pid))
            print(f"read_back: {read} messages in {time.monotonic() - began:.1f} s; broker RSS"
                  f" peak {peak / MIB:.1f} MiB while read, {(rss_bytes(broker.proc.pid) or 0) / MIB:.1f}"
                  " MiB after")
        if not broker.alive():
            print(f"broker_exit_code: {broker.proc.returncode}")
            print("broker_log_tail: " + " | ".join(
                log_path.read_text(errors="replace").strip().splitlines()[-3:]))
    finally:
        broker.stop()
    per_event = slope(curve)
    total_memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    print(f"events_sampled: {curve[-1][0]} (the last sample of the curve)")
    print(f"seconds: {seconds:.1f} ({curve[-1][0] / seconds:.0f} events/s)")
    print(f"mean_value_bytes: {value_bytes / max(1, curve[-1][0]):.0f}")
    print(f"broker_rss_start_mib: {curve[0][1] / MIB:.1f}")
    print(f"broker_rss_end_mib: {curve[-1][1] / MIB:.1f}")
    print(f"broker_rss_settled_mib: {settled / MIB:.1f}")
    print(f"rss_bytes_per_event: {per_event:.0f}")
    print(f"rss_mib_per_million_events: {per_event * 1e6 / MIB:.0f}")
    print(f"machine_memory_gib: {total_memory / GIB:.1f}")
    if per_event > 0:
        print(f"events_in_half_the_memory_millions: {total_memory / 2 / per_event / 1e6:.1f}")
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
    sys.exit(0)


if __name__ == "__main__":
    main()
