"""Trust between competing brands, tried as the competitor would: ZTO's own tokens against a parcel
YTO registered. Each attack was accepted before waybill ownership existed; now each is refused,
recorded as a conflict for the county manager, and changes nothing YTO, the villager or finance see."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from domain.county import County
from entrypoints.platform import Platform
from loadtest.traffic import county_time, envelope
from tests.conftest import bearer, db_fetch, issue, wait_for
from tests.integration.test_sms import (
    POINT,
    consent,
    gateway_sent,
    phone,
    register,
    stored,
    waybill,
)


def post(client: httpx.Client, token: str, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    r = client.post("/v1/scan-batches", json={"events": events}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()["results"]  # type: ignore[no-any-return]


def scan(wb: str, brand: str, at: datetime, action: str, node: str = "TWN-XILIU") -> dict[str, Any]:
    return envelope("parcel.scanned", 1, at, brand, "op-1",
                    {"waybill": wb, "action": action, "node_id": node})


def view(client: httpx.Client, token: str, wb: str) -> dict[str, Any] | None:
    r = client.get(f"/v1/parcels/{wb}", headers=bearer(token))
    return r.json() if r.status_code == 200 else None


def conflicts(client: httpx.Client, tokens: dict[str, str], wb: str) -> list[dict[str, Any]]:
    r = client.get("/v1/conflicts", params={"waybill": wb}, headers=bearer(tokens["manager"]))
    assert r.status_code == 200, r.text
    return r.json()["conflicts"]  # type: ignore[no-any-return]


def yto_parcel(client: httpx.Client, tokens: dict[str, str], county: County,
               at: datetime) -> tuple[str, str]:
    wb, mobile = waybill("YTO"), phone()
    assert post(client, tokens["YTO-system"],
                [register(county, wb, "YTO", mobile, at)])[0]["status"] == "accepted"
    wait_for(lambda: view(client, tokens["YTO-brand"], wb), 15, "YTO's parcel in tracking")
    return wb, mobile


def test_given_yto_registered_a_waybill_when_zto_registers_it_then_refused_and_nothing_moves(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    now = county_time(county, datetime.now(UTC))
    wb, mobile = yto_parcel(client, tokens, county, now)
    attacker = phone()
    before = len(gateway_sent(platform))

    result = post(client, tokens["ZTO-system"],
                  [register(county, wb, "ZTO", attacker, now + timedelta(minutes=1))])[0]

    assert result["status"] == "rejected"
    assert result["reason"] == "waybill_owned_by_other_brand"
    assert result["path"] == "$.events[0].brand" and "YTO" not in result["message"]
    # The parcel stays YTO's, whole: YTO sees it, ZTO does not, the villager's digits still work.
    post(client, tokens["scanner"], [stored(wb, "YTO", now + timedelta(minutes=2), None)])
    wait_for(lambda: (v := view(client, tokens["YTO-brand"], wb)) and v["status"] ==
             "stored_at_point", 15, "the stored scan in YTO's view")
    assert view(client, tokens["ZTO-brand"], wb) is None
    assert view(client, tokens["manager"], wb)["brand"] == "YTO"  # type: ignore[index]
    track = client.post("/v1/public/track", json={"waybill": wb, "phone_last4": attacker[-4:]})
    assert track.status_code == 404
    track = client.post("/v1/public/track", json={"waybill": wb, "phone_last4": mobile[-4:]})
    assert track.status_code == 200 and track.json()["brand"] == "YTO"
    # The arrival SMS with the pickup code goes to YTO's recipient, never to the attacker.
    wait_for(lambda: any(s["phone"] == mobile for s in gateway_sent(platform)[before:]), 60,
             "the arrival SMS to YTO's recipient")
    assert not any(s["phone"] == attacker for s in gateway_sent(platform))
    # Finance: every fee line of this parcel is YTO's.
    wait_for(lambda: db_fetch(platform, "SELECT 1 FROM ledger_lines WHERE unit = $1",
                              f"parcel:{wb}"), 30, "the parcel's fee lines")
    brands = {r["brand"] for r in db_fetch(platform, "SELECT brand FROM ledger_lines WHERE unit ="
                                                     " $1", f"parcel:{wb}")}
    assert brands <= {"YTO", None}
    # The county manager sees the attempt, with ZTO's phone masked.
    [c] = conflicts(client, tokens, wb)
    assert (c["kind"], c["owner_brand"], c["claimed_brand"]) == (
        "registration_by_other_brand", "YTO", "ZTO")
    assert attacker not in str(c) and c["body"]["payload"]["recipient_phone"].endswith(attacker[-4:])


def test_given_yto_owns_a_waybill_when_zto_scans_or_records_consent_into_it_then_refused(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    now = county_time(county, datetime.now(UTC))
    wb, _ = yto_parcel(client, tokens, county, now)
    attempts = [scan(wb, "ZTO", now + timedelta(minutes=1), "delivered", node="VIL-XILIU-02"),
                envelope("parcel.sorted", 1, now, "ZTO", "op-1",
                         {"waybill": wb, "node_id": "CTY-HAICHENG", "chute": "7"})]

    results = post(client, tokens["scanner-zto"], attempts)
    results += post(client, tokens["ZTO-system"], [consent(wb, "ZTO", now, False)])

    assert [r["reason"] for r in results] == ["waybill_owned_by_other_brand"] * 3
    ids = [a["event_id"] for a in attempts] + [results[2]["event_id"]]
    assert not db_fetch(platform, "SELECT 1 FROM journal WHERE event_id = ANY($1::text[])", ids)
    # YTO's own scan after the attempts lands; the view shows YTO's scans only, not misrouted.
    post(client, tokens["scanner"], [scan(wb, "YTO", now + timedelta(minutes=2), "arrived")])
    v = wait_for(lambda: (x := view(client, tokens["YTO-brand"], wb)) and len(x["timeline"]) == 2
                 and x, 15, "YTO's own scan")
    assert v["status"] == "in_transit" and not v["misrouted"] and v["consent_to_station"] is None
    assert {e["brand"] for e in v["timeline"]} == {"YTO"}
    kinds = sorted(c["kind"] for c in conflicts(client, tokens, wb))
    assert kinds == ["consent_by_other_brand", "scan_by_other_brand", "scan_by_other_brand"]


def test_consent_comes_only_from_the_owners_systems_or_the_village_point_serving_the_parcel(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    now = county_time(county, datetime.now(UTC))
    wb, _ = yto_parcel(client, tokens, county, now)
    elsewhere = issue(platform, "scanner", "keeper-elsewhere", ["YTO"], node_id="VIL-XILIU-02")
    keeper = issue(platform, "scanner", "keeper-wangjia", ["YTO", "ZTO"], node_id=POINT)

    # The county centre's scanner and another village's keeper may scan YTO parcels, not consent.
    for token in (tokens["scanner"], elsewhere):
        [r] = post(client, token, [consent(wb, "YTO", now, False)])
        assert r["reason"] == "consent_not_permitted", r
    [r] = post(client, keeper, [consent(wb, "YTO", now + timedelta(minutes=1), True)])
    assert r["status"] == "accepted"

    v = wait_for(lambda: (x := view(client, tokens["YTO-brand"], wb))
                 and x["consent_to_station"] is not None and x, 15, "the keeper's consent")
    assert v["consent_to_station"] is True
    assert v["consent_recorded_by"]["device_id"] == "keeper-wangjia"
    assert v["consent_recorded_by"]["channel"] == "app"


def test_given_a_scan_before_any_manifest_then_only_that_brands_manifest_is_taken(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    now = county_time(county, datetime.now(UTC))
    wb = waybill("ZTO")
    assert post(client, tokens["scanner"], [scan(wb, "ZTO", now, "arrived")])[0]["status"] == \
        "accepted"

    late_other = post(client, tokens["YTO-system"], [register(county, wb, "YTO", phone(), now)])
    own = post(client, tokens["ZTO-system"], [register(county, wb, "ZTO", phone(), now)])

    assert late_other[0]["reason"] == "waybill_owned_by_other_brand"
    assert own[0]["status"] == "accepted"
    [c] = conflicts(client, tokens, wb)
    assert c["kind"] == "manifest_after_other_brand_scans"
    v = wait_for(lambda: (x := view(client, tokens["ZTO-brand"], wb)) and len(x["timeline"]) == 2
                 and x, 15, "the manifest after the scan")
    assert v["brand"] == "ZTO" and v["destination_village"] == POINT


def test_the_owner_corrects_its_manifest_and_the_correction_is_in_the_timeline(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    now = county_time(county, datetime.now(UTC))
    wb, _ = yto_parcel(client, tokens, county, now)
    corrected = phone()

    [r] = post(client, tokens["YTO-system"],
               [register(county, wb, "YTO", corrected, now + timedelta(minutes=5))])

    assert r["status"] == "accepted"
    v = wait_for(lambda: (x := view(client, tokens["YTO-brand"], wb)) and len(x["timeline"]) == 2
                 and x, 15, "the corrected manifest")
    assert [e["type"] for e in v["timeline"]] == ["parcel.registered"] * 2
    assert v["phone_masked"] == corrected[:3] + "****" + corrected[-4:]


def test_an_event_id_sent_again_with_other_content_is_a_conflict_not_a_duplicate(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    from tests.integration.test_spine import metric

    now = county_time(county, datetime.now(UTC))
    wb, _ = yto_parcel(client, tokens, county, now)
    first = scan(wb, "YTO", now, "arrived")
    assert post(client, tokens["scanner"], [first])[0]["status"] == "accepted"
    conflicts_before = metric(client, "gongpei_ingest_conflicts_total", kind="event_id_reused")

    same = post(client, tokens["scanner"], [dict(first)])
    other = post(client, tokens["scanner"],
                 [{**first, "payload": {**first["payload"], "node_id": "VIL-XILIU-02"}}])

    assert same[0]["status"] == "duplicate"
    assert other[0]["status"] == "conflict" and other[0]["reason"] == "event_id_reused"
    [stored_node] = db_fetch(platform, "SELECT body->'payload'->>'node_id' AS n FROM journal"
                                       " WHERE event_id = $1", first["event_id"])
    assert stored_node["n"] == "TWN-XILIU"  # the first content stands
    [c] = conflicts(client, tokens, wb)
    assert c["kind"] == "event_id_reused" and c["body"]["payload"]["node_id"] == "VIL-XILIU-02"
    assert metric(client, "gongpei_ingest_conflicts_total", kind="event_id_reused") == \
        conflicts_before + 1
    # The manager closes it with a note; it leaves the open list.
    r = client.post(f"/v1/conflicts/{c['id']}/resolve", headers=bearer(tokens["manager"]),
                    json={"resolution": "the handheld's clock-reset bug; first scan is right"})
    assert r.status_code == 200
    assert conflicts(client, tokens, wb) == []
    assert client.get("/v1/conflicts", headers=bearer(tokens["YTO-brand"])).status_code == 403


def test_the_ownership_check_holds_under_concurrent_claims(
        platform: Platform, tokens: dict[str, str], county: County) -> None:
    """Eight brands race to register the same waybills: exactly one brand owns each."""
    now = county_time(county, datetime.now(UTC))
    wbs = [waybill("GP") for _ in range(20)]

    async def race() -> list[list[dict[str, Any]]]:
        async with httpx.AsyncClient(base_url=platform.api_url, timeout=30) as c:
            async def one(brand: str) -> list[dict[str, Any]]:
                events = [register(county, wb, brand, phone(), now) for wb in wbs]
                r = await c.post("/v1/scan-batches", json={"events": events},
                                 headers=bearer(tokens[f"{brand}-system"]))
                assert r.status_code == 200, r.text
                return r.json()["results"]  # type: ignore[no-any-return]

            return await asyncio.gather(*(one(b) for b in county.brands))

    answers = asyncio.run(race())
    for i, _ in enumerate(wbs):
        assert sum(a[i]["status"] == "accepted" for a in answers) == 1

    rows = db_fetch(platform, "SELECT partition_key, count(DISTINCT brand) AS brands,"
                              " count(*) AS n FROM journal WHERE partition_key = ANY($1::text[])"
                              " GROUP BY partition_key", wbs)
    assert len(rows) == len(wbs) and all(r["brands"] == 1 and r["n"] == 1 for r in rows)


def test_a_waybill_not_in_its_brands_format_is_refused_where_the_county_names_one(
        client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    now = county_time(county, datetime.now(UTC))
    assert county.waybill_patterns["YUNDA"].pattern == "43[0-9]{13}"
    good, bad = f"43{int(time.time() * 1000) % 10**13:013d}", "YD1234567890"

    results = post(client, tokens["YUNDA-system"], [register(county, good, "YUNDA", phone(), now),
                                                    register(county, bad, "YUNDA", phone(), now)])

    assert [r["status"] for r in results] == ["accepted", "rejected"]
    assert results[1]["reason"] == "waybill_pattern_mismatch"
    assert results[1]["path"] == "$.events[1].payload.waybill"
