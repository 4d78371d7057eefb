"""The spine on real parts: scans in through the API, journal, relay, Kafka, worker, tracking out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from domain.county import County
from entrypoints.platform import Platform
from loadtest.traffic import CountyTraffic, county_time
from tests.conftest import bearer, db_fetch, wait_for


def _post(client: httpx.Client, token: str, events: list[dict[str, Any]]) -> dict[str, Any]:
    r = client.post("/v1/scan-batches", json={"events": events}, headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()


def _parcel(client: httpx.Client, token: str, waybill: str) -> dict[str, Any] | None:
    r = client.get(f"/v1/parcels/{waybill}", headers=bearer(token))
    return r.json() if r.status_code == 200 else None


def _wait_timeline(client: httpx.Client, token: str, waybill: str, entries: int,
                   timeout: float) -> dict[str, Any]:
    def ready() -> dict[str, Any] | None:
        view = _parcel(client, token, waybill)
        return view if view and len(view["timeline"]) == entries else None

    return wait_for(ready, timeout, f"{waybill} with {entries} timeline entries")  # type: ignore[no-any-return]


def metric(client: httpx.Client, name: str, **labels: str) -> float:
    """The summed value of one sample name on /metrics (0 when absent)."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(s.value for fam in text_string_to_metric_families(client.get("/metrics").text)
               for s in fam.samples
               if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def _lifecycle(county: County, seed: int, parcels: int, steps: int):
    """Registrations per brand and the first `steps` scans of each parcel, an hour apart."""
    traffic = CountyTraffic(county, seed=seed)
    t0 = county_time(county, datetime(2026, 11, 11, 1, 0, tzinfo=UTC))
    regs: dict[str, list[dict[str, Any]]] = {}
    for _ in range(parcels):
        parcel, event = traffic.register(t0)
        regs.setdefault(parcel.brand, []).append(event)
    scans = [e for step in range(steps) for p in traffic.parcels
             if (e := traffic.advance(p, t0 + timedelta(hours=step + 1)))]
    return traffic, regs, scans


def _ingest(client: httpx.Client, tokens: dict[str, str], regs, scans) -> None:
    for brand, events in regs.items():
        assert _post(client, tokens[f"{brand}-system"], events)["accepted"] == len(events)
    assert _post(client, tokens["scanner"], scans)["accepted"] == len(scans)


def test_given_a_batch_when_posted_then_timeline_is_readable_within_5_seconds(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=11, parcels=5, steps=7)
    _ingest(client, tokens, regs, scans)
    parcel = traffic.parcels[0]
    view = wait_for(lambda: (v := _parcel(client, tokens["manager"], parcel.waybill))
                    and len(v["timeline"]) == 8 and v, 5.0, "the full timeline")
    assert view["status"] == "delivered"
    assert [e.get("action") for e in view["timeline"]][1:] == [
        "received", "sorted", "loaded", "arrived", "out_for_delivery", "stored", "delivered"]
    assert view["phone_masked"] == parcel.phone[:3] + "****" + parcel.phone[-4:]
    assert parcel.phone not in str(view)


def test_given_an_accepted_batch_when_reposted_then_all_duplicate_and_nothing_changes(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=12, parcels=3, steps=4)
    _ingest(client, tokens, regs, scans)
    waybill = traffic.parcels[0].waybill
    before = wait_for(lambda: (v := _parcel(client, tokens["manager"], waybill))
                      and len(v["timeline"]) == 5 and v, 5.0, "the timeline")
    # Only this test's own scans are counted: the SMS planner journals its own events for parcels
    # that reached a village, at its own pace, and those are not what a re-post could add.
    waybills = [p.waybill for p in traffic.parcels]
    scans_in_journal = ("SELECT count(*) AS n FROM journal"
                        " WHERE partition_key = ANY($1) AND type NOT LIKE 'sms.%'")
    journal_before = db_fetch(platform, scans_in_journal, waybills)[0]["n"]

    again = _post(client, tokens["scanner"], scans)

    assert again["duplicate"] == len(scans) and again["accepted"] == 0
    assert {r["status"] for r in again["results"]} == {"duplicate"}
    assert db_fetch(platform, scans_in_journal, waybills)[0]["n"] == journal_before
    assert _parcel(client, tokens["manager"], waybill) == before


