"""The one projection runtime on the embedded stack: poison is set aside (never looped on, never
skipped silently), every projection rebuilds from the journal and is compared with its live model,
and operators see where each projection is."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg
import httpx
import orjson

from domain.county import County
from entrypoints.platform import Platform
from infra.db import _init_connection
from projections import runtime
from projections.locks import Lock
from projections.runtime import Applied, Base, Source
from tests.conftest import db_fetch, wait_for
from tests.integration.test_spine import _ingest, _lifecycle, _parcel, metric


def _gongpei(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    assert platform.settings is not None
    env = {**os.environ, **platform.settings.to_env()}
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env=env,
                          capture_output=True, text=True, timeout=180, check=False)


def _owner(platform: Platform) -> str:
    assert platform.settings is not None
    return platform.settings.database_url_for("owner")


class _Picky(Base):
    """A projection that keeps the ids it saw and raises on the ones named `poison`."""

    name = "picky"
    source = Source.JOURNAL
    reads = frozenset({"parcel.scanned"})
    lock = Lock.REBUILD
    tables: ClassVar[dict[str, str]] = {"picky_seen": "*"}

    def __init__(self, poison: set[str]) -> None:
        self.poison = poison

    def decode(self, seq: int, wire: dict[str, Any]) -> str:
        return str(wire["event_id"])

    async def apply(self, conn: asyncpg.Connection, items: Sequence[str]) -> Applied:
        for event_id in items:
            if event_id in self.poison:
                raise ZeroDivisionError(f"cannot fold {event_id}")
        await conn.executemany("INSERT INTO picky_seen VALUES ($1)", [(i,) for i in items])
        return Applied(len(items), 0)

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("DELETE FROM picky_seen")


def test_given_an_event_a_reducer_cannot_fold_then_it_alone_is_set_aside_and_the_rest_applied(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    _, regs, scans = _lifecycle(county, seed=9031, parcels=4, steps=3)
    _ingest(client, tokens, regs, scans)
    poison = {scans[1]["event_id"], scans[5]["event_id"]}

    async def go() -> tuple[int, set[str], list[asyncpg.Record], int]:
        conn = await asyncpg.connect(_owner(platform))
        try:
            await _init_connection(conn)
            await conn.execute("CREATE TABLE IF NOT EXISTS picky_seen (event_id text)")
            picky = _Picky(poison)
            read = await runtime.catch_up(conn, picky, page=7)
            again = await runtime.catch_up(conn, picky, page=7)  # nothing is retried in a loop
            seen = {r["event_id"] for r in await conn.fetch("SELECT event_id FROM picky_seen")}
            aside = await conn.fetch("SELECT event_id, reason, topic, body FROM projection_set_aside"
                                     " WHERE projection = 'picky'")
            return read, seen, aside, again
        finally:
            await conn.execute("DROP TABLE IF EXISTS picky_seen;"
                               " DELETE FROM projection_set_aside WHERE projection = 'picky';"
                               " DELETE FROM consumer_offsets WHERE consumer = 'picky'")
            await conn.close()

    read, seen, aside, again = asyncio.run(go())
    every_scan = {r["event_id"] for r in db_fetch(
        platform, "SELECT event_id FROM journal WHERE type = 'parcel.scanned'")}
    assert read == len(every_scan) and again == 0
    assert seen == every_scan - poison
    assert {r["event_id"] for r in aside} == poison
    assert all(r["reason"].startswith("ZeroDivisionError: cannot fold") for r in aside)
    assert all(r["topic"] == "journal" and orjson.loads(r["body"])["event_id"] == r["event_id"]
               for r in aside)


def test_given_an_undecodable_message_on_kafka_then_the_worker_sets_it_aside_and_goes_on(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    from aiokafka import AIOKafkaProducer

    from streams.topics import PARCEL_EVENTS

    async def produce() -> None:
        assert platform.settings is not None
        producer = AIOKafkaProducer(bootstrap_servers=platform.settings.kafka_bootstrap_servers)
        await producer.start()
        try:
            await producer.send_and_wait(PARCEL_EVENTS.name, key=b"WB-BROKEN",
                                         value=b'{"type": "parcel.scanned", "payload": 1}')
        finally:
            await producer.stop()

    before = metric(client, "gongpei_projection_set_aside_total", projection="tracking")
    asyncio.run(produce())
    traffic, regs, scans = _lifecycle(county, seed=9032, parcels=1, steps=2)
    _ingest(client, tokens, regs, scans)
    # The parcel sent after the broken message is still projected …
    wait_for(lambda: (v := _parcel(client, tokens["manager"], traffic.parcels[0].waybill))
             and len(v["timeline"]) == 3, 15.0, "the next parcel's timeline")
    # … and the broken one is set aside for both projections reading that topic, with why.
    rows = wait_for(lambda: db_fetch(
        platform, "SELECT projection, reason FROM projection_set_aside WHERE topic = $1"
                  " AND body LIKE '%\"payload\": 1%'", PARCEL_EVENTS.name) or None, 10.0, "set aside")
    assert {r["projection"] for r in rows} >= {"tracking"}
    assert all(r["reason"].startswith("undecodable: ") for r in rows)
    assert metric(client, "gongpei_projection_set_aside_total", projection="tracking") > before
    listed = _gongpei(platform, "projections")
    assert listed.returncode == 0, listed.stderr
    assert "undecodable" in listed.stdout and "tracking" in listed.stdout


def _level(platform: Platform) -> bool:
    from projections.sla_store import SLA_TYPES

    return bool(db_fetch(platform, "SELECT (SELECT count(*) FROM tracking_events) = (SELECT count(*)"
                                   " FROM journal WHERE type LIKE 'parcel.%' OR type LIKE 'consent.%')"
                                   " AND (SELECT count(*) FROM sla_events) = (SELECT count(*) FROM"
                                   " journal WHERE type = ANY($1::text[]))", sorted(SLA_TYPES))[0][0])


def _worker_caught_up(platform: Platform) -> bool:
    """Tracking and SLA have each stored, for every partition of the topics they read, the
    partition's end: the SLA's re-read of what it already holds is invisible to `_level`."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    from streams.topics import PARCEL_EVENTS, VEHICLE_EVENTS

    reads = {"tracking": (PARCEL_EVENTS.name,), "sla": (PARCEL_EVENTS.name, VEHICLE_EVENTS.name)}

    async def ends() -> dict[tuple[str, int], int]:
        assert platform.settings is not None
        consumer = AIOKafkaConsumer(bootstrap_servers=platform.settings.kafka_bootstrap_servers)
        await consumer.start()
        try:
            tps = [TopicPartition(t, p) for t in reads["sla"]
                   for p in consumer.partitions_for_topic(t) or ()]
            return {(tp.topic, tp.partition): o for tp, o in (await consumer.end_offsets(tps)).items()}
        finally:
            await consumer.stop()

    end = asyncio.run(ends())
    stored = {(r["consumer"], r["topic"], r["partition"]): r["next_offset"] for r in db_fetch(
        platform, "SELECT consumer, topic, partition, next_offset FROM consumer_offsets"
                  " WHERE consumer IN ('tracking', 'sla')")}
    return bool(end) and all(stored.get((name, t, p), 0) >= o for name, topics in reads.items()
                             for (t, p), o in end.items() if t in topics)


