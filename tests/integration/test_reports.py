"""The monthly statistics report (统计上报) on the embedded stack, for a small August told by hand.

12 August 2026 in 海城市 (no other test writes August):
  A (ZTO) and B (SF), manifests at 06:00, scanned in at the centre 06:30, loaded 07:40 on the 08:00
      西柳 run T1, which leaves on time and whose arrival is scanned at 王家村 at 11:00. Both reach
      the 西柳 station at 10:00 and go out at 10:30; B gets a `damaged` problem scan there at 10:15.
      A is shelved at 王家村 at 12:00 and collected at 18:00; B at 李家村 at 12:10, collected on
      the 13th at 09:00 (its problem closed out).
  C (JD), manifest for 腾鳌王家村, loaded on the 腾鳌 run T2, which leaves half an hour late;
      reaches the 腾鳌 station at 10:00 and gets stuck there, `address_unknown` at 10:30: its
      township → village and centre → village legs never end, so they are late (overdue).
  D (ZTO) and E (EMS): produce handed in at 感王 village points (upward, no manifest). D at 09:00,
      at the centre by 17:00 (on time); E at 15:00, at the centre only on the 14th at 10:00 (late).

By hand: runs T1 7500 fen (18 km), T2 8175 fen (20.7 km); T1 shared by ZTO and SF (3750 each),
T2 JD's alone. Each brand on its own vehicle: 2 × 7500 + 8175 = 23175; shared: 15675; saving 7500."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from domain.county import County
from entrypoints.platform import Platform
from loadtest.traffic import envelope, waybill_for
from tests.conftest import bearer, wait_for
from tests.integration.test_sms import post

MONTH = "2026-08"
TZ = timezone(timedelta(hours=8))
CENTRE = "CTY-HAICHENG"
SHEETS = ["封面", "品牌业务量", "节点业务量", "村级覆盖", "时效", "问题件", "共配降本"]

EXPECTED_BRANDS = {  # registered, down, to_village, delivered, up, up_to_county
    "ZTO": (1, 1, 1, 1, 1, 1), "SF": (1, 1, 1, 1, 0, 0), "JD": (1, 1, 0, 0, 0, 0),
    "EMS": (0, 0, 0, 0, 1, 1)}
EXPECTED_NODES = {CENTRE: (3, 2), "TWN-XILIU": (2, 0), "TWN-TENGAO": (1, 0),
                  "VIL-XILIU-01": (1, 0), "VIL-XILIU-02": (1, 0), "VIL-GANWANG-01": (0, 1),
                  "VIL-GANWANG-02": (0, 1)}
EXPECTED_LEGS = {"county_to_township": (3, 0, 0), "township_to_village": (2, 1, 1),
                 "centre_to_village": (2, 1, 1), "village_to_county": (1, 1, 0)}
EXPECTED_SHARES = {"ZTO": 3750, "SF": 3750, "JD": 8175}


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 8, day, hh, mm, tzinfo=TZ)


def get(client: httpx.Client, token: str, path: str, **params: Any) -> Any:
    r = client.get(path, headers=bearer(token), params=params)
    assert r.status_code == 200, r.text
    return r.json()


def august() -> tuple[dict[str, str], list[dict[str, Any]], list[dict[str, Any]]]:
    """The parcels' waybills, the brands' manifests, and the scans and vehicle moves."""
    rng = random.Random()
    wb = {k: waybill_for(b, rng) for k, b in
          (("A", "ZTO"), ("B", "SF"), ("C", "JD"), ("D", "ZTO"), ("E", "EMS"))}
    brand = {"A": "ZTO", "B": "SF", "C": "JD", "D": "ZTO", "E": "EMS"}
    suffix = f"{rng.randrange(10**6):06d}"
    t1, t2 = f"T-0812-XILIU-AM-{suffix}", f"T-0812-TENGAO-AM-{suffix}"

    def scan(p: str, when: datetime, action: str, node: str, **extra: Any) -> dict[str, Any]:
        return envelope("parcel.scanned", 1, when, brand[p], "op-report",
                        {"waybill": wb[p], "action": action, "node_id": node, **extra})

    def move(kind: str, trip: str, route: str, node: str, scheduled: datetime,
             when: datetime) -> dict[str, Any]:
        return envelope(f"vehicle.{kind}", 1, when, "ZTO", "driver-report", {
            "trip_id": trip, "route_id": route, "run_id": f"{route}-AM", "node_id": node,
            "scheduled_at": scheduled.isoformat()})

    manifests = [envelope("parcel.registered", 2, at(12, 6), brand[p], "manifest", {
        "waybill": wb[p], "recipient_phone": f"139{rng.randrange(10**8):08d}",
        "destination_village": village, "weight_g": 1200})
        for p, village in (("A", "VIL-XILIU-01"), ("B", "VIL-XILIU-02"), ("C", "VIL-TENGAO-01"))]
    events = [scan(p, at(12, 6, 30), "received", CENTRE) for p in "ABC"]
    events += [scan(p, at(12, 7, 40), "loaded", CENTRE, trip_id=t1) for p in "AB"]
    events.append(scan("C", at(12, 7, 40), "loaded", CENTRE, trip_id=t2))
    events += [move("departed", t1, "R-XILIU", CENTRE, at(12, 8), at(12, 8)),
               move("arrived", t1, "R-XILIU", "VIL-XILIU-01", at(12, 11), at(12, 11)),
               move("departed", t2, "R-TENGAO", CENTRE, at(12, 8), at(12, 8, 30))]
    events += [scan(p, at(12, 10), "arrived", "TWN-XILIU") for p in "AB"]
    events.append(scan("B", at(12, 10, 15), "problem", "TWN-XILIU", problem_reason="damaged"))
    events += [scan(p, at(12, 10, 30), "out_for_delivery", "TWN-XILIU") for p in "AB"]
    events += [scan("A", at(12, 12), "stored", "VIL-XILIU-01", pickup_code="1-1-1001"),
               scan("B", at(12, 12, 10), "stored", "VIL-XILIU-02", pickup_code="1-1-1002"),
               scan("A", at(12, 18), "delivered", "VIL-XILIU-01"),
               scan("B", at(13, 9), "delivered", "VIL-XILIU-02")]
    events += [scan("C", at(12, 10), "arrived", "TWN-TENGAO"),
               scan("C", at(12, 10, 30), "problem", "TWN-TENGAO", problem_reason="address_unknown")]
    events += [scan("D", at(12, 9), "received", "VIL-GANWANG-01"),
               scan("D", at(12, 17), "arrived", CENTRE),
               scan("E", at(12, 15), "received", "VIL-GANWANG-02"),
               scan("E", at(14, 10), "arrived", CENTRE)]
    return wb, manifests, events


@pytest.fixture(scope="module")
def report(platform: Platform, client: httpx.Client, tokens: dict[str, str]) -> dict[str, Any]:
    _, manifests, events = august()
    for m in manifests:
        assert post(client, tokens[f"{m['brand']}-system"], [m])["accepted"] == 1
    result = post(client, tokens["scanner"], events)
    assert result["accepted"] == len(events), result

    seen: list[dict[str, Any]] = []

    def settled() -> dict[str, Any] | None:
        r = get(client, tokens["manager"], "/v1/reports/monthly", month=MONTH)
        seen[:] = [{"delivered": r["volumes"]["brand_total"]["delivered"],
                    "up_to_county": r["volumes"]["brand_total"]["up_to_county"],
                    "closed": r["problems"]["closed"],
                    "village_to_county_late": {x["leg"]: x["late"] for x in r["on_time"]["legs"]
                                               }["village_to_county"],
                    "moves": r["on_time"]["runs"]["moves"],
                    "shared_cost_fen": r["cost_saving"]["shared_cost_fen"]}]
        return r if seen[0] == {"delivered": 2, "up_to_county": 2, "closed": 1,
                                "village_to_county_late": 1, "moves": 3,
                                "shared_cost_fen": 15675} else None

    try:
        return wait_for(settled, 60.0, "tracking, SLA and ledger to take in the August day")  # type: ignore[no-any-return]
    except AssertionError as e:
        raise AssertionError(f"{e}; the month's figures read: {seen}") from e


def test_given_the_august_day_then_volumes_per_brand_and_node_are_the_hand_counted_ones(
        report: dict[str, Any]) -> None:
    v = report["volumes"]
    cols = ("registered", "down", "to_village", "delivered", "up", "up_to_county")
    got = {r["brand"]: tuple(r[c] for c in cols) for r in v["by_brand"] if any(r[c] for c in cols)}
    assert got == EXPECTED_BRANDS
    assert v["brand_total"] == {c: sum(e[i] for e in EXPECTED_BRANDS.values())
                                for i, c in enumerate(cols)}
    assert {r["node_id"]: (r["down"], r["up"]) for r in v["by_node"]} == EXPECTED_NODES
    names = {r["node_id"]: (r["tier"], r["township"]) for r in v["by_node"]}
    assert names["VIL-GANWANG-01"] == ("village", "TWN-GANWANG") and names[CENTRE][0] == "county"
    assert report["month"] == MONTH and report["first_day"] == "2026-08-01"
    assert report["last_day"] == "2026-08-31" and report["utc_offset"] == "+08:00"


def test_coverage_counts_villages_on_routes_that_ran_and_where_runs_and_parcels_arrived(
        report: dict[str, Any], county: County) -> None:
    c = report["coverage"]
    ran = {s for r in county.routes if r.id in ("R-XILIU", "R-TENGAO") for s in r.stops}
    villages = {v.id for v in county.villages}
    assert c["villages"] == len(villages) == 153
    assert c["run_covered"] == len(ran & villages)
    assert c["coverage_permille"] == len(ran & villages) * 1000 // 153
    assert (c["run_arrived"], c["parcels_reached"]) == (1, 2)
    xiliu = next(t for t in c["by_township"] if t["township"] == "TWN-XILIU")
    assert (xiliu["run_arrived"], xiliu["parcels_reached"]) == (1, 2)
    assert xiliu["run_covered"] == xiliu["villages"] and xiliu["coverage_permille"] == 1000
    assert sum(t["villages"] for t in c["by_township"]) == 153
    assert sum(t["run_covered"] for t in c["by_township"]) == c["run_covered"]


def test_on_time_per_leg_is_hand_computed_and_the_sla_apis_own_figures_for_the_month(
        report: dict[str, Any], client: httpx.Client, tokens: dict[str, str]) -> None:
    legs = {x["leg"]: (x["on_time"], x["late"], x["overdue_open"]) for x in report["on_time"]["legs"]}
    assert legs == EXPECTED_LEGS
    assert report["on_time"]["runs"] == {"moves": 3, "punctual": 2, "rate_permille": 666,
                                         "tolerance_minutes": 15}
    now = datetime.now(UTC).isoformat()
    again = get(client, tokens["manager"], "/v1/reports/monthly", month=MONTH, now=now)
    sla = get(client, tokens["manager"], "/v1/sla/rates", **{"from": "2026-08-01", "to": "2026-08-31"},
              now=now)["rates"]
    summed: dict[str, list[int]] = {}
    for d in sla:
        s = summed.setdefault(d["leg"], [0, 0, 0])
        s[0], s[1], s[2] = s[0] + d["on_time"], s[1] + d["late"], s[2] + d["overdue_open"]
    assert {x["leg"]: [x["on_time"], x["late"], x["overdue_open"]]
            for x in again["on_time"]["legs"]} == summed


def test_problem_parcels_by_reason_with_those_closed_out(report: dict[str, Any]) -> None:
    p = report["problems"]
    assert {r["reason"]: (r["parcels"], r["closed"], r["label"]) for r in p["by_reason"]} == {
        "address_unknown": (1, 0, "地址不详"), "damaged": (1, 1, "破损")}
    assert (p["total"], p["closed"]) == (2, 1)


def test_cost_saving_is_hand_computed_and_reconciles_with_statements_and_reconciliation(
        report: dict[str, Any], client: httpx.Client, tokens: dict[str, str]) -> None:
    s = report["cost_saving"]
    assert (s["period"], s["trips"], s["shared_trips"], s["empty_trips"]) == (MONTH, 2, 1, 0)
    assert (s["shared_cost_fen"], s["own_vehicles_fen"], s["saving_fen"]) == (15675, 23175, 7500)
    assert s["saving_permille"] == 7500 * 1000 // 23175
    assert s["trip_cost"] == {"fixed_fen": 3000, "per_km_fen": 250, "basis": "parcel_count"}
    assert "3000 fen per run + 250 fen per km" in s["assumption"]
    rows = {r["brand"]: r for r in s["by_brand"]}
    assert {b: r["shares_fen"] for b, r in rows.items()} == EXPECTED_SHARES
    assert {b: r["saving_fen"] for b, r in rows.items()} == {"ZTO": 3750, "SF": 3750, "JD": 0}
    for brand, fen in EXPECTED_SHARES.items():  # the settlement API reads the same lines
        st = get(client, tokens["finance"], f"/v1/statements/{MONTH}/{brand}")
        assert st["totals"]["trip_cost"]["fen"] == fen, brand
    rec = get(client, tokens["finance"], f"/v1/reconciliation/{MONTH}")
    assert rec["ok"] and rec["trips"] == s["trips"]
    assert -rec["by_account_class_fen"]["carrier"] == s["shared_cost_fen"]


def test_the_xlsx_has_chinese_sheets_headings_and_totals_that_match_the_json(
        report: dict[str, Any], client: httpx.Client, tokens: dict[str, str]) -> None:
    r = client.get("/v1/reports/monthly.xlsx", params={"month": MONTH},
                   headers=bearer(tokens["finance"]))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/vnd.openxmlformats")
    assert "HAICHENG-2026-08" in r.headers["content-disposition"]
    wb = load_workbook(io.BytesIO(r.content))
    assert wb.sheetnames == SHEETS
    sheet = {name: list(wb[name].iter_rows(values_only=True)) for name in SHEETS}
    cover = {row[0]: row[1] for row in sheet["封面"] if row and row[0]}
    assert cover["统计月份"] == MONTH and cover["县（市）"] == "海城市（HAICHENG）"
    notes = [str(row[1]) for row in sheet["封面"] if len(row) > 1 and row[1]]
    assert any("每班 3000 分 + 线路每公里 250 分" in n for n in notes)
    assert any("Counterfactual" in n for n in notes)

    brands = sheet["品牌业务量"]
    assert brands[0] == ("品牌", "面单登记", "下行处理", "到村（入库或签收）", "签收", "上行收寄", "上行到县")
    total = next(row for row in brands if row[0] == "合计")
    assert list(total[1:]) == [3, 3, 2, 2, 2, 2]
    assert [sum(row[i] for row in brands[1:-1]) for i in range(1, 7)] == list(total[1:])

    nodes = {row[0]: row[4:6] for row in sheet["节点业务量"][1:-1]}
    assert nodes == EXPECTED_NODES
    assert sheet["节点业务量"][0][0] == "节点编号"

    coverage = sheet["村级覆盖"]
    county_row = next(row for row in coverage if row[0] == "合计")
    c = report["coverage"]
    assert list(county_row[2:]) == [c["villages"], c["on_timetable"], c["run_covered"],
                                    c["run_arrived"], c["parcels_reached"], c["coverage_permille"]]

    on_time = {row[1]: row[3:6] for row in sheet["时效"][1:] if row and row[1] in EXPECTED_LEGS}
    assert on_time == EXPECTED_LEGS
    assert sheet["时效"][1][0] == "县仓→乡镇站 12小时"
    legs_total = next(row for row in sheet["时效"] if row and str(row[0]).startswith("合计"))
    assert legs_total[3:5] == (8, 3)

    problems = sheet["问题件"]
    assert next(row for row in problems if row[0] == "合计")[2:4] == (2, 1)
    assert {row[1]: row[2] for row in problems[1:-1]} == {"address_unknown": 1, "damaged": 1}

    saving = sheet["共配降本"]
    assert saving[0][0] == "品牌" and saving[0][2] == "分摊费用（分）"
    shares = {row[0]: row[2] for row in saving[1:] if row[0] in EXPECTED_SHARES}
    assert shares == EXPECTED_SHARES
    total = next(row for row in saving if row[0] == "合计")
    assert total[1:7] == (2, 15675, "156.75", 23175, 7500, "75.00")
    parts = [row[2] for row in saving[1:] if row[0] in {*EXPECTED_SHARES, "空载车次（运营方承担）"}]
    assert sum(parts) == total[2]


@pytest.mark.parametrize("month", ["", "2026-13", "2026-1", "26-08", "abcd-ef", "1999-12",
                                   "2026-08-01", "２０２６-08", "2026_08"])
def test_a_bad_month_is_400_with_a_clear_error(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], month: str) -> None:
    for path in ("/v1/reports/monthly", "/v1/reports/monthly.xlsx"):
        r = client.get(path, params={"month": month}, headers=bearer(tokens["manager"]))
        assert r.status_code == 400, (path, month, r.text)
        assert r.json()["error"]["code"] == "invalid_month" and r.json()["error"]["path"] == "$.month"
    r = client.get("/v1/reports/monthly", headers=bearer(tokens["manager"]))
    assert r.status_code == 400 and "YYYY-MM" in r.json()["error"]["message"]


@pytest.mark.parametrize("now", ["0.5", "2026-08-31T12:00:00", "2026-08-31 12:00", "yesterday",
                                 "0001-01-01T00:00:00+08:00", ""])
def test_a_bad_now_is_400(client: httpx.Client, tokens: dict[str, str], now: str) -> None:
    r = client.get("/v1/reports/monthly", params={"month": MONTH, "now": now},
                   headers=bearer(tokens["manager"]))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_now", r.text


def test_only_operator_tokens_read_the_report(client: httpx.Client, tokens: dict[str, str]) -> None:
    for name in ("manager", "finance", "finance-admin"):
        r = client.get("/v1/reports/monthly", params={"month": MONTH}, headers=bearer(tokens[name]))
        assert r.status_code == 200, (name, r.text)
    for name in ("ZTO-brand", "ZTO-finance", "scanner", "ZTO-system"):
        for path in ("/v1/reports/monthly", "/v1/reports/monthly.xlsx"):
            for month in (MONTH, "2026-13"):  # who may ask is settled before what was asked
                r = client.get(path, params={"month": month}, headers=bearer(tokens[name]))
                assert r.status_code == 403, (name, path, r.text)
    assert client.get("/v1/reports/monthly", params={"month": MONTH}).status_code == 401
    assert client.get("/v1/reports/monthly.xlsx", params={"month": MONTH},
                      headers=bearer("not-a-token")).status_code == 401


def test_the_openapi_schema_documents_the_answer_and_its_errors(client: httpx.Client) -> None:
    schema = client.get("/openapi.json").json()
    for path in ("/v1/reports/monthly", "/v1/reports/monthly.xlsx"):
        op = schema["paths"][path]["get"]
        assert {"200", "400", "401", "403"} <= set(op["responses"]), path
        month = next(p for p in op["parameters"] if p["name"] == "month")
        assert month["required"] and month["schema"]["pattern"] == "^20[0-9]{2}-(0[1-9]|1[0-2])$"
    ok = schema["paths"]["/v1/reports/monthly"]["get"]["responses"]["200"]
    assert ok["content"]["application/json"]["schema"]["$ref"].endswith("/MonthlyReport")