def test_given_the_worker_is_down_when_a_batch_is_acknowledged_then_it_is_in_the_journal_and_projected_after_restart(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    platform.children["worker"].stop()
    try:
        traffic, regs, scans = _lifecycle(county, seed=13, parcels=4, steps=3)
        _ingest(client, tokens, regs, scans)
        ids = [e["event_id"] for e in scans]
        stored = db_fetch(platform, "SELECT count(*) AS n FROM journal WHERE event_id = ANY($1)", ids)
        assert stored[0]["n"] == len(ids)
    finally:
        platform.restart_service("worker")
        platform.wait_ready(60)
    for p in traffic.parcels:
        _wait_timeline(client, tokens["manager"], p.waybill, 4, 15.0)


def test_given_the_broker_crashes_when_it_restarts_empty_then_the_projection_still_ends_complete(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=14, parcels=6, steps=7)
    half = len(scans) // 2
    # Given events the relay published to Kafka while no worker was there to consume them
    platform.children["worker"].stop()
    try:
        _ingest(client, tokens, regs, scans[:half])
        last = db_fetch(platform, "SELECT max(seq) AS s FROM journal")[0]["s"]
        wait_for(lambda: db_fetch(platform, "SELECT seq FROM relay_cursor")[0]["seq"] >= last,
                 10.0, "the relay to publish the first half")
        # When the in-memory broker crashes and comes back empty, and more scans arrive
        platform.restart_broker()
        _post(client, tokens["scanner"], scans[half:])
    finally:
        platform.restart_service("worker")
        platform.wait_ready(60)
    # Then the relay re-publishes from the journal and every parcel ends complete
    for p in traffic.parcels:
        _wait_timeline(client, tokens["manager"], p.waybill, 8, 60.0)
    assert metric(client, "gongpei_relay_broker_data_loss_total") >= 1


def test_given_two_brands_when_one_reads_the_others_parcel_then_404(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=15, parcels=16, steps=1)
    _ingest(client, tokens, regs, scans)
    a = traffic.parcels[0]
    b = next(p for p in traffic.parcels if p.brand != a.brand)
    wait_for(lambda: _parcel(client, tokens["manager"], b.waybill), 5.0, "parcel b")
    assert _parcel(client, tokens[f"{a.brand}-brand"], a.waybill) is not None
    r = client.get(f"/v1/parcels/{b.waybill}", headers=bearer(tokens[f"{a.brand}-brand"]))
    assert r.status_code == 404
    listed = client.get("/v1/parcels?limit=500", headers=bearer(tokens[f"{a.brand}-brand"])).json()
    assert {p["brand"] for p in listed["parcels"]} == {a.brand}


def test_given_the_public_lookup_when_digits_match_then_a_masked_view_else_404(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=16, parcels=1, steps=6)
    _ingest(client, tokens, regs, scans)
    p = traffic.parcels[0]
    wait_for(lambda: (v := _parcel(client, tokens["manager"], p.waybill))
             and v["status"] == "stored_at_point", 5.0, "stored")
    ok = client.post("/v1/public/track", json={"waybill": p.waybill, "phone_last4": p.phone[-4:]})
    assert ok.status_code == 200
    body = ok.json()
    assert body["phone_masked"].endswith(p.phone[-4:]) and p.phone not in ok.text
    assert body["pickup_code"] and "operator_id" not in ok.text
    wrong = f"{(int(p.phone[-4:]) + 1) % 10000:04d}"
    bad = client.post("/v1/public/track", json={"waybill": p.waybill, "phone_last4": wrong})
    assert bad.status_code == 404
    # Guessing is capped: after five wrong tries on a waybill, even the right digits wait (from
    # this address; test_public_lookup shows the recipient's own address still gets in)
    for _ in range(4):
        client.post("/v1/public/track", json={"waybill": p.waybill, "phone_last4": wrong})
    capped = client.post("/v1/public/track", json={"waybill": p.waybill, "phone_last4": p.phone[-4:]})
    assert capped.status_code == 429 and capped.json()["error"]["code"] == "too_many_attempts"


def test_given_a_rebuild_from_the_journal_then_the_read_model_is_identical(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    import asyncio

    from streams.rebuild import rebuild_tracking

    query = "SELECT waybill, brand, status, public_code, misrouted, phone_masked, view FROM parcels ORDER BY waybill"
    # Tracking keeps parcel and consent events (the families of the parcel-events topic).
    wait_for(lambda: db_fetch(platform, "SELECT count(*) = (SELECT count(*) FROM journal WHERE type"
                                        " LIKE 'parcel.%' OR type LIKE 'consent.%') AS done"
                                        " FROM tracking_events")[0]["done"],
             30.0, "the worker to catch up")
    before = [dict(r) for r in db_fetch(platform, query)]
    platform.children["worker"].stop()
    try:
        assert platform.settings is not None
        asyncio.run(rebuild_tracking(platform.settings, county))
        after = [dict(r) for r in db_fetch(platform, query)]
    finally:
        platform.restart_service("worker")
        platform.wait_ready(60)
    assert before and after == before


def test_metrics_expose_ingest_results_lag_and_apply_latency(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    _, regs, scans = _lifecycle(county, seed=17, parcels=1, steps=1)
    bad = {**scans[0], "event_id": "00000000-0000-7000-8000-0000000000aa",
           "payload": {**scans[0]["payload"], "node_id": "TWN-NOWHERE"}}
    _ingest(client, tokens, regs, scans)
    _post(client, tokens["scanner"], [bad])
    assert metric(client, "gongpei_ingest_events_total", result="accepted") > 0
    assert metric(client, "gongpei_ingest_events_total", result="rejected",
                  reason="unknown_node") > 0
    # The worker reports its apply and its lag once it has applied a batch of these (it may be
    # rejoining its group after an earlier test's restart).
    families = ("gongpei_relay_lag_events", "gongpei_consumer_lag_messages")
    wait_for(lambda: metric(client, "gongpei_projection_apply_seconds_count", projection="tracking")
             > 0 and all(f in client.get("/metrics").text for f in families), 30.0,
             "the worker's apply and lag in /metrics")