def test_given_each_projection_when_rebuilt_then_it_is_compared_with_live_and_found_identical(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    _, regs, scans = _lifecycle(county, seed=9033, parcels=3, steps=6)
    _ingest(client, tokens, regs, scans)
    wait_for(lambda: _level(platform), 30.0, "tracking and SLA level with the journal")
    for name in ("tracking", "sla", "ledger"):
        checked = _gongpei(platform, "rebuild", name, "--check")
        assert checked.returncode == 0, (name, checked.stdout, checked.stderr)
        assert "identical; the live model is unchanged" in checked.stdout, checked.stdout
    # The SMS state is rebuilt in place (its decisions are journal events), and compared with
    # what was there before.
    # (`gongpei rebuild sms` needs the keys that open phones, which only the SMS service's
    # settings hold: here the platform's own settings.)
    from streams.rebuild import rebuild_sms

    assert platform.settings is not None
    report = asyncio.run(rebuild_sms(platform.settings, county))
    assert report.swapped and report.events > 0
    assert report.differing == 0, report.tables
    assert {t.table for t in report.tables} >= {"sms_arrivals", "sms_messages", "sms_recipients"}


def test_given_a_live_row_gone_wrong_when_rebuilt_then_the_difference_is_reported_and_mended(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=9034, parcels=2, steps=4)
    _ingest(client, tokens, regs, scans)
    waybill = traffic.parcels[0].waybill
    wait_for(lambda: (v := _parcel(client, tokens["manager"], waybill)) and len(v["timeline"]) == 5,
             10.0, "the timeline")
    wait_for(lambda: _level(platform), 30.0, "tracking and SLA level with the journal")
    right = db_fetch(platform, "SELECT status FROM parcels WHERE waybill = $1", waybill)[0][0]
    db_fetch(platform, "UPDATE parcels SET status = 'problem' WHERE waybill = $1", waybill)

    checked = _gongpei(platform, "rebuild", "tracking", "--check")
    assert checked.returncode == 1, checked.stdout
    assert "2 rows differ" in checked.stdout  # the wrong row live, the right one rebuilt
    assert db_fetch(platform, "SELECT status FROM parcels WHERE waybill = $1", waybill)[0][0] == "problem"

    mended = _gongpei(platform, "rebuild", "tracking")
    assert mended.returncode == 0, mended.stderr
    assert "the rebuilt model is now live" in mended.stdout
    assert db_fetch(platform, "SELECT status FROM parcels WHERE waybill = $1", waybill)[0][0] == right
    # The worker goes on after the swap: a new parcel still shows up.
    later, regs2, scans2 = _lifecycle(county, seed=9035, parcels=1, steps=2)
    _ingest(client, tokens, regs2, scans2)
    wait_for(lambda: (v := _parcel(client, tokens["manager"], later.parcels[0].waybill))
             and len(v["timeline"]) == 3, 15.0, "a parcel after the swap")


def test_given_the_ledger_then_a_rebuild_never_replaces_its_books(platform: Platform) -> None:
    refused = _gongpei(platform, "rebuild", "ledger")
    assert "the live model is unchanged" in refused.stdout, refused.stdout + refused.stderr


def test_given_a_fresh_platform_then_every_counter_an_alert_reads_is_exported_from_the_start(
        platform: Platform, client: httpx.Client) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    samples = {(s.name, tuple(sorted(s.labels.items())))
               for fam in text_string_to_metric_families(client.get("/metrics").text)
               for s in fam.samples}
    for projection in ("tracking", "sla", "ledger", "sms"):
        for reason in ("undecodable", "reducer_raised"):
            assert ("gongpei_projection_set_aside_total",
                    (("projection", projection), ("reason", reason))) in samples, (projection, reason)
    for outcome in ("requested", "submitted", "delivered", "failed", "cancelled"):
        assert ("gongpei_sms_total", (("outcome", outcome),)) in samples, outcome
    lagged = {dict(labels)["projection"] for name, labels in samples
              if name == "gongpei_projection_lag_events"}
    assert lagged >= {"tracking", "sla", "ledger"}, lagged


def test_given_the_embedded_broker_then_gongpei_topic_shows_keys_offsets_and_events_phones_masked(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=9036, parcels=1, steps=1)
    _ingest(client, tokens, regs, scans)
    parcel = traffic.parcels[0]
    wait_for(lambda: _parcel(client, tokens["manager"], parcel.waybill), 10.0, "the parcel")
    shown = _gongpei(platform, "topic", "parcel-events", "--last", "0")
    assert shown.returncode == 0, shown.stderr
    lines = [line for line in shown.stdout.splitlines() if f"key={parcel.waybill}" in line]
    assert len(lines) == 2, shown.stdout[-2000:]
    assert lines[0].startswith("parcel-events/") and "@" in lines[0].split()[0]
    assert '"type":"parcel.registered"' in lines[0] and '"type":"parcel.scanned"' in lines[1]
    assert f'"recipient_phone":"{parcel.phone[:3]}****{parcel.phone[-4:]}"' in lines[0]
    assert parcel.phone not in shown.stdout and "ciphertext" not in shown.stdout
    missing = _gongpei(platform, "topic", "no-such-topic")
    assert missing.returncode != 0 and "no topic 'no-such-topic'" in missing.stderr


def test_given_a_reset_projection_when_the_worker_restarts_then_it_replays_from_the_start(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    # The consumer group has committed the topics' ends long ago; a projection with no stored
    # offset must still be fed from offset 0, not from the group's position.
    traffic, regs, scans = _lifecycle(county, seed=9037, parcels=2, steps=3)
    _ingest(client, tokens, regs, scans)
    wait_for(lambda: _level(platform), 30.0, "tracking and SLA level with the journal")
    platform.children["worker"].stop()
    try:
        # No projection of the worker has a stored offset left (SLA's re-read is deduped).
        for sql in ("DELETE FROM parcels", "DELETE FROM tracking_events",
                    "DELETE FROM consumer_offsets WHERE consumer IN ('tracking', 'sla')"):
            # (as the schema owner, a superuser on the embedded stack: every brand's rows)
            db_fetch(platform, sql)
        assert db_fetch(platform, "SELECT count(*) AS n FROM tracking_events")[0]["n"] == 0
    finally:
        platform.restart_service("worker")
        platform.wait_ready(60)
    # Every event of the session so far is re-read (schemathesis alone posts thousands): on a
    # loaded 2-core box that takes more than a minute.
    try:
        wait_for(lambda: _level(platform), 180.0, "tracking re-fed from offset 0")
    except AssertionError as e:
        counts = db_fetch(platform, "SELECT (SELECT count(*) FROM tracking_events) AS tracking,"
                                    " (SELECT count(*) FROM sla_events) AS sla,"
                                    " (SELECT count(*) FROM journal) AS journal")[0]
        raise AssertionError(f"{e}; rows now: {dict(counts)}") from e
    for p in traffic.parcels:
        wait_for(lambda p=p: (v := _parcel(client, tokens["manager"], p.waybill))
                 and len(v["timeline"]) == 4, 15.0, "the timeline again")
    # The SLA re-reads the whole session too, dropping what it holds (invisible to `_level`), and
    # tracking shares its consumer: the tests after this one need a worker at the partitions' end.
    wait_for(lambda: _worker_caught_up(platform), 180.0, "tracking and SLA at every partition's end")
