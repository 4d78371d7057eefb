"""Villagers' phone numbers on the embedded stack: after a realistic run no number is anywhere in
clear (every Kafka message, every column of every table, every file the platform wrote) but the
SMS sender's sealed store, which only it can open; and erasing a number or shredding a month
makes it unreadable for good while every figure stays as it was."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from domain.county import County
from entrypoints.platform import Platform
from loadtest.traffic import CountyTraffic, county_time, envelope
from tests.conftest import bearer, db_fetch, wait_for

POINT = "VIL-XILIU-01"


def _numbers(n: int, seed: int) -> list[str]:
    rng = random.Random(f"{seed}-{time.time_ns()}")
    return [f"15{rng.randrange(3, 10)}{rng.randrange(10**8):08d}" for _ in range(n)]


def _forms(phone: str) -> list[bytes]:
    """How a number could show up in clear: as digits, international, or hex of its bytes."""
    out = []
    for text in (phone, f"+86{phone}", f"+86 {phone}", f"86{phone}"):
        out += [text.encode(), text.encode().hex().encode()]
    return out


def _post(client: httpx.Client, token: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post("/v1/scan-batches", json={"events": events}, headers=bearer(token))
    assert r.status_code == 200, r.text
    assert r.json()["rejected"] == 0, r.text
    return r.json()  # type: ignore[no-any-return]


def _gongpei(platform: Platform, *args: str) -> subprocess.CompletedProcess[str]:
    """An operator command, configured like the operator's shell: no private key needed."""
    assert platform.settings is not None
    env = {**os.environ, **platform.settings.to_env()}
    return subprocess.run([sys.executable, "-m", "entrypoints.cli", *args], env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _keys(platform: Platform, county: County) -> Any:
    from infra.pii import Keyring

    assert platform.settings is not None
    return Keyring.from_settings(platform.settings, county.utc_offset_minutes)


def _open_registrations(platform: Platform, county: County, waybills: list[str]) -> dict[str, Any]:
    """Open each waybill's sealed phone from its journal registration, as the SMS sender would:
    the number, or the exception that stopped it."""
    from domain.envelope import Envelope
    from infra.db import _init_connection

    keys = _keys(platform, county)

    async def go() -> dict[str, Any]:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url)
        await _init_connection(conn)
        out: dict[str, Any] = {}
        try:
            for r in await conn.fetch("SELECT partition_key, body FROM journal WHERE type ="
                                      " 'parcel.registered' AND partition_key = ANY($1)", waybills):
                sealed = Envelope.from_wire(r["body"]).payload.recipient_phone  # type: ignore[attr-defined]
                try:
                    out[r["partition_key"]] = await keys.open(conn, sealed, r["partition_key"])
                except Exception as exc:  # noqa: BLE001 - the kind of failure is the finding
                    out[r["partition_key"]] = exc
        finally:
            await conn.close()
        return out

    return asyncio.run(go())


