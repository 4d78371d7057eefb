"""The upward tariff and a bus line's run through the real API: hand-ins and a bus trip give exactly
the statement lines computed by hand, to the fen, and a replay of the journal equals the books.

27 November 2026 in 海城市 (no other test writes that day; the waybills are drawn at random, and
every check reads only this test's own entries). Tariff (infra/counties/haicheng.toml
[upward_tariff]): 30 fen handling, 20 fen per started kg, 50 fen cold chain for a perishable class.

  ZTO  A 1.2 kg plum       30 + 2 × 20 + 50 = 120
       B 1.0 kg            30 + 1 × 20      =  50   (handed in again by ZTO's system at 10:30,
                                                     4 kg: charged once, by the first)
       E 0.999 kg produce  30 + 1 × 20 + 50 = 100
  SF   C 5.001 kg produce  30 + 6 × 20 + 50 = 200
       F 2.0 kg            30 + 2 × 20      =  70
  JD   D 70 kg             30 + 70 × 20     = 1430
       G 1 g plum          30 + 1 × 20 + 50 = 100

All seven ride bus run BUS-XILIU-20261127-1300 of line BUS-XILIU (1500 fen a trip), shared by
parcel count 3 : 2 : 2 → 642.86 / 428.57 / 428.57: floors 642 + 428 + 428 = 1498, the two fen
left to the largest remainders, ZTO's .86, then .57 where JD comes before SF → ZTO 643, JD 429,
SF 428."""

from __future__ import annotations

import asyncio
import io
import random
import time
from datetime import datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from openpyxl import load_workbook

from domain.county import County, UpwardTariff
from domain.settlement.upward import UPWARD_KINDS
from entrypoints.platform import Platform
from loadtest.traffic import envelope, waybill_for
from tests.conftest import bearer, wait_for
from tests.integration.test_sms import post

TZ = timezone(timedelta(hours=8))
PERIOD = "2026-11"
DAY = "2026-11-27"
TRIP = "BUS-XILIU-20261127-1300"
VILLAGE = "VIL-XILIU-01"
# parcel: (brand, grams, perishable class)
PARCELS = {"A": ("ZTO", 1200, "plum"), "B": ("ZTO", 1000, None), "E": ("ZTO", 999, "produce"),
           "C": ("SF", 5001, "produce"), "F": ("SF", 2000, None),
           "D": ("JD", 70000, None), "G": ("JD", 1, "plum")}
SHARES = {"ZTO": 643, "SF": 428, "JD": 429}


def at(hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, 27, hh, mm, tzinfo=TZ)


def expected_lines(wb: dict[str, str]) -> dict[str, list[tuple[str, str, str, int]]]:
    """(entry_id, kind, ref, fen) of each brand's own lines, by hand."""
    kg = {"A": 2, "B": 1, "E": 1, "C": 6, "F": 2, "D": 70, "G": 1}
    out: dict[str, list[tuple[str, str, str, int]]] = {"ZTO": [], "SF": [], "JD": []}
    for p, (brand, _, cls) in PARCELS.items():
        w = wb[p]
        out[brand] += [(f"upward_handling:{w}", "upward_handling", VILLAGE, 30),
                       (f"upward_weight:{w}", "upward_weight", str(kg[p]), 20 * kg[p])]
        if cls:
            out[brand].append((f"upward_cold_chain:{w}", "upward_cold_chain", cls, 50))
    for brand, fen in SHARES.items():
        out[brand].append((f"trip:{TRIP}", "trip_cost", "BUS-XILIU", fen))
    return {b: sorted(v) for b, v in out.items()}


