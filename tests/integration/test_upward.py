"""Upward produce (农产品上行) through the real API: hand-ins, cold scans and air loads with known
outcomes give exactly the expected legs, causes, dashboard panel and report figures.

3 September 2026 in 海城市 (no other test writes it; the report's month figures are read as a
difference, so other September traffic cannot disturb them):
  P1 (ZTO, plum 5.2 kg) handed in at 西柳王家村 10:00; received at the centre 13:00, cold_in
      13:10, out 15:00–15:30 and 16:30–17:00 (air_loaded): every clock on time.
  P2 (ZTO, plum 0.8 kg) handed in at 西柳李家村 10:00; received 16:50, cold_in 17:00 (an hour past
      its 6 h), out 17:30–20:00 (150 min of 120), air_loaded only on the 4th at 09:00 (cut-off
      18:00 on the 3rd): late_to_cold_store, cold_chain_broken, missed_air_cutoff.
  P3 (SF, produce 12 kg, from SF's own system) handed in at 腾鳌王家村 13:00; received at the
      centre on the 4th at 08:00 (14:00 leg late, cause unknown), cold_in 08:10 (12 h: late by
      430 min); never out of the cold: chain on time. Produce does not fly: no air clock.
  P4 (SF, not perishable, 1 kg) handed in at 腾鳌李家村 09:00, received 12:00: the 14:00 leg only."""

from __future__ import annotations

import io
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from entrypoints.platform import Platform
from loadtest.traffic import envelope, waybill_for
from tests.conftest import bearer, db_fetch, wait_for
from tests.integration.test_sms import post

TZ = timezone(timedelta(hours=8))
CENTRE = "CTY-HAICHENG"
MONTH, DAY, NEXT = "2026-09", "2026-09-03", "2026-09-04"
NOW = "2026-09-06T00:00:00+08:00"


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 9, day, hh, mm, tzinfo=TZ)


BRAND = {"P1": "ZTO", "P2": "ZTO", "P3": "SF", "P4": "SF"}
# (leg, outcome, cause, minutes_over, county day it counts on), per parcel
EXPECTED: dict[str, set[tuple[Any, ...]]] = {
    "P1": {("village_to_county", "on_time", None, None, DAY),
           ("up_cold_store", "on_time", None, None, DAY),
           ("cold_chain", "on_time", None, None, DAY),
           ("air_cutoff", "on_time", None, None, DAY)},
    "P2": {("village_to_county", "on_time", None, None, DAY),
           ("up_cold_store", "late", "late_to_cold_store", 60, DAY),
           ("cold_chain", "late", "cold_chain_broken", 30, DAY),
           ("air_cutoff", "late", "missed_air_cutoff", 900, NEXT)},
    "P3": {("village_to_county", "late", "unknown", 480, NEXT),
           ("up_cold_store", "late", "late_to_cold_store", 430, NEXT),
           ("cold_chain", "on_time", None, None, NEXT)},
    "P4": {("village_to_county", "on_time", None, None, DAY)},
}


