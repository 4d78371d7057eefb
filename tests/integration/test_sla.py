"""On-time delivery on the embedded stack: a scripted day of ~2,700 events through the ingest API
gives exactly the figures computed by hand in tests/fixtures/sla/day.py."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import bearer, wait_for
from tests.fixtures.sla import day as script
from tests.integration.test_spine import _post


def ingest_day(client: httpx.Client, tokens: dict[str, str]) -> None:
    regs, scans = script.day()
    for brand, events in regs.items():
        for i in range(0, len(events), 500):
            assert _post(client, tokens[f"{brand}-system"], events[i:i + 500])["rejected"] == 0
    for i in range(0, len(scans), 500):
        assert _post(client, tokens["scanner"], scans[i:i + 500])["rejected"] == 0


def rates(client: httpx.Client, token: str, **params: str) -> dict[tuple[str, str], tuple[int, int, int]]:
    r = client.get("/v1/sla/rates", headers=bearer(token), params={
        "from": script.DAY, "to": script.NEXT_DAY, "now": script.NOW, "route": "R-XILIU", **params})
    assert r.status_code == 200, r.text
    return {(x["day"], x["leg"]): (x["on_time"], x["late"], x["rate_permille"]) for x in r.json()["rates"]}


@pytest.fixture(scope="module")
def scripted_day(client: httpx.Client, tokens: dict[str, str]) -> None:
    ingest_day(client, tokens)
    wait_for(lambda: rates(client, tokens["manager"]) == script.EXPECTED_RATES, 30.0,
             "the SLA read models to hold the scripted day")


def test_given_the_scripted_day_then_the_on_time_rates_are_the_hand_computed_ones(
        scripted_day: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    assert rates(client, tokens["manager"]) == script.EXPECTED_RATES


def test_rates_slice_by_brand_and_a_brand_sees_only_its_own(
        scripted_day: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    for brand, expected in script.EXPECTED_BRAND_C2T.items():
        got = rates(client, tokens["manager"], brand=brand)
        assert got[(script.DAY, "county_to_township")] == expected
    own = rates(client, tokens["SF-brand"])  # no brand asked: its own slice
    assert own[(script.DAY, "county_to_township")] == script.EXPECTED_BRAND_C2T["SF"]
    r = client.get("/v1/sla/rates", headers=bearer(tokens["SF-brand"]), params={"brand": "ZTO"})
    assert r.status_code == 404


def test_breaches_name_their_causes_and_the_at_risk_queue_is_ordered_by_time_left(
        scripted_day: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    b = client.get("/v1/sla/breaches", headers=bearer(tokens["manager"]), params={
        "day": script.DAY, "now": script.NOW, "route": "R-XILIU", "leg": "county_to_township"}).json()
    assert b["causes"] == script.EXPECTED_CAUSES
    assert len(b["breaches"]) == sum(script.EXPECTED_CAUSES.values())
    assert {x["minutes_over"] for x in b["breaches"]} == {60, 30}
    risk = client.get("/v1/sla/at-risk", headers=bearer(tokens["manager"]),
                      params={"now": script.NOW, "route": "R-XILIU"}).json()["at_risk"]
    assert len(risk) == script.EXPECTED_AT_RISK
    assert {(x["leg"], x["minutes_left"]) for x in risk} == {("township_to_village", 60)}


def test_run_punctuality_and_village_coverage(scripted_day: None, client: httpx.Client,
                                              tokens: dict[str, str]) -> None:
    runs = client.get("/v1/sla/runs", headers=bearer(tokens["manager"]),
                      params={"day": script.DAY}).json()
    assert (runs["moves"], runs["punctual"], runs["rate_permille"]) == script.EXPECTED_RUNS
    assert runs["coverage"]["on_timetable"] == runs["coverage"]["villages"] == 153


def test_the_dashboard_answer_carries_the_same_figures(
        scripted_day: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    d: dict[str, Any] = client.get("/v1/sla/dashboard", headers=bearer(tokens["manager"]), params={
        "day": script.DAY, "now": script.NOW, "route": "R-XILIU"}).json()
    legs = {x["id"]: (x["on_time"], x["late"], x["rate_permille"]) for x in d["legs"]}
    assert legs["county_to_township"] == script.EXPECTED_RATES[(script.DAY, "county_to_township")]
    assert {c["cause"]: c["count"] for c in d["causes"]} == script.EXPECTED_CAUSES


def test_sla_gauges_are_exported_for_alert_rules(
        scripted_day: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    # The worker refreshes them every 15 s against its own clock; the scripted day is in the past,
    # so the at-risk gauge exists per leg (zero now) once the first refresh has run.
    from prometheus_client.parser import text_string_to_metric_families

    from tests.integration.test_spine import metric

    def legs_exported() -> set[str]:
        return {s.labels["leg"] for fam in text_string_to_metric_families(client.get("/metrics").text)
                for s in fam.samples if s.name == "gongpei_sla_at_risk_legs"}

    wait_for(lambda: legs_exported() == set(script.LEGS), 20.0, "an at-risk gauge per leg")

    # Each gauge is the at-risk queue's length for its leg at the worker's last refresh: the
    # scripted day is long past due, but other tests' traffic (the demo's) runs on today's clock.
    def agrees() -> bool:
        r = client.get("/v1/sla/at-risk", headers=bearer(tokens["manager"]))
        assert r.status_code == 200, r.text
        queued = [item["leg"] for item in r.json()["at_risk"]]
        return all(metric(client, "gongpei_sla_at_risk_legs", leg=leg) == queued.count(leg)
                   for leg in script.LEGS)

    wait_for(agrees, 40.0, "the at-risk gauges to agree with the at-risk queue")