def statement(client: httpx.Client, token: str, brand: str, fmt: str = "json") -> Any:
    r = client.get(f"/v1/statements/{PERIOD}/{brand}", params={"format": fmt},
                   headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json() if fmt == "json" else r.text


def own(st: dict[str, Any], wb: dict[str, str]) -> list[tuple[str, str, str, int]]:
    """The statement's lines that are this test's: its waybills' and its trip's."""
    ids = {f"{k}:{w}" for w in wb.values()
           for k in ("upward_handling", "upward_weight", "upward_cold_chain")} | {f"trip:{TRIP}"}
    return sorted((ln["entry_id"], ln["kind"], ln["ref"], ln["amount_fen"])
                  for ln in st["lines"] if ln["entry_id"] in ids)


@pytest.fixture(scope="module")
def booked(platform: Platform, client: httpx.Client, tokens: dict[str, str],
           county: County) -> dict[str, str]:
    assert county.upward_tariff == UpwardTariff(30, 20, 50)
    [line] = [b for b in county.bus_lines if b.id == "BUS-XILIU"]
    assert line.cost_per_trip_fen == 1500 and "13:00" in line.departures
    rng = random.Random(time.time_ns())
    wb = {p: waybill_for(brand, rng) for p, (brand, _, _) in PARCELS.items()}
    hand_ins, loads = [], []
    for i, (p, (brand, grams, cls)) in enumerate(PARCELS.items()):
        hand_ins.append(envelope("parcel.handed_in", 1, at(9, i), brand, "op-village", {
            "waybill": wb[p], "shipper_id": "COOP-XILIU-007", "origin_village": VILLAGE,
            "weight_g": grams, "perishable": cls}))
        loads.append(envelope("parcel.scanned", 1, at(13, 40 + i), brand, "op-bus", {
            "waybill": wb[p], "action": "loaded", "node_id": VILLAGE, "trip_id": TRIP}))
    run = [envelope("vehicle.departed", 1, at(13, 4), "ZTO", "op-bus", {
               "trip_id": TRIP, "route_id": "BUS-XILIU", "run_id": "BUS-XILIU-1300",
               "node_id": "CTY-HAICHENG", "scheduled_at": at(13).isoformat()}),
           envelope("vehicle.arrived", 1, at(14, 20), "ZTO", "op-bus", {
               "trip_id": TRIP, "route_id": "BUS-XILIU", "run_id": "BUS-XILIU-1300",
               "node_id": VILLAGE, "scheduled_at": at(14, 0).isoformat()})]
    assert post(client, tokens["scanner"], hand_ins + loads + run)["rejected"] == 0
    again = envelope("parcel.handed_in", 1, at(10, 30), "ZTO", "op-zto-system", {
        "waybill": wb["B"], "shipper_id": "COOP-XILIU-007", "origin_village": VILLAGE,
        "weight_g": 4000})
    assert post(client, tokens["ZTO-system"], [again])["rejected"] == 0
    want = expected_lines(wb)
    wait_for(lambda: all(len(own(statement(client, tokens["finance"], b), wb)) == len(want[b])
                         for b in want), 30.0, "the ledger to book the hand-ins and the bus run")
    return wb


def test_given_hand_ins_and_a_bus_run_then_each_statement_has_exactly_the_lines_by_hand(
        booked: dict[str, str], client: httpx.Client, tokens: dict[str, str]) -> None:
    want = expected_lines(booked)
    for brand, lines in want.items():
        st = statement(client, tokens["finance"], brand)
        assert own(st, booked) == lines, brand
        mine = [ln for ln in st["lines"] if (ln["entry_id"], ln["kind"], ln["ref"], ln["amount_fen"])
                in set(lines)]
        assert {ln["posting_date"] for ln in mine} == {DAY}
        assert all(ln["event_ids"] for ln in mine)
        assert st["upward"]["fen"] >= sum(f for _, k, _, f in lines if k.startswith("upward_"))
    # the figures by hand: ZTO 120 + 50 + 100 + 643, SF 200 + 70 + 428, JD 1430 + 100 + 429
    assert {b: sum(f for *_, f in v) for b, v in want.items()} == {
        "ZTO": 913, "SF": 698, "JD": 1959}


def test_a_brand_sees_its_own_upward_lines_and_the_exports_carry_the_new_kinds(
        booked: dict[str, str], client: httpx.Client, tokens: dict[str, str]) -> None:
    sf = statement(client, tokens["SF-finance"], "SF")
    assert own(sf, booked) == expected_lines(booked)["SF"]
    assert client.get(f"/v1/statements/{PERIOD}/ZTO",
                      headers=bearer(tokens["SF-finance"])).status_code == 404
    csv = statement(client, tokens["finance"], "SF", "csv")
    for kind in ("upward_handling", "upward_weight", "upward_cold_chain"):
        assert f"total,{kind},," in csv
    assert f"upward_cold_chain:{booked['C']},{DAY},upward_cold_chain,produce,50," in csv
    r = client.get(f"/v1/statements/{PERIOD}/SF", params={"format": "xlsx"},
                   headers=bearer(tokens["finance"]))
    st = statement(client, tokens["finance"], "SF")
    rows = list(load_workbook(io.BytesIO(r.content))["Statement"].iter_rows(values_only=True))
    totals = {row[1]: row[3] for row in rows if row[0] == "total"}
    assert {k: totals[k] for k in UPWARD_KINDS} == {k: st["totals"][k]["fen"] for k in UPWARD_KINDS}
    [upward] = [row for row in rows if row[0] == "upward"]
    assert upward[2:4] == (st["upward"]["parcels"], st["upward"]["fen"])
    lines = list(load_workbook(io.BytesIO(r.content))["Lines"].iter_rows(values_only=True))
    assert (f"upward_weight:{booked['C']}", DAY, "upward_weight", "6", 120) in {
        tuple(row[:5]) for row in lines}


def test_the_bus_run_drills_down_to_its_line_and_reconciles_to_its_cost(
        booked: dict[str, str], client: httpx.Client, tokens: dict[str, str]) -> None:
    trip = client.get(f"/v1/trips/{TRIP}", headers=bearer(tokens["finance"])).json()
    lines = {(ln["account"], ln["route"], ln["fen"]) for ln in trip["lines"]}
    assert lines == {("carrier:BUS-XILIU", "BUS-XILIU", -1500), ("brand:ZTO", "BUS-XILIU", 643),
                     ("brand:SF", "BUS-XILIU", 428), ("brand:JD", "BUS-XILIU", 429)}
    assert {s["waybill"] for s in trip["scans"] if s["action"] == "loaded"} == set(booked.values())
    rec = client.get(f"/v1/reconciliation/{PERIOD}", headers=bearer(tokens["finance"])).json()
    assert f"trip:{TRIP}" not in {m["trip"] for m in rec["trips_mismatched"]}
    assert rec["trial_balance_fen"] == 0


def test_the_bus_run_is_judged_like_a_run_under_its_lines_name(
        booked: dict[str, str], client: httpx.Client, tokens: dict[str, str],
        county: County) -> None:
    def recorded() -> dict[str, Any] | None:
        r = client.get("/v1/sla/runs", params={"day": DAY}, headers=bearer(tokens["manager"]))
        assert r.status_code == 200, r.text
        return next((x for x in r.json()["runs"] if x["trip_id"] == TRIP), None)

    run = wait_for(recorded, 30.0, "the bus run in the runs panel")
    [line] = [b for b in county.bus_lines if b.id == "BUS-XILIU"]
    assert (run["route_id"], run["route_name"]) == ("BUS-XILIU", line.name)
    assert run["departed"] == 4 and run["status"] == "late"  # arrived 20 min after its time
    assert [a["delay_minutes"] for a in run["arrivals"]] == [20]


def test_replaying_the_journal_with_hand_ins_and_bus_runs_reproduces_the_ledger(
        booked: dict[str, str], platform: Platform, county: County) -> None:
    from streams.rebuild import rebuild_ledger_check

    assert platform.settings is not None
    found = asyncio.run(rebuild_ledger_check(platform.settings, county))
    assert found["differing"] == 0 and found["live"] == found["rebuilt"] > 0, found