def _kafka_messages(platform: Platform) -> tuple[list[bytes], dict[str, int]]:
    """Every message on every topic, from the beginning: keys and values, and a count per topic."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    assert platform.settings is not None

    async def go() -> tuple[list[bytes], dict[str, int]]:
        consumer = AIOKafkaConsumer(bootstrap_servers=platform.settings.kafka_bootstrap_servers,
                                    enable_auto_commit=False, auto_offset_reset="earliest")
        await consumer.start()
        blobs: list[bytes] = []
        counts: dict[str, int] = {}
        try:
            topics = await consumer.topics()
            parts = [TopicPartition(t, p) for t in topics
                     for p in (consumer.partitions_for_topic(t) or ())]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            # Tansu's end offsets lag a batch's true end: read until nothing more comes.
            quiet = 0
            while quiet < 3:
                got = await consumer.getmany(timeout_ms=1000, max_records=5000)
                if not got:
                    quiet += 1
                    continue
                quiet = 0
                for tp, records in got.items():
                    counts[tp.topic] = counts.get(tp.topic, 0) + len(records)
                    for rec in records:
                        blobs += [rec.key or b"", rec.value or b""]
                        blobs += [v for _, v in (rec.headers or ())]
        finally:
            await consumer.stop()
        return blobs, counts

    return asyncio.run(go())


def _database_rows(platform: Platform) -> dict[str, list[str]]:
    """Every row of every table in the public schema, whole, as text (bytea shows as hex), read
    as the superuser so row-level security hides nothing."""
    tables = [r["table_name"] for r in db_fetch(
        platform, "SELECT table_name FROM information_schema.tables"
                  " WHERE table_schema = 'public' AND table_type = 'BASE TABLE'")]
    return {t: [r[0] for r in db_fetch(platform, f'SELECT t::text FROM public."{t}" t')]
            for t in tables}


def _state_files(platform: Platform) -> dict[str, bytes]:
    """Every file the platform wrote under its state folder (database files, broker and service
    logs, the stream worker's data), but the local SMS gateways' own: they stand in for the
    provider, which is given the number to send to."""
    out = {}
    for path in platform.state_dir.rglob("*"):
        if not path.is_file() or path.name.startswith("sms-gateway-"):
            continue
        try:
            out[str(path.relative_to(platform.state_dir))] = path.read_bytes()
        except OSError:
            continue  # gone meanwhile (a temporary file)
    return out


def test_given_a_realistic_run_then_no_phone_number_is_anywhere_in_clear(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    household, solo, old_form, no_consent = numbers = _numbers(4, seed=1)
    now = county_time(county, datetime.now(UTC))
    stamp = int(time.time()) % 10**6
    plan = [("ZTO", household), ("ZTO", household), ("YTO", household), ("STO", solo),
            ("JT", old_form), ("EMS", no_consent)]
    parcels = [(f"{b[:2]}8{stamp:06d}{i:04d}", b, p) for i, (b, p) in enumerate(plan)]
    # Given manifests from five brands (one in the old v1 upload form) …
    for wb, brand, phone in parcels:
        if phone == old_form:
            reg = envelope("parcel.registered", 1, now, brand, "manifest", {
                "waybill": wb, "phone": phone, "village": POINT, "weight_g": 700})
        else:
            reg = envelope("parcel.registered", 2, now, brand, "manifest", {
                "waybill": wb, "recipient_phone": phone, "destination_village": POINT,
                "weight_g": 700})
        _post(client, tokens[f"{brand}-system"], [reg, envelope(
            "consent.recorded", 1, now, brand, "manifest",
            {"waybill": wb, "consent": phone != no_consent, "channel": "app"})])
    # … scanned down the chain to the village point, where the SMS go out …
    for step, (action, node) in enumerate((("received", "CTY-HAICHENG"), ("arrived", "TWN-XILIU"),
                                           ("stored", POINT))):
        _post(client, tokens["scanner"], [
            envelope("parcel.scanned", 1, now + timedelta(minutes=step), b, "op-1",
                     {"waybill": wb, "action": action, "node_id": node}) for wb, b, _ in parcels])
    manager = bearer(tokens["manager"])

    def sms_settled() -> bool:
        for wb, _, _ in parcels:
            r = client.get(f"/v1/parcels/{wb}/sms", headers=manager)
            if r.status_code != 200 or not r.json()["sms"] or r.json()["sms"][-1]["state"] not in (
                    "delivered", "failed"):
                return False
        return True

    wait_for(sms_settled, 60, "every SMS sent and its receipt in")
    # … looked up by the villagers (once right, once wrong), read by brands and the manager.
    wb0 = parcels[0][0]
    assert client.post("/v1/public/track", json={"waybill": wb0, "phone_last4": household[-4:]}
                       ).status_code == 200
    client.post("/v1/public/track", json={"waybill": wb0, "phone_last4": "0000"})
    assert client.get(f"/v1/parcels/{wb0}", headers=bearer(tokens["ZTO-brand"])).status_code == 200
    wait_for(lambda: db_fetch(platform, "SELECT count(*) FROM parcels WHERE waybill = ANY($1)"
                                        " AND status = 'stored_at_point'", [p[0] for p in parcels])[0][0]
             == len(parcels), 30, "tracking level with the scans")

    # Then the numbers reached the villagers (the provider's stand-in has them) …
    sent = b"".join(platform.gateway_log(g).read_bytes() for g in ("aliyun", "tencent")
                    if platform.gateway_log(g).exists())
    assert all(p.encode() in sent for p in numbers), "the SMS did not go out: nothing is proven"
    # … and only the SMS sender's key opens them from the journal …
    assert _open_registrations(platform, county, [p[0] for p in parcels]) == {
        wb: phone for wb, _, phone in parcels}
    # … and none is anywhere else: not on Kafka, not in a table, not in any file.
    blobs, counts = _kafka_messages(platform)
    assert counts.get("parcel-events", 0) >= len(parcels) and counts.get("sms-events", 0) >= 1
    tables, files = _database_rows(platform), _state_files(platform)
    assert {"journal", "tracking_events", "sla_events", "settlement_events", "sms_recipients",
            "sms_messages", "parcels"} <= set(tables)
    assert any(name.startswith("logs/") for name in files) and any("pg" in n for n in files)
    found = []
    for phone in numbers:
        for form in _forms(phone):
            found += [f"kafka message {i}" for i, b in enumerate(blobs) if form in b]
            found += [f"table {t}" for t, rows in tables.items()
                      if any(form.decode() in row for row in rows)]
            found += [f"file {name}" for name, data in files.items() if form in data]
    assert not found, sorted(set(found))
    # The masked form is what the views keep: present, so the search looked at the right rows.
    assert any(f"{household[:3]}****{household[-4:]}" in row for row in tables["parcels"])


def _figures(platform: Platform, waybills: list[str]) -> dict[str, Any]:
    """Everything a phone must not change: the books, the SLA tables, and each parcel's status
    and timeline."""
    return {
        "ledger": [tuple(r) for r in db_fetch(
            platform, "SELECT entry_id, line_no, period, posting_date, unit, kind, account, brand,"
                      " ref, amount_fen, event_ids FROM ledger_lines ORDER BY entry_id, line_no")],
        "sla_legs": [r[0] for r in db_fetch(platform, "SELECT t::text FROM sla_legs t ORDER BY 1")],
        "sla_daily": [r[0] for r in db_fetch(platform, "SELECT t::text FROM sla_daily t ORDER BY 1")],
        "parcels": [tuple(r) for r in db_fetch(
            platform, "SELECT waybill, brand, status, public_code, destination_village,"
                      " current_node, misrouted, last_event_at, view FROM parcels"
                      " WHERE waybill = ANY($1) ORDER BY waybill", waybills)],
    }


def _month_after(period: str) -> str:
    year, month = map(int, period.split("-"))
    return f"{year + month // 12}-{month % 12 + 1:02d}"


def test_given_an_erasure_and_a_shredded_month_then_the_numbers_are_gone_and_no_figure_moved(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    from domain.envelope import Envelope
    from domain.validation import validate_batch
    from infra.db import create_pool
    from infra.pii import PhoneErased, period_of, seal_events
    from projections import journal
    from projections.ledger_store import LEDGER_TYPES

    erased, kept, old = _numbers(3, seed=2)
    # Given this month's parcels, uploaded through the API, two of them for the number that
    # will be erased, walked all the way to delivery (with their runs' departures) …
    traffic = CountyTraffic(county, seed=int(time.time()) % 90 + 10)
    t0 = county_time(county, datetime.now(UTC)) - timedelta(hours=10)
    regs: dict[str, list[dict[str, Any]]] = {}
    for i in range(10):
        parcel, event = traffic.register(t0)
        parcel.phone = event["payload"]["recipient_phone"] = (
            erased if i < 2 else kept if i == 2 else parcel.phone)
        regs.setdefault(parcel.brand, []).append(event)
    for brand, events in regs.items():
        _post(client, tokens[f"{brand}-system"], events)
    for step in range(7):
        at = t0 + timedelta(hours=step + 1)
        scans = [e for p in traffic.parcels if (e := traffic.advance(p, at))]
        _post(client, tokens["scanner"], traffic.departures(scans, at) + scans)
    recent = [p.waybill for p in traffic.parcels]
    # … and parcels of a month long past, journalled then (sealed into that month's keys).
    past = datetime.now(UTC) - timedelta(days=200)
    old_period = period_of(past, county.utc_offset_minutes)
    old_waybills = [f"ZT7{int(time.time()) % 10**6:06d}{i:03d}" for i in range(3)]
    raw = [envelope("parcel.registered", 2, past, "ZTO", "manifest", {
        "waybill": wb, "recipient_phone": old, "destination_village": POINT, "weight_g": 500})
        for wb in old_waybills] + [envelope("parcel.scanned", 1, past + timedelta(hours=h), "ZTO",
                                            "op-1", {"waybill": wb, "action": a, "node_id": n})
                                   for wb in old_waybills for h, a, n in (
                                       (1, "received", "CTY-HAICHENG"), (5, "stored", POINT),
                                       (9, "delivered", POINT))]
    envs = validate_batch(raw, county=county, permitted_brands=frozenset({"ZTO"}), device_id="pda",
                          recorded_at=past + timedelta(hours=10))
    assert all(isinstance(e, Envelope) for e in envs), envs

    async def append_old() -> None:
        assert platform.settings is not None
        pool = await create_pool(platform.settings.database_url_for("api"), max_size=1)
        try:
            async with pool.acquire() as conn, conn.transaction():
                await journal.append(conn, await seal_events(conn, _keys(platform, county), envs))  # type: ignore[arg-type]
        finally:
            await pool.close()

    asyncio.run(append_old())
    everyone = recent + old_waybills

    def level() -> dict[str, Any] | None:
        done = db_fetch(platform, "SELECT count(*) FROM parcels WHERE waybill = ANY($1)"
                                  " AND status = 'delivered'", everyone)[0][0]
        ledger = db_fetch(platform, "SELECT count(*) FROM journal WHERE type = ANY($1) AND seq >"
                                    " (SELECT next_offset - 1 FROM consumer_offsets WHERE consumer = 'ledger')",
                          list(LEDGER_TYPES))[0][0]
        if done != len(everyone) or ledger:
            return None
        first = _figures(platform, everyone)
        time.sleep(2)
        return first if _figures(platform, everyone) == first else None

    before = wait_for(level, 90, "every projection level with the journal")
    assert before["ledger"] and before["sla_legs"]
    assert _open_registrations(platform, county, [recent[0], old_waybills[0]]) == {
        recent[0]: erased, old_waybills[0]: old}

    # When the villager asks to be forgotten …
    done = _gongpei(platform, "pii", "erase", "--phone", erased)
    assert done.returncode == 0, done.stderr
    assert erased not in done.stdout + done.stderr
    assert f"{erased[:3]}****{erased[-4:]}" in done.stdout
    assert "data keys destroyed: 2" in done.stdout
    # … and the long-past month is shredded, and tracking rebuilt from the journal.
    shred = _gongpei(platform, "pii", "shred", "--before", _month_after(old_period))
    assert shred.returncode == 0, shred.stderr
    assert old_period in shred.stdout and "data keys destroyed: 3" in shred.stdout
    assert old not in shred.stdout
    refused = _gongpei(platform, "pii", "shred", "--before", "2999-01")
    assert refused.returncode != 0 and "current month" in refused.stderr
    rebuilt = _gongpei(platform, "rebuild", "tracking")
    assert rebuilt.returncode == 0, rebuilt.stderr

    # Then the numbers cannot be opened by anyone, the SMS sender included …
    opened = _open_registrations(platform, county, everyone)
    assert all(isinstance(opened[wb], PhoneErased) for wb in recent[:2] + old_waybills), opened
    assert opened[recent[2]] == kept  # … while other numbers still open
    # … no read model shows them, and the public lookup no longer answers with them …
    rows = {r["waybill"]: r for r in db_fetch(
        platform, "SELECT waybill, phone_masked, phone_last4 FROM parcels WHERE waybill = ANY($1)",
        everyone)}
    assert all(rows[wb]["phone_masked"] is None and rows[wb]["phone_last4"] is None
               for wb in recent[:2] + old_waybills)
    assert rows[recent[2]]["phone_masked"] == f"{kept[:3]}****{kept[-4:]}"
    for wb, phone in ((recent[0], erased), (old_waybills[0], old)):
        r = client.post("/v1/public/track", json={"waybill": wb, "phone_last4": phone[-4:]})
        assert r.status_code == 404 and phone[-4:] not in r.text
    assert client.post("/v1/public/track", json={"waybill": recent[2], "phone_last4": kept[-4:]}
                       ).status_code == 200
    sms_rows = db_fetch(platform, "SELECT t::text FROM sms_recipients t WHERE waybill = ANY($1)",
                        recent[:2] + old_waybills)
    assert sms_rows and not any(f"{p[:3]}****" in r[0] for r in sms_rows for p in (erased, old))
    # … and every figure is as it was: the books, the SLA, each parcel's status and timeline.
    after = _figures(platform, everyone)
    assert after == before


@pytest.mark.parametrize("args", [["pii", "erase", "--phone", "1381234567"],
                                  ["pii", "erase", "--phone", "１３８１２３４５６７８"]])
def test_given_a_malformed_number_to_erase_then_the_cli_refuses_without_echoing_it(
        platform: Platform, args: list[str]) -> None:
    done = _gongpei(platform, *args)
    assert done.returncode != 0 and args[-1] not in done.stdout + done.stderr


def test_the_sms_service_alone_holds_the_private_key(platform: Platform) -> None:
    assert platform.settings is not None
    key = platform.settings.pii_private_keys
    assert key
    for name, child in platform.children.items():
        has = child.env.get("GONGPEI_PII_PRIVATE_KEYS") == key
        assert has == (name == "sms"), name
    assert (Path(platform.state_dir) / "pii-master-key").stat().st_mode & 0o077 == 0


def test_given_a_number_erased_after_its_sms_was_decided_then_the_sender_fails_it_as_erased(
        platform: Platform, county: County) -> None:
    """Driven step by step with the running SMS service stopped: the SMS is requested, then the
    villager's erasure request comes in before it goes out."""
    from uuid import uuid4

    from domain.envelope import Envelope
    from domain.events import ParcelRegisteredUpload, ParcelScanned, ScanAction
    from infra.db import _init_connection, create_pool
    from projections import journal, sms_planner
    from projections.pii_admin import erase
    from streams.sms_service import Sender
    from tests.integration.test_sms import RecordingProvider

    assert platform.settings is not None
    settings = platform.settings
    keys = _keys(platform, county)
    (mobile,) = _numbers(1, seed=3)
    wb, node, t0 = f"YT6{int(time.time()) % 10**6:06d}001", county.villages[60].id, datetime.now(UTC)

    def event(event_type: str, payload: Any) -> Envelope:
        return Envelope(event_id=str(uuid4()), type=event_type,
                        schema_version=2 if event_type == "parcel.registered" else 1,
                        occurred_at=t0, recorded_at=t0, device_id="pda-test", brand="YTO",
                        operator_id="op-1", payload=payload)

    async def go() -> RecordingProvider:
        pool = await create_pool(settings.database_url_for("sms"), max_size=2)
        provider = RecordingProvider()
        clock = t0 + timedelta(seconds=county.sms.digest_seconds + 5)
        sender = Sender(county, [provider], keys=keys, clock=lambda: clock)
        try:
            # Uploaded through the API's role (it seals), planned and sent by the SMS service's.
            api = await asyncpg.connect(settings.database_url_for("api"))
            try:
                await _init_connection(api)
                async with api.transaction():
                    await journal.append(api, await seal_events(api, keys, [
                        event("parcel.registered", ParcelRegisteredUpload(
                            waybill=wb, recipient_phone=mobile, destination_village=node,
                            weight_g=500)),
                        event("parcel.scanned", ParcelScanned(waybill=wb, action=ScanAction.stored,
                                                              node_id=node))]))
            finally:
                await api.close()
            async with pool.acquire() as conn:
                await sms_planner.catch_up(conn, county, now=t0, keys=keys)
                assert await sms_planner.close_due(conn, county, clock) >= 1
                await sms_planner.catch_up(conn, county, now=clock, keys=keys)
            owner = await asyncpg.connect(settings.database_url)
            try:
                await _init_connection(owner)
                assert (await erase(owner, mobile)).keys == 1
            finally:
                await owner.close()
            await sender.send_due(pool)
            async with pool.acquire() as conn:
                await sms_planner.catch_up(conn, county, now=clock, keys=keys)
            return provider
        finally:
            await pool.close()

    from infra.pii import seal_events

    platform.children["sms"].stop()
    try:
        provider = asyncio.run(go())
    finally:
        platform.children["sms"].start()
    rows = db_fetch(platform, "SELECT m.sms_id, m.state, m.failure_code, m.permanent,"
                              " m.phone_masked FROM sms_messages m JOIN sms_message_parcels"
                              " p USING (sms_id) WHERE p.waybill = $1", wb)
    arrival = db_fetch(platform, "SELECT call_reason FROM sms_arrivals WHERE waybill = $1", wb)
    assert [(r["state"], r["failure_code"], r["permanent"], r["phone_masked"]) for r in rows] == [
        ("failed", "PHONE_ERASED", True, "erased")]
    assert rows[0]["sms_id"] not in provider.calls  # nothing reached a provider
    assert arrival[0]["call_reason"] == "sms_failed:PHONE_ERASED"  # the keeper phones instead


def test_given_a_new_master_key_when_rotated_then_only_it_is_needed_to_open_every_month(
        platform: Platform, county: County) -> None:
    import base64

    from domain.envelope import Envelope
    from infra.db import _init_connection
    from infra.pii import Keyring, KeyUnavailable, generate_keypair, load_key, master_key_id

    assert platform.settings is not None
    settings = platform.settings
    old_private = settings.pii_private_keys
    new_public, new_private = generate_keypair()
    new_b64 = base64.b64encode(new_private).decode()

    def rotate(keys: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **settings.to_env(), "GONGPEI_PII_PRIVATE_KEYS": keys}
        return subprocess.run([sys.executable, "-m", "entrypoints.cli", "pii", "rotate"], env=env,
                              capture_output=True, text=True, timeout=60, check=False)

    async def open_one(keys: Keyring) -> str:
        conn = await asyncpg.connect(settings.database_url)
        try:
            await _init_connection(conn)
            row = await conn.fetchrow(
                "SELECT j.partition_key, j.body FROM journal j JOIN pii_keys k ON"
                " k.key_id = j.body->'payload'->'recipient_phone'->>'key_id'"
                " WHERE j.type = 'parcel.registered' ORDER BY j.seq DESC LIMIT 1")
            sealed = Envelope.from_wire(row["body"]).payload.recipient_phone  # type: ignore[attr-defined]
            assert await load_key(conn, sealed.key_id) is not None
            return await keys.open(conn, sealed, row["partition_key"])
        finally:
            await conn.close()

    only_new = Keyring(None, {master_key_id(new_public): new_private}, county.utc_offset_minutes)
    with pytest.raises(KeyUnavailable):
        asyncio.run(open_one(only_new))
    platform.children["sms"].stop()  # it holds only the old key: it sits this one out
    try:
        done = rotate(f"{new_b64},{old_private}")
        assert done.returncode == 0 and "re-sealed" in done.stdout, done.stderr
        assert {r[0] for r in db_fetch(platform, "SELECT DISTINCT master_key_id FROM pii_periods"
                                                 " WHERE private_key IS NOT NULL")} == {
            master_key_id(new_public)}
        fresh = Keyring(None, {master_key_id(new_public): new_private}, county.utc_offset_minutes)
        assert len(asyncio.run(open_one(fresh))) == 11
    finally:
        back = rotate(f"{old_private},{new_b64}")  # and back, for the rest of the session
        platform.children["sms"].start()
    assert back.returncode == 0, back.stderr
    assert len(asyncio.run(open_one(_keys(platform, county)))) == 11


def test_given_a_manifest_of_hundreds_when_sealed_then_each_phone_gets_its_own_key(
        platform: Platform, county: County) -> None:
    """A large manifest is sealed off the event loop (its spare keys go with their month)."""
    from domain.validation import validate_batch
    from infra.db import create_pool
    from infra.pii import SEAL_INLINE, seal_events

    numbers = _numbers(SEAL_INLINE * 3, seed=4)
    now = county_time(county, datetime.now(UTC))
    raw = [envelope("parcel.registered", 2, now, "SF", "manifest", {
        "waybill": f"SF5{int(time.time()) % 10**6:06d}{i:04d}", "recipient_phone": phone,
        "destination_village": POINT, "weight_g": 300}) for i, phone in enumerate(numbers)]
    envs = validate_batch(raw, county=county, permitted_brands=frozenset({"SF"}), device_id="d",
                          recorded_at=datetime.now(UTC))

    async def go() -> tuple[list[Any], int]:
        assert platform.settings is not None
        # The API's role seals (and may not read a data key back); the owner counts them.
        pool = await create_pool(platform.settings.database_url_for("api"), max_size=1)
        try:
            async with pool.acquire() as conn, conn.transaction():
                sealed = await seal_events(conn, _keys(platform, county), envs)  # type: ignore[arg-type]
        finally:
            await pool.close()
        owner = await asyncpg.connect(platform.settings.database_url)
        try:
            keys = await owner.fetchval(
                "SELECT count(*) FROM pii_keys WHERE key_id = ANY($1::text[])",
                [e.payload.recipient_phone.key_id for e in sealed])
        finally:
            await owner.close()
        return sealed, keys

    sealed, keys = asyncio.run(go())
    assert [e.event_id for e in sealed] == [e.event_id for e in envs]  # type: ignore[union-attr]
    assert not any(e.unsealed for e in sealed) and keys == len(numbers)
    assert not any(phone in str(e.to_wire()) for e, phone in zip(sealed, numbers))
    assert [e.payload.recipient_phone.masked for e in sealed] == [
        f"{p[:3]}****{p[-4:]}" for p in numbers]


def test_given_a_journal_from_before_sealing_then_migrate_says_to_start_afresh(
        platform: Platform) -> None:
    """A database whose journal holds clear phones cannot be brought forward in place (the journal
    is never rewritten): migrate refuses it by name instead of leaving services crash-looping."""
    from uuid import uuid4

    from infra.db import holds_clear_phones

    async def go() -> tuple[bool, bool]:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url)
        try:
            before = await holds_clear_phones(conn)
            tx = conn.transaction()
            await tx.start()
            try:
                await conn.execute(
                    "INSERT INTO journal (event_id, type, schema_version, brand, partition_key,"
                    " occurred_at, recorded_at, device_id, body) VALUES ($1, 'parcel.registered',"
                    " 2, 'ZTO', 'ZT100', now(), now(), 'd', $2::jsonb)", str(uuid4()),
                    '{"payload": {"waybill": "ZT100", "recipient_phone": "13812345678"}}')
                return before, await holds_clear_phones(conn)
            finally:
                await tx.rollback()  # never seen by the relay: nothing commits
        finally:
            await conn.close()

    assert asyncio.run(go()) == (False, True)


