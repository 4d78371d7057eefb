"""Arrival SMS on the embedded stack with the local gateways: a village wave of stored scans makes
exactly the expected SMS, receipts flip them to delivered, and duplicated uploads, replayed
receipts and a rebuild of the SMS state add none; a sender killed mid-wave sends none twice."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import asyncpg
import httpx

from domain.county import County
from entrypoints.platform import GATEWAYS, Platform
from loadtest.traffic import county_time, envelope, waybill_for
from tests.conftest import bearer, db_fetch, wait_for

T = TypeVar("T")
_waybills = random.Random(time.time_ns())
POINT = "VIL-XILIU-01"


def waybill(brand: str) -> str:
    """A fresh waybill in the brand's own format (the county may check it)."""
    return waybill_for(brand, _waybills)


def phone() -> str:
    return f"139{random.randrange(10**8):08d}"


def post(client: httpx.Client, token: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post("/v1/scan-batches", json={"events": events}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@asynccontextmanager
async def as_api(settings: Any) -> AsyncIterator[asyncpg.Connection]:
    """A connection as the API's role: it seals and journals uploads, which the SMS role may not."""
    from infra.db import _init_connection

    conn = await asyncpg.connect(settings.database_url_for("api"))
    try:
        await _init_connection(conn)
        yield conn
    finally:
        await conn.close()


def device_event(brand: str, event_type: str, payload: Any, at: datetime) -> Any:
    """An event as a brand's handheld would send it, occurred and recorded at `at`."""
    from uuid import uuid4

    from domain.envelope import Envelope

    return Envelope(event_id=str(uuid4()), type=event_type,
                    schema_version=2 if event_type == "parcel.registered" else 1,
                    occurred_at=at, recorded_at=at, device_id="pda-test", brand=brand,
                    operator_id="op-1", payload=payload)


def with_sms_stopped(platform: Platform, go: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run `go` with the platform's SMS service stopped: the test drives the planner and the
    sender itself, step by step."""
    platform.children["sms"].stop()
    try:
        return asyncio.run(go())
    finally:
        platform.children["sms"].start()


async def messages_of(conn: asyncpg.Connection, keys: Any,
                      waybills: list[str]) -> list[dict[str, Any]]:
    """The SMS naming these waybills, each with its phone opened as the sender opens it."""
    from projections import sms_outbox
    from projections.tracking_store import use_all_brands

    async with conn.transaction():
        await use_all_brands(conn)
        found = await conn.fetch(
            "SELECT m.sms_id, m.sealed_phone, m.state, m.failure_code FROM sms_messages m"
            " JOIN sms_message_parcels p USING (sms_id) WHERE p.waybill = ANY($1)", waybills)
        return [{**r, "phone": await keys.open(conn, *sms_outbox.open_sealed(r["sealed_phone"]))}
                for r in found]


async def journal_arrivals(settings: Any, keys: Any, brand: str,
                           parcels: list[tuple[str, str, str]], at: datetime) -> None:
    """Journal, sealed as the API does, a manifest and a stored scan at `at` for each
    (waybill, phone, village point): a wave of arrivals for the SMS planner, without the worker."""
    from domain.events import ParcelRegisteredUpload, ParcelScanned, ScanAction
    from infra.pii import seal_events
    from projections import journal

    async with as_api(settings) as api, api.transaction():
        await journal.append(api, await seal_events(api, keys, [
            device_event(brand, "parcel.registered", ParcelRegisteredUpload(
                waybill=wb, recipient_phone=mobile, destination_village=node, weight_g=500), at)
            for wb, mobile, node in parcels] + [
            device_event(brand, "parcel.scanned", ParcelScanned(
                waybill=wb, action=ScanAction.stored, node_id=node), at)
            for wb, _, node in parcels]))

def gateway_sent(platform: Platform) -> list[dict[str, Any]]:
    """Every SMS the gateways accepted, from their own logs."""
    out = []
    for name in GATEWAYS:
        path = platform.gateway_log(name)
        if path.exists():
            out += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    # In the order they were accepted, whichever gateway took them, so that a count taken before
    # an action slices off exactly what came after it.
    return sorted(out, key=lambda sent: sent["at"])


def sms_of(client: httpx.Client, token: str, wb: str) -> dict[str, Any]:
    r = client.get(f"/v1/parcels/{wb}/sms", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_delivered(platform: Platform, client: httpx.Client, token: str, wb: str, what: str) -> None:
    """Wait until the parcel's first SMS is delivered; on a timeout, say where it stands."""
    try:
        wait_for(lambda: (s := sms_of(client, token, wb)["sms"]) and s[0]["state"] == "delivered",
                 60, what)
    except AssertionError as e:
        sms = sms_of(client, token, wb)["sms"]
        attempts = db_fetch(platform, "SELECT sms_id, attempt, provider, outcome FROM sms_attempts"
                                      " WHERE sms_id = ANY($1::text[])", [m["sms_id"] for m in sms])
        ids = {m["sms_id"] for m in sms}
        sent = [{k: v for k, v in g.items() if k != "phone"}
                for g in gateway_sent(platform) if g["out_id"] in ids]
        raise AssertionError(f"{e}; the parcel's SMS: {sms}; attempts: {[tuple(a) for a in attempts]};"
                             f" the gateways took: {sent}") from e


def register(county: County, wb: str, brand: str, mobile: str, at: datetime) -> dict[str, Any]:
    return envelope("parcel.registered", 2, at, brand, "manifest", {
        "waybill": wb, "recipient_phone": mobile, "destination_village": POINT, "weight_g": 800})


def stored(wb: str, brand: str, at: datetime, code: str | None) -> dict[str, Any]:
    payload: dict[str, Any] = {"waybill": wb, "action": "stored", "node_id": POINT}
    if code:
        payload["pickup_code"] = code
    return envelope("parcel.scanned", 1, at, brand, "op-keeper", payload)


def consent(wb: str, brand: str, at: datetime, given: bool) -> dict[str, Any]:
    return envelope("consent.recorded", 1, at, brand, "manifest",
                    {"waybill": wb, "consent": given, "channel": "app"})


def test_a_village_wave_makes_one_sms_per_phone_and_receipts_flip_them_to_delivered(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    now = county_time(county, datetime.now(UTC))
    household, solo, no_consent, bad_number = phone(), phone(), phone(), phone()[:7] + "4444"
    plan = [  # (brand, phone, pickup code on the scan, consented)
        ("ZTO", household, "3-1-0101", True), ("ZTO", household, "3-1-0102", True),
        ("YTO", household, None, True),
        ("STO", solo, None, True),
        ("JT", no_consent, "3-2-0201", False),
        ("EMS", bad_number, "3-2-0202", True),
    ]
    parcels = [(waybill(b), b, p, c, ok) for b, p, c, ok in plan]
    for wb, brand, mobile, _, ok in parcels:
        post(client, tokens[f"{brand}-system"], [register(county, wb, brand, mobile, now),
                                                 consent(wb, brand, now, ok)])
    scans = [stored(wb, brand, now + timedelta(seconds=i), code)
             for i, (wb, brand, _, code, _) in enumerate(parcels)]
    before = len(gateway_sent(platform))
    assert post(client, tokens["scanner"], scans)["accepted"] == len(scans)
    assert post(client, tokens["scanner"], scans)["duplicate"] == len(scans)  # a re-upload
    # The keeper scans one parcel onto the shelf again: still one arrival.
    post(client, tokens["scanner"], [stored(parcels[0][0], "ZTO", now + timedelta(minutes=1),
                                            "3-1-0101")])

    manager = tokens["manager"]

    def settled() -> bool:
        return all(sms_of(client, manager, wb)["sms"]
                   and sms_of(client, manager, wb)["sms"][-1]["state"] in ("delivered", "failed")
                   for wb, *_ in parcels)

    wait_for(settled, 60, "every SMS of the wave delivered or failed")
    mine = {household, solo, no_consent, bad_number}
    sent = [s for s in gateway_sent(platform)[before:] if s["phone"] in mine]  # other tests' aside
    assert sorted(s["phone"] for s in sent) == sorted(mine)

    views = {wb: sms_of(client, manager, wb) for wb, *_ in parcels}
    household_sms = {views[wb]["sms"][0]["sms_id"] for wb, _, p, _, _ in parcels if p == household}
    assert len(household_sms) == 1  # three parcels, two brands, one SMS
    text = views[parcels[0][0]]["sms"][0]["text"]
    assert "3件包裹" in text and "3-1-0101" in text and "3-1-0102" in text
    assert views[parcels[0][0]]["sms"][0]["phone_masked"] == household[:3] + "****" + household[-4:]

    # A code the platform assigned is in the SMS and in the parcel's tracking view.
    yto = parcels[2][0]
    assigned = views[yto]["arrival"]["pickup_code"]
    assert assigned and assigned in text
    def tracked() -> dict[str, Any] | None:
        v = client.get(f"/v1/parcels/{yto}", headers=bearer(manager)).json()
        return v if v.get("pickup_code") else None

    view = wait_for(tracked, 30, "the assigned code in tracking")
    assert view["pickup_code"] == assigned

    assert "送货上门" in views[parcels[4][0]]["sms"][0]["text"]
    assert "送货上门" not in views[parcels[3][0]]["sms"][0]["text"]
    flagged = client.get("/v1/sms/no-consent", headers=bearer(manager)).json()["parcels"]
    assert parcels[4][0] in {p["waybill"] for p in flagged}

    assert views[parcels[0][0]]["sms"][0]["state"] == "delivered"
    failed = views[parcels[5][0]]["sms"][0]
    assert failed["state"] == "failed" and failed["failure_code"] == "MK:0001"
    call = client.get("/v1/sms/call-list", headers=bearer(manager),
                      params={"node_id": POINT}).json()["parcels"]
    assert parcels[5][0] in {p["waybill"] for p in call}

    # Nothing served shows a whole number.
    for body in (json.dumps(views), json.dumps(flagged), json.dumps(call)):
        for mobile in (household, solo, no_consent, bad_number):
            assert mobile not in body

    # A brand sees its own parcel's SMS, not another brand's.
    assert sms_of(client, tokens["ZTO-brand"], parcels[0][0])["sms"]
    assert sms_of(client, tokens["ZTO-brand"], parcels[3][0])["sms"] == []

    stats = client.get("/v1/sms/stats", headers=bearer(manager)).json()
    today = stats["days"][-1]
    assert today["delivered"] >= 3 and today["failed"] >= 1
    assert client.get("/v1/sms/stats", headers=bearer(tokens["ZTO-brand"])).status_code == 403


def test_a_provider_that_keeps_failing_is_left_for_the_failover_provider(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    from tests.integration.test_spine import metric

    now = county_time(county, datetime.now(UTC))
    wb, mobile = waybill("SF"), f"1990{random.randrange(10**7):07d}"
    post(client, tokens["SF-system"], [register(county, wb, "SF", mobile, now)])
    post(client, tokens["scanner"], [stored(wb, "SF", now, None)])
    # Three transient failures at the primary (backing off 2, 4, 8 s), then the failover.
    wait_delivered(platform, client, tokens["manager"], wb, "the SMS delivered through the failover")
    view = sms_of(client, tokens["manager"], wb)["sms"][0]
    assert view["provider"] == "tencent"
    sent = [s for s in gateway_sent(platform) if s["phone"] == mobile]
    assert [s["provider"] for s in sent] == ["tencent"]  # the primary accepted nothing
    attempts = db_fetch(platform, "SELECT provider, outcome FROM sms_attempts WHERE sms_id = $1"
                                  " ORDER BY attempt", view["sms_id"])
    assert [tuple(a) for a in attempts] == [("aliyun", "transient")] * 3 + [("tencent", "ok")]
    assert metric(client, "gongpei_sms_failures_total", provider="aliyun",
                  code="isp.SYSTEM_ERROR") >= 3
    assert metric(client, "gongpei_sms_arrival_to_submitted_seconds_count") >= 1
    assert "gongpei_sms_overdue_messages" in client.get("/metrics").text

    # Tencent's reports name only its SerialNo; one for an SMS we do not know is refused so that
    # Tencent pushes it again, and a repeat of a known one is a duplicate.
    url = platform.receipt_url.replace(platform.api_url, "").replace("/aliyun?", "/tencent?")
    report = {"report_status": "SUCCESS", "errmsg": "DELIVRD", "sid": sent[0]["biz_id"],
              "mobile": mobile, "nationcode": "86", "user_receive_time": "2026-11-25 10:00:00"}
    r = client.post(url, json=[report])
    assert r.status_code == 200 and r.json()["result"] == 0 and r.json()["repeated"] == 1
    r = client.post(url, json=[{**report, "sid": "2433:unknown"}])
    assert r.json()["result"] == 1 and r.json()["unknown"] == 1
    assert mobile not in r.text


def test_repeated_receipts_and_a_rebuild_add_no_sms(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    now = county_time(county, datetime.now(UTC))
    wb, mobile = waybill("ZTO"), phone()
    post(client, tokens["ZTO-system"], [register(county, wb, "ZTO", mobile, now)])
    post(client, tokens["scanner"], [stored(wb, "ZTO", now, None)])
    wait_delivered(platform, client, tokens["manager"], wb, "the SMS delivered")
    sms_id = sms_of(client, tokens["manager"], wb)["sms"][0]["sms_id"]
    biz = next(s["biz_id"] for s in gateway_sent(platform) if s["out_id"] == sms_id)

    # The provider pushes the same report again, and one for a message that is not ours.
    report = {"phone_number": mobile, "success": True, "err_code": "DELIVERED", "biz_id": biz,
              "out_id": sms_id, "report_time": "2026-11-25 10:00:00"}
    r = client.post(platform.receipt_url.replace(platform.api_url, ""),
                    json=[report, {**report, "out_id": "not-ours"}])
    assert r.status_code == 200 and r.json()["accepted"] == 0 and r.json()["unknown"] == 1
    assert client.post("/v1/sms/receipts/aliyun?key=wrong", json=[report]).status_code == 401
    bad = client.post(platform.receipt_url.replace(platform.api_url, ""), json=[{"success": "yes"}])
    assert bad.status_code == 422 and mobile not in bad.text

    before = len(gateway_sent(platform))
    rows_before = db_fetch(platform, "SELECT sms_id, state FROM sms_messages ORDER BY sms_id")
    from streams.rebuild import rebuild_sms

    assert platform.settings is not None
    # With the SMS service running: it waits while the state is rebuilt under it.
    asyncio.run(rebuild_sms(platform.settings, county))
    time.sleep(4)  # a digest window and more: time for any wrong resend to happen
    assert len(gateway_sent(platform)) == before
    rows_after = db_fetch(platform, "SELECT sms_id, state FROM sms_messages ORDER BY sms_id")
    assert [tuple(r) for r in rows_after] == [tuple(r) for r in rows_before]


def test_a_sender_killed_at_random_points_sends_every_sms_once(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    rng = random.Random(11)
    now = county_time(county, datetime.now(UTC))
    points = [v.id for v in county.villages[10:22]]
    parcels = []
    for i in range(90):  # households of two parcels, one phone each
        brand = rng.choice(county.brands)
        if i % 2 == 0:
            mobile, node = f"137{i // 2:04d}{rng.randrange(10**4):04d}", points[i % len(points)]
        parcels.append((waybill(brand), brand, mobile, node))
    for brand in {b for _, b, _, _ in parcels}:
        post(client, tokens[f"{brand}-system"], [
            envelope("parcel.registered", 2, now, brand, "manifest", {
                "waybill": wb, "recipient_phone": m, "destination_village": node, "weight_g": 500})
            for wb, b, m, node in parcels if b == brand])
    before = {s["out_id"] for s in gateway_sent(platform)}
    assert len(before) == len(gateway_sent(platform))
    scans = [envelope("parcel.scanned", 1, now, b, "op-keeper",
                      {"waybill": wb, "action": "stored", "node_id": node})
             for wb, b, _, node in parcels]
    for i in range(0, len(scans), 15):  # the wave comes in over a few seconds
        post(client, tokens["scanner"], scans[i:i + 15])
        time.sleep(0.3)
    # Kill while it sends: from its first new SMS on, at random moments, often mid-call.
    wait_for(lambda: len(gateway_sent(platform)) > len(before), 30, "the wave's first SMS")
    kills = 0
    while kills < 8:
        time.sleep(rng.uniform(0.05, 0.4))
        platform.restart_service("sms", kill=True)  # SIGKILL, then started again
        kills += 1
        time.sleep(1.2)  # let the new one start and get some way into the wave
    waybills = [wb for wb, *_ in parcels]

    def all_submitted() -> bool:
        rows = db_fetch(platform,
                        "SELECT count(DISTINCT p.waybill) FROM sms_message_parcels p JOIN sms_messages m"
                        " USING (sms_id) WHERE p.waybill = ANY($1) AND m.state IN"
                        " ('submitted', 'delivered')", waybills)
        return rows[0][0] == len(waybills)

    wait_for(all_submitted, 90, "every parcel of the wave in a submitted SMS")
    messages = db_fetch(platform,
                        "SELECT p.sms_id, p.waybill, p.pickup_code FROM sms_message_parcels p"
                        " WHERE p.waybill = ANY($1)", waybills)
    by_sms: dict[str, list[str]] = {}
    for r in messages:
        by_sms.setdefault(r["sms_id"], []).append(r["waybill"])
    sent = [s for s in gateway_sent(platform) if s["out_id"] not in before]
    ours = Counter(s["out_id"] for s in sent if s["out_id"] in by_sms)
    # At most one SMS per message, hence per (parcel, arrival); and none missing.
    assert set(ours.values()) == {1}, [k for k, v in ours.items() if v > 1]
    assert set(ours) == set(by_sms)
    assert sorted(wb for sms_id in ours for wb in by_sms[sms_id]) == sorted(waybills)
    # Each gateway SMS names the codes of the parcels it is for.
    codes = {r["waybill"]: r["pickup_code"] for r in messages}
    for s in sent:
        if s["out_id"] in by_sms and len(by_sms[s["out_id"]]) <= 3:
            assert all(codes[wb] in s["text"] for wb in by_sms[s["out_id"]])
    recovered = db_fetch(platform, "SELECT count(*) FROM journal WHERE type = 'sms.submitted'"
                                   " AND (body->'payload'->>'recovered')::boolean")[0][0]
    unsettled = db_fetch(platform, "SELECT count(*) FROM sms_attempts a JOIN sms_message_parcels p"
                                   " USING (sms_id) WHERE p.waybill = ANY($1)"
                                   " AND (a.outcome IS NULL OR a.outcome = 'not_sent')", waybills)[0][0]
    interrupted = recovered + unsettled
    print(f"{kills} kills; {interrupted} calls left unanswered by them; {recovered} SMS found at the provider"
          " after an unrecorded send, none sent twice")
    assert interrupted >= 1  # the kills did land between a call and its record


def test_a_parcel_that_reaches_the_journal_while_its_digest_is_being_sent_gets_its_own_sms(
        platform: Platform, county: County) -> None:
    """The SMS service decides a digest's SMS from the state it has; a parcel for the same phone
    and point already in the journal but not yet applied must not be swallowed by that digest.
    Driven step by step (the running SMS service stopped), with the clock passed in."""
    from uuid import uuid4

    from domain.envelope import Envelope
    from domain.events import ParcelRegisteredUpload, ParcelScanned, ScanAction
    from infra.db import create_pool
    from infra.pii import Keyring, seal_events
    from projections import journal, sms_planner
    from projections.tracking_store import use_all_brands

    settings = platform.settings
    assert settings is not None
    keys = Keyring.from_settings(settings, county.utc_offset_minutes)  # seals and, here, opens
    t0 = datetime.now(UTC)
    mobile, node = phone(), "VIL-XILIU-02"
    first, late = waybill("ZTO"), waybill("ZTO")

    def event(event_type: str, payload: Any, recorded: datetime) -> Envelope:
        return Envelope(event_id=str(uuid4()), type=event_type, schema_version=1 if "scanned"
                        in event_type else 2, occurred_at=recorded, recorded_at=recorded,
                        device_id="pda-test", brand="ZTO", operator_id="op-1", payload=payload)

    def stored_at(wb: str, recorded: datetime) -> Envelope:
        return event("parcel.scanned", ParcelScanned(waybill=wb, action=ScanAction.stored, node_id=node,
                                                     pickup_code=None), recorded)

    async def go() -> list[str]:
        pool = await create_pool(settings.database_url_for("sms"), max_size=2)
        try:
            async with pool.acquire() as conn:
                async with as_api(settings) as api, api.transaction():
                    await journal.append(api, await seal_events(api, keys, [
                        event("parcel.registered", ParcelRegisteredUpload(
                            waybill=wb, recipient_phone=mobile, destination_village=node,
                            weight_g=500), t0) for wb in (first, late)] + [stored_at(first, t0)]))
                await sms_planner.catch_up(conn, county, now=t0, keys=keys)
                # The late parcel is in the journal (learned of before the digest closed) …
                async with conn.transaction():
                    await journal.append(conn, [stored_at(late, t0 + timedelta(seconds=1))])
                # … but the digest's SMS is decided before it is applied.
                closes = t0 + timedelta(seconds=county.sms.digest_seconds + 5)
                assert await sms_planner.close_due(conn, county, closes) >= 1
                await sms_planner.catch_up(conn, county, now=closes, keys=keys)
                # Its own digest closes later and asks for its own SMS.
                later = closes + timedelta(seconds=county.sms.digest_seconds + 5)
                await sms_planner.close_due(conn, county, later)
                await sms_planner.catch_up(conn, county, now=later, keys=keys)
                async with conn.transaction():
                    await use_all_brands(conn)
                    return [r["sms_id"] for r in await conn.fetch(
                        "SELECT sms_id FROM sms_message_parcels WHERE waybill = ANY($1)"
                        " ORDER BY waybill", [first, late])]
        finally:
            await pool.close()

    ids = with_sms_stopped(platform, go)
    assert len(ids) == 2 and ids[0] != ids[1], ids  # each parcel in exactly one SMS


class RecordingProvider:
    """A provider that accepts everything and remembers it (the real gateways are exercised by
    the tests above; this one lets a test count calls exactly)."""

    lists_every_send = True

    def __init__(self, name: str = "aliyun") -> None:
        self.name, self.calls = name, []  # type: ignore[var-annotated]

    async def send(self, *, phone: str, sign_name: str, template_code: str,
                   params: dict[str, str], out_id: str) -> Any:
        from streams.sms_providers import SendResult

        self.calls.append(out_id)
        return SendResult("ok", "OK", f"m-{len(self.calls)}")

    async def find(self, *, phone: str, out_id: str, sent_on: Any) -> str | None:
        return f"m-{self.calls.index(out_id) + 1}" if out_id in self.calls else None


def test_the_sender_keeps_the_daily_budget_within_a_batch_and_skips_parcels_already_collected(
        platform: Platform, county: County) -> None:
    """Driven step by step with the running SMS service stopped: twelve SMS for one number at
    twelve points in one batch (budget 10), and one SMS whose parcel was picked up before it
    could go out (the digest had closed; the collection came in before the send)."""

    from domain.events import ParcelScanned, ScanAction
    from infra.db import create_pool
    from infra.pii import Keyring
    from projections import journal, sms_planner
    from streams.sms_service import Sender

    settings = platform.settings
    assert settings is not None
    keys = Keyring.from_settings(settings, county.utc_offset_minutes)  # seals and, here, opens
    t0 = datetime.now(UTC)
    busy, other = phone(), phone()
    points = [v.id for v in county.villages[40:52]]
    parcels = [(waybill("YTO"), busy, node) for node in points] + [(waybill("YTO"), other, points[0])]

    brand = "YTO"

    async def go() -> tuple[RecordingProvider, list[Any]]:
        pool = await create_pool(settings.database_url_for("sms"), max_size=2)
        provider = RecordingProvider()
        clock = t0
        sender = Sender(county, [provider], keys=keys, clock=lambda: clock)
        try:
            async with pool.acquire() as conn:
                await journal_arrivals(settings, keys, brand, parcels, t0)
                await sms_planner.catch_up(conn, county, now=t0, keys=keys)
                clock = t0 + timedelta(seconds=county.sms.digest_seconds + 5)
                assert await sms_planner.close_due(conn, county, clock) == len(parcels)
                await sms_planner.catch_up(conn, county, now=clock, keys=keys)
                # The other number's parcel is picked up before its SMS goes out.
                async with conn.transaction():
                    await journal.append(conn, [device_event(brand, "parcel.scanned", ParcelScanned(
                        waybill=parcels[-1][0], action=ScanAction.delivered, node_id=points[0]),
                        clock)])
                await sms_planner.catch_up(conn, county, now=clock, keys=keys)
            await sender.send_due(pool)
            async with pool.acquire() as conn:
                await sms_planner.catch_up(conn, county, now=clock, keys=keys)
                rows = await messages_of(conn, keys, [wb for wb, _, _ in parcels])
            await sender.send_due(pool)  # nothing more is sent on a second round
            return provider, rows
        finally:
            await pool.close()

    provider, rows = with_sms_stopped(platform, go)
    states = Counter((r["phone"] == busy, r["state"], r["failure_code"]) for r in rows)
    assert states == {(True, "submitted", None): 10, (True, "failed", "DAILY_BUDGET"): 2,
                      (False, "cancelled", "COLLECTED"): 1}, states
    ours = {r["sms_id"] for r in rows}
    # (Other tests' messages due meanwhile may go through this provider too: count ours.)
    assert len(provider.calls) == len(set(provider.calls))
    assert len([c for c in provider.calls if c in ours]) == 10


def test_sms_reads_refuse_bad_input_with_422_and_keep_a_brand_to_its_own(
        platform: Platform, client: httpx.Client, tokens: dict[str, str]) -> None:
    manager = bearer(tokens["manager"])
    for path, params in (("/v1/sms/stats", {"to": "0001-01-03"}),
                         ("/v1/sms/stats", {"from": "9999-12-30", "to": "9999-12-31"}),
                         ("/v1/sms/stats", {"from": "2026-11-20", "to": "2026-11-01"}),
                         ("/v1/sms/call-list", {"node_id": "VIL\x00"}),
                         ("/v1/sms/no-consent", {"node_id": "x" * 65})):
        r = client.get(path, params=params, headers=manager)
        assert r.status_code == 422, (path, params, r.status_code, r.text)
        assert r.json()["error"]["code"] in ("invalid_request", "invalid_range")
    url = platform.receipt_url.replace(platform.api_url, "")
    for body in ([{"success": True, "biz_id": "b\x00", "out_id": "o"}], {"not": "a list"},
                 [{"success": True, "biz_id": "b", "report_time": "0001-01-01 00:00:00"}]):
        r = client.post(url, json=body)
        assert r.status_code in (200, 422), (body, r.status_code, r.text)
    r = client.post(url.replace("/aliyun?", "/tencent?"),
                    json=[{"report_status": "MAYBE", "sid": "s"}])
    assert r.status_code == 422

    # A brand's summary counts only its parcels: every row it lists is its own, and its
    # no-consent count is its share of the manager's list.
    everyone = client.get("/v1/sms/no-consent", headers=manager).json()["parcels"]
    for brand in ("ZTO", "JT"):
        mine = client.get("/v1/sms/summary", headers=bearer(tokens[f"{brand}-brand"])).json()
        assert {p["brand"] for p in mine["call_list"]} <= {brand}
        assert mine["no_consent_total"] == len({p["waybill"] for p in everyone
                                                 if p["brand"] == brand})


def test_a_wave_sent_concurrently_gives_each_household_one_sms_per_point(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    """The running service sends a wave with many calls in progress (gateway calls take 20–150
    ms): each household gets one SMS per point, calls overlap, a number's calls never do."""
    rng = random.Random(time.time_ns())
    now = county_time(county, datetime.now(UTC))
    points = [v.id for v in county.villages[60:72]]
    households = [f"135{rng.randrange(10**8):08d}" for _ in range(40)]
    parcels = []  # (waybill, brand, phone, point)
    for n, mobile in enumerate(households):
        # Most get one to three parcels at one point; every fifth has parcels at two points.
        for node in ([points[n % 12], points[(n + 5) % 12]] if n % 5 == 0 else [points[n % 12]]):
            for _ in range(rng.randint(1, 3)):
                brand = rng.choice(county.brands)
                parcels.append((waybill(brand), brand, mobile, node))
    for brand in {b for _, b, _, _ in parcels}:
        post(client, tokens[f"{brand}-system"], [
            envelope("parcel.registered", 2, now, brand, "manifest", {
                "waybill": wb, "recipient_phone": m, "destination_village": node, "weight_g": 500})
            for wb, b, m, node in parcels if b == brand])
    for i in range(0, len(parcels), 200):
        post(client, tokens["scanner"], [
            envelope("parcel.scanned", 1, now, b, "op-keeper",
                     {"waybill": wb, "action": "stored", "node_id": node})
            for wb, b, _, node in parcels[i:i + 200]])
    waybills = [wb for wb, *_ in parcels]

    def all_submitted() -> bool:
        rows = db_fetch(platform,
                        "SELECT count(DISTINCT p.waybill) FROM sms_message_parcels p JOIN sms_messages m"
                        " USING (sms_id) WHERE p.waybill = ANY($1) AND m.state IN"
                        " ('submitted', 'delivered')", waybills)
        return rows[0][0] == len(waybills)

    wait_for(all_submitted, 90, "every parcel of the wave in a submitted SMS")
    mine = set(households)
    sent = [s for s in gateway_sent(platform) if s["phone"] in mine]
    # One SMS per household and point, none twice.
    expected = {(m, node) for _, _, m, node in parcels}
    assert len(sent) == len(expected)
    assert len({s["out_id"] for s in sent}) == len(sent)
    by_phone = Counter(s["phone"] for s in sent)
    assert by_phone == Counter(m for m, _ in expected)
    # Each call from its start (committed before it) to the gateway accepting it.
    started = {r["sms_id"]: r["started_at"] for r in db_fetch(
        platform, "SELECT sms_id, started_at FROM sms_attempts WHERE sms_id = ANY($1)"
                  " AND outcome = 'ok'", [s["out_id"] for s in sent])}
    spans = sorted((started[s["out_id"]], datetime.fromisoformat(s["at"]), s["phone"])
                   for s in sent)
    overlapping = [(a, b) for i, a in enumerate(spans) for b in spans[i + 1:] if b[0] < a[1]]
    assert overlapping, "the wave's calls went one after the other"
    assert not [(a, b) for a, b in overlapping if a[2] == b[2]], "one number, two calls at once"


def test_the_daily_budget_holds_when_a_numbers_messages_are_sent_concurrently(
        platform: Platform, county: County) -> None:
    """Driven step by step with the running SMS service stopped: fourteen SMS for one number at
    fourteen points and twenty for other numbers, due together, sent sixteen at a time through a
    provider that takes 50 ms a call: exactly ten for the busy number (the budget), every other
    one once."""

    from infra.db import create_pool
    from infra.pii import Keyring
    from projections import sms_planner
    from streams.sms_service import Sender

    settings = platform.settings
    assert settings is not None
    keys = Keyring.from_settings(settings, county.utc_offset_minutes)
    t0 = datetime.now(UTC)
    busy = phone()
    points = [v.id for v in county.villages[80:94]]
    parcels = [(waybill("STO"), busy, node) for node in points]
    parcels += [(waybill("STO"), phone(), points[i % len(points)]) for i in range(20)]

    class SlowProvider(RecordingProvider):
        in_progress = most = 0

        async def send(self, **kw: Any) -> Any:
            SlowProvider.in_progress += 1
            SlowProvider.most = max(SlowProvider.most, SlowProvider.in_progress)
            try:
                await asyncio.sleep(0.05)
                return await super().send(**kw)
            finally:
                SlowProvider.in_progress -= 1

    brand = "STO"

    async def go() -> tuple[SlowProvider, list[Any]]:
        pool = await create_pool(settings.database_url_for("sms"), max_size=6)
        provider = SlowProvider()
        clock = t0 + timedelta(seconds=county.sms.digest_seconds + 5)
        sender = Sender(county, [provider], keys=keys, clock=lambda: clock, concurrency=16,
                        qps={"aliyun": 500})
        try:
            async with pool.acquire() as conn:
                await journal_arrivals(settings, keys, brand, parcels, t0)
                await sms_planner.catch_up(conn, county, now=t0, keys=keys)
                assert await sms_planner.close_due(conn, county, clock) >= len(parcels)
                await sms_planner.catch_up(conn, county, now=clock, keys=keys)
            while await sender.send_due(pool):
                pass
            async with pool.acquire() as conn:
                await sms_planner.catch_up(conn, county, now=clock, keys=keys)
                rows = await messages_of(conn, keys, [wb for wb, _, _ in parcels])
            return provider, rows
        finally:
            await pool.close()

    provider, rows = with_sms_stopped(platform, go)
    states = Counter((r["phone"] == busy, r["state"], r["failure_code"]) for r in rows)
    assert states == {(True, "submitted", None): 10, (True, "failed", "DAILY_BUDGET"): 4,
                      (False, "submitted", None): 20}, states
    ours = {r["sms_id"] for r in rows}
    assert len(provider.calls) == len(set(provider.calls))
    assert len([c for c in provider.calls if c in ours]) == 30
    assert SlowProvider.most > 1  # the calls did overlap


def test_a_planner_restarted_late_requests_the_sms_an_on_time_planner_would(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    """docs/sms.md: a digest closing at T names the parcels recorded before T and not collected
    (recorded) before T, however late the planner reads them. With the SMS service stopped, four
    households' parcels are stored and some picked up, before and after their digests close;
    started again seconds later, it applies them all in one page, and must still request exactly
    what the rule, computed here from the journal's own `recorded_at`, says."""
    def collected(wb: str, brand: str, at: datetime) -> dict[str, Any]:
        return envelope("parcel.scanned", 1, at, brand, "op-keeper",
                        {"waybill": wb, "action": "delivered", "node_id": POINT})

    window = timedelta(seconds=county.sms.digest_seconds)
    homes = {h: phone() for h in ("after", "before", "all", "two")}
    parcels = {name: (waybill("ZTO"), homes[name.split("-")[0]]) for name in (
        "after", "before-kept", "before-taken", "all", "two-first", "two-late")}
    wb = {name: p[0] for name, p in parcels.items()}
    sent: list[dict[str, Any]] = []

    def upload(token: str, events: list[dict[str, Any]]) -> None:
        sent.extend(events)
        post(client, tokens[token], events)

    platform.children["sms"].stop()
    try:
        now = county_time(county, datetime.now(UTC))
        upload("ZTO-system", [register(county, w, "ZTO", m, now) for w, m in parcels.values()])
        upload("scanner", [stored(wb[n], "ZTO", now, None) for n in (
            "after", "before-kept", "before-taken", "all", "two-first")])
        # Picked up within the digest's window: those leave it (an SMS naming nothing is none).
        upload("scanner", [collected(wb[n], "ZTO", now) for n in ("before-taken", "all")])
        # After the windows closed: picked up (still announced: the SMS was due first), and a
        # second parcel for a household (a digest of its own).
        time.sleep(window.total_seconds() + 1.5)
        later = county_time(county, datetime.now(UTC))
        upload("scanner", [collected(wb["after"], "ZTO", later),
                           stored(wb["two-late"], "ZTO", later, None)])
        time.sleep(window.total_seconds() + 1.5)  # the planner is late by a window and more
    finally:
        platform.children["sms"].start()

    # The rule, from what the journal recorded and when.
    rows = db_fetch(platform, "SELECT event_id, recorded_at FROM journal"
                              " WHERE event_id = ANY($1::text[])", [e["event_id"] for e in sent])
    recorded = {r["event_id"]: r["recorded_at"] for r in rows}
    events = sorted(((recorded[e["event_id"]], e) for e in sent), key=lambda x: x[0])
    household = {w: m for w, m in parcels.values()}
    known_reg = {e["payload"]["waybill"]: r for r, e in events if e["type"] == "parcel.registered"}
    digests: dict[str, tuple[datetime, set[str]]] = {}
    expected: list[frozenset[str]] = []
    for r, e in events:
        for m, (closes, members) in list(digests.items()):
            if closes <= r:
                del digests[m]
                expected.append(frozenset(members))
        p = e["payload"]
        if e["type"] != "parcel.scanned":
            continue
        m = household[p["waybill"]]
        if p["action"] == "stored":
            known = max(r, known_reg[p["waybill"]])
            if m in digests:
                digests[m][1].add(p["waybill"])
            else:
                digests[m] = (known + window, {p["waybill"]})
        elif m in digests and p["waybill"] in digests[m][1]:
            digests[m][1].discard(p["waybill"])
            if not digests[m][1]:
                del digests[m]
    expected += [frozenset(members) for _, members in digests.values()]
    # what the scenario is about: a parcel announced although picked up by the time the planner
    # read it, one taken out of its SMS, a household with none, one with two
    assert sorted(map(sorted, expected)) == sorted([[wb["after"]], [wb["before-kept"]],
                                                    [wb["two-first"]], [wb["two-late"]]])

    manager = tokens["manager"]

    def requested() -> dict[str, set[str]] | None:
        named: dict[str, set[str]] = {}
        for w in wb.values():
            for m in sms_of(client, manager, w)["sms"]:
                if m["kind"] == "arrival":
                    named.setdefault(m["sms_id"], set()).add(w)
        return named if len(named) >= len(expected) else None

    got = wait_for(requested, 60, "the late planner's SMS requested")
    time.sleep(1)  # nothing more comes after (every digest here has closed and been decided)
    got = requested() or got
    assert sorted(map(sorted, got.values())) == sorted(map(sorted, expected))

    # A rebuild replays the same journal far behind wall time: it arrives at the same state.
    from streams.rebuild import rebuild_sms

    assert platform.settings is not None
    report = asyncio.run(rebuild_sms(platform.settings, county))
    assert report.differing == 0, report.tables
    assert requested() == got