def upward_days(first: int = 3) -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The waybills, SF's own hand-in of P3, and what the village points and the centre send, on
    September `first` and the day after (the browser test takes days of its own: the figures of
    a day here are exact, not deltas)."""
    rng = random.Random(time.time_ns())
    wb = {p: waybill_for(b, rng) for p, b in BRAND.items()}

    def hand_in(p: str, when: datetime, village: str, grams: int,
                perishable: str | None) -> dict[str, Any]:
        return envelope("parcel.handed_in", 1, when, BRAND[p], "op-village", {
            "waybill": wb[p], "shipper_id": "COOP-HAICHENG-017", "origin_village": village,
            "weight_g": grams, "perishable": perishable})

    def scan(p: str, when: datetime, action: str, node: str = CENTRE) -> dict[str, Any]:
        return envelope("parcel.scanned", 1, when, BRAND[p], "op-centre",
                        {"waybill": wb[p], "action": action, "node_id": node})

    system = [hand_in("P3", at(first, 13), "VIL-TENGAO-01", 12000, "produce")]
    scanner = [
        hand_in("P1", at(first, 10), "VIL-XILIU-01", 5200, "plum"),
        hand_in("P2", at(first, 10), "VIL-XILIU-02", 800, "plum"),
        hand_in("P4", at(first, 9), "VIL-TENGAO-02", 1000, None),
        scan("P1", at(first, 13), "received"), scan("P1", at(first, 13, 10), "cold_in"),
        scan("P1", at(first, 15), "cold_out"), scan("P1", at(first, 15, 30), "cold_in"),
        scan("P1", at(first, 16, 30), "cold_out"), scan("P1", at(first, 17), "air_loaded"),
        scan("P2", at(first, 16, 50), "received"), scan("P2", at(first, 17), "cold_in"),
        scan("P2", at(first, 17, 30), "cold_out"), scan("P2", at(first, 20), "cold_in"),
        scan("P2", at(first + 1, 9), "air_loaded"),
        scan("P3", at(first + 1, 8), "received"), scan("P3", at(first + 1, 8, 10), "cold_in"),
        scan("P4", at(first, 12), "received"),
    ]
    return wb, system, scanner


def get(client: httpx.Client, token: str, path: str, **params: Any) -> Any:
    r = client.get(path, headers=bearer(token), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def figures(report: dict[str, Any]) -> dict[str, Any]:
    u = report["upward"]
    return {"parcels": u["parcels"], "weight_g": u["weight_g"], "perishable": u["perishable"],
            "classes": {c["class"]: (c["parcels"], c["weight_g"]) for c in u["by_class"]},
            "cold_store": (u["cold_store"]["on_time"], u["cold_store"]["late"]),
            "cold_chain": (u["cold_chain"]["on_time"], u["cold_chain"]["late"]),
            "air": (u["air_cutoff"]["made"], u["air_cutoff"]["missed"])}


def plus(before: dict[str, Any]) -> dict[str, Any]:
    """The month's figures once this test's four parcels are in."""
    classes = dict(before["classes"])
    for cls, n, grams in (("plum", 2, 6000), ("produce", 1, 12000), (None, 1, 1000)):
        old = classes.get(cls, (0, 0))
        classes[cls] = (old[0] + n, old[1] + grams)

    def add(pair: tuple[int, int], on: int, late: int) -> tuple[int, int]:
        return (pair[0] + on, pair[1] + late)
    return {"parcels": before["parcels"] + 4, "weight_g": before["weight_g"] + 19000,
            "perishable": before["perishable"] + 3, "classes": classes,
            "cold_store": add(before["cold_store"], 1, 2),
            "cold_chain": add(before["cold_chain"], 2, 1), "air": add(before["air"], 1, 1)}


@pytest.fixture(scope="module")
def sent(platform: Platform, client: httpx.Client, tokens: dict[str, str]) -> dict[str, Any]:
    before = figures(get(client, tokens["manager"], "/v1/reports/monthly", month=MONTH, now=NOW))
    wb, system, scanner = upward_days()
    assert post(client, tokens["SF-system"], system)["accepted"] == 1
    result = post(client, tokens["scanner"], scanner)
    assert result["accepted"] == len(scanner), result
    waybills = {w: p for p, w in wb.items()}
    expected_legs = sum(len(v) for v in EXPECTED.values())

    def legs() -> dict[str, set[tuple[Any, ...]]] | None:
        rows = db_fetch(platform, "SELECT waybill, leg, outcome, cause, minutes_over, day::text"
                        " AS day FROM sla_legs WHERE waybill = ANY($1::text[])", list(waybills))
        if len(rows) != expected_legs or any(r["outcome"] == "open" for r in rows):
            return None
        out: dict[str, set[tuple[Any, ...]]] = {}
        for r in rows:
            out.setdefault(waybills[r["waybill"]], set()).add(
                (r["leg"], r["outcome"], r["cause"], r["minutes_over"], r["day"]))
        return out

    got = wait_for(legs, 60.0, "the SLA projection to judge the upward parcels")
    def month() -> dict[str, Any] | None:
        r = get(client, tokens["manager"], "/v1/reports/monthly", month=MONTH, now=NOW)
        return r if figures(r) == plus(before) else None

    report = wait_for(month, 60.0, "the month's upward figures")
    return {"wb": wb, "legs": got, "report": report, "before": before}


def test_each_parcel_has_exactly_its_expected_legs_and_causes(sent: dict[str, Any]) -> None:
    assert sent["legs"] == EXPECTED


def test_the_breaches_of_the_day_name_the_upward_causes(
        sent: dict[str, Any], client: httpx.Client, tokens: dict[str, str]) -> None:
    mine = set(sent["wb"].values())
    for day, expected in ((DAY, {("P2", "up_cold_store", "late_to_cold_store"),
                                 ("P2", "cold_chain", "cold_chain_broken")}),
                          (NEXT, {("P2", "air_cutoff", "missed_air_cutoff"),
                                  ("P3", "village_to_county", "unknown"),
                                  ("P3", "up_cold_store", "late_to_cold_store")})):
        b = get(client, tokens["manager"], "/v1/sla/breaches", day=day, now=NOW)
        name = {w: p for p, w in sent["wb"].items()}
        assert {(name[x["waybill"]], x["leg"], x["cause"]) for x in b["breaches"]
                if x["waybill"] in mine} == expected
        for _, leg, cause in expected:
            assert b["causes"][cause] >= 1, (day, leg, cause)


def test_the_dashboard_shows_the_upward_panel_and_the_perishable_legs(
        sent: dict[str, Any], client: httpx.Client, tokens: dict[str, str]) -> None:
    d = get(client, tokens["manager"], "/v1/sla/dashboard", day=DAY, now=NOW)
    u = d["upward"]
    assert u["shown"] and not u["harvest"]   # September: shown for its traffic
    assert u["today"]["day"] == DAY and len(u["days"]) == 14
    assert (u["today"]["parcels"], u["today"]["weight_g"], u["today"]["perishable"]) == (4, 19000, 3)
    assert u["today"]["cold_chain"] == {"on_time": 1, "late": 1, "rate_permille": 500}
    assert u["today"]["cold_store"] == {"on_time": 1, "late": 1, "rate_permille": 500}
    assert u["today"]["air_cutoff"] == {"made": 1, "missed": 0, "rate_permille": 1000}
    legs = {x["id"]: (x["on_time"], x["late"]) for x in d["legs"]}
    assert legs["up_cold_store"] == (1, 1) and legs["cold_chain"] == (1, 1)
    assert legs["air_cutoff"] == (1, 0) and legs["village_to_county"] == (3, 0)
    # The causes panel still adds up to the late legs of the headline.
    assert sum(c["count"] for c in d["causes"]) == sum(x["late"] for x in d["legs"])
    nxt = get(client, tokens["manager"], "/v1/sla/dashboard", day=NEXT, now=NOW)["upward"]["today"]
    assert nxt["parcels"] == 0 and nxt["air_cutoff"]["missed"] == 1
    # A brand sees its own hand-ins only.
    sf = get(client, tokens["SF-brand"], "/v1/sla/dashboard", day=DAY, now=NOW)["upward"]["today"]
    assert (sf["parcels"], sf["weight_g"], sf["air_cutoff"]["made"]) == (2, 13000, 0)


def test_in_the_harvest_season_the_panel_shows_even_without_traffic(
        sent: dict[str, Any], client: httpx.Client, tokens: dict[str, str]) -> None:
    u = get(client, tokens["manager"], "/v1/sla/dashboard", day="2026-07-20",
            now="2026-07-21T00:00:00+08:00")["upward"]
    assert u["shown"] and u["harvest"]


def test_the_monthly_report_counts_the_upward_produce_in_json_and_xlsx(
        sent: dict[str, Any], client: httpx.Client, tokens: dict[str, str]) -> None:
    report = sent["report"]
    u = report["upward"]
    assert u["kg"] == round(u["weight_g"] / 1000, 1)
    assert {x["brand"] for x in u["by_brand"]} >= {"ZTO", "SF"}
    assert sum(x["parcels"] for x in u["by_brand"]) == u["parcels"]
    legs = {x["leg"]: x for x in report["on_time"]["legs"]}
    assert legs["cold_chain"]["direction"] == "up" and legs["cold_chain"]["name"] == "冷链脱冷时长"
    r = client.get("/v1/reports/monthly.xlsx", params={"month": MONTH, "now": NOW},
                   headers=bearer(tokens["finance"]))
    assert r.status_code == 200, r.text
    wb = load_workbook(io.BytesIO(r.content))
    assert wb.sheetnames[-1] == "上行农产品"
    rows = list(wb["上行农产品"].iter_rows(values_only=True))
    total = next(row for row in rows if row[0] == "合计")
    assert total[2:4] == (u["parcels"], u["weight_g"])
    air = next(row for row in rows if row[0] == "航空截载")
    assert air[2:4] == (u["air_cutoff"]["made"], u["air_cutoff"]["missed"])


def test_another_brand_may_not_hand_in_or_scan_a_handed_in_waybill_and_no_phone_is_a_shipper(
        sent: dict[str, Any], client: httpx.Client, tokens: dict[str, str]) -> None:
    w = sent["wb"]["P4"]   # SF's
    zto = envelope("parcel.handed_in", 1, at(3, 11), "ZTO", "op-village", {
        "waybill": w, "shipper_id": "COOP-HAICHENG-018", "origin_village": "VIL-TENGAO-02",
        "weight_g": 900})
    scan = envelope("parcel.scanned", 1, at(3, 12), "ZTO", "op", {
        "waybill": w, "action": "cold_in", "node_id": CENTRE})
    phone = envelope("parcel.handed_in", 1, at(3, 11), "SF", "op-village", {
        "waybill": waybill_for("SF", random.Random(time.time_ns())), "shipper_id": "F13812345678",
        "origin_village": "VIL-TENGAO-02", "weight_g": 900})
    result = post(client, tokens["scanner"], [zto, scan, phone])
    reasons = [(x["status"], x.get("reason")) for x in result["results"]]
    assert reasons == [("rejected", "waybill_owned_by_other_brand")] * 2 + [
        ("rejected", "invalid_value")]
    assert "13812345678" not in str(result)


def test_the_demos_upward_produce_is_accepted_and_judged_on_time(
        platform: Platform, client: httpx.Client, tmp_path: Any) -> None:
    from loadtest.demo import UPWARD_EVERY, DemoTraffic, county_time

    demo = DemoTraffic(platform, tmp_path, seed=7013)  # no other test's seed
    demo.prepare()
    sent: list[dict[str, Any]] = []
    hand_ins: list[str] = []
    while len(hand_ins) < 4 or demo.upward:   # four hand-ins, each walked to the plane
        if len(hand_ins) == 4 and demo.steps % UPWARD_EVERY == 0:
            demo.steps += 1                   # no fifth
        now = county_time(demo.county, datetime.now(TZ))
        events = demo._upward(now)
        demo.steps += 1
        if events:
            result = post(client, demo.tokens["pda-demo"], events)
            assert result["accepted"] == len(events), result
        sent += events
        hand_ins += [e["payload"]["waybill"] for e in events if e["type"] == "parcel.handed_in"]
        assert demo.steps < 40
    assert len(hand_ins) == 4 and all(e["payload"]["perishable"] == "plum" for e in sent
                                      if e["type"] == "parcel.handed_in")
    assert any(e["payload"].get("action") == "cold_out" for e in sent)

    def judged() -> list[Any] | None:
        rows = db_fetch(platform, "SELECT leg, outcome FROM sla_legs WHERE waybill = ANY($1)",
                        hand_ins)
        return rows if len(rows) == 16 and all(r["outcome"] == "on_time" for r in rows) else None

    wait_for(judged, 60.0, "the demo's hand-ins judged, every clock on time")