def test_the_embedded_supervisor_shreds_months_past_retention_by_itself(platform: Platform) -> None:
    """`gongpei up` applies the county's retention without anyone running a command: a month
    older than it loses its keys; the current month keeps them."""
    from infra import pii

    old = "2001-01"  # long past any retention

    async def plant() -> None:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url)
        try:
            public, private = pii.generate_keypair()
            await conn.execute(
                "INSERT INTO pii_periods (period, public_key, private_key, master_key_id, hash_key)"
                " VALUES ($1, $2, $3, 'test', $4) ON CONFLICT DO NOTHING", old, public, private,
                b"k" * 32)
        finally:
            await conn.close()

    asyncio.run(plant())
    assert old in platform.apply_retention()
    [row] = db_fetch(platform, "SELECT private_key, hash_key, shredded_at FROM pii_periods"
                               " WHERE period = $1", old)
    assert row["private_key"] is None and row["hash_key"] is None and row["shredded_at"]
    recent = db_fetch(platform, "SELECT count(*) FROM pii_periods WHERE shredded_at IS NOT NULL"
                                " AND period >= to_char(now() - interval '150 days', 'YYYY-MM')")
    assert recent[0][0] == 0  # months within the retention (180 days in the demo) keep their keys
    assert platform.apply_retention() == []  # nothing more to do
