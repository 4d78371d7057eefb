"""The monthly report's pure rules: the month in county time, the saving of shared runs from
ledger lines, and village coverage counts."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from projections.report_queries import Month, co_delivery_saving, village_coverage

COUNTY = load_county(DEMO_COUNTY)


def test_a_month_is_its_days_in_county_time() -> None:
    m = Month.parse("2026-02", 480)
    assert (str(m.first), str(m.last), len(m.days())) == ("2026-02-01", "2026-02-28", 28)
    assert m.starts.astimezone(UTC) == datetime(2026, 1, 31, 16, tzinfo=UTC)
    assert m.ends.astimezone(UTC) == datetime(2026, 2, 28, 16, tzinfo=UTC)
    assert Month.parse("2099-12", 480).last.isoformat() == "2099-12-31"


@pytest.mark.parametrize("key", ["", "2026-13", "2026-00", "2026-1", "1999-12", "2100-01",
                                 "２０２６-08", "2026-08-01", "2026_08", " 2026-08"])
def test_anything_but_yyyy_mm_is_refused(key: str) -> None:
    with pytest.raises(ValueError):
        Month.parse(key, 480)


def line(unit: str, account: str, fen: int, adjusts: str | None = None) -> dict[str, Any]:
    return {"kind": "trip_cost", "unit": unit, "account": account, "amount_fen": fen,
            "adjusts_period": adjusts}


def test_given_a_shared_a_single_and_an_empty_run_then_the_saving_is_per_brand_and_total() -> None:
    lines = [
        line("trip:T1", "carrier:R-XILIU", -7500), line("trip:T1", "brand:ZTO", 2500),
        line("trip:T1", "brand:SF", 2500), line("trip:T1", "brand:JD", 2500),
        line("trip:T2", "carrier:R-TENGAO", -8175), line("trip:T2", "brand:JD", 8175),
        line("trip:T3", "carrier:R-XILIU", -7500), line("trip:T3", "operator:unallocated", 7500),
        line("trip:T0", "brand:SF", 120, adjusts="2026-07"),
        {"kind": "delivery_fee", "unit": "parcel:X", "account": "brand:SF", "amount_fen": 100,
         "adjusts_period": None},
    ]
    s = co_delivery_saving(lines)
    assert (s["trips"], s["shared_trips"], s["empty_trips"]) == (3, 1, 1)
    assert s["shared_cost_fen"] == 7500 + 8175 + 7500
    assert s["own_vehicles_fen"] == 3 * 7500 + 8175
    assert s["saving_fen"] == 3 * 7500 + 8175 - (7500 + 8175 + 7500) == 7500
    assert (s["unallocated_fen"], s["adjustments_fen"]) == (7500, 120)
    rows = {r["brand"]: (r["trips"], r["shares_fen"], r["own_vehicle_fen"], r["saving_fen"])
            for r in s["by_brand"]}
    assert rows == {"JD": (2, 10675, 15675, 5000), "SF": (1, 2500, 7500, 5000),
                    "ZTO": (1, 2500, 7500, 5000)}
    assert sum(r[3] for r in rows.values()) - s["unallocated_fen"] == s["saving_fen"]
    assert sum(r[1] for r in rows.values()) + s["unallocated_fen"] == s["shared_cost_fen"]


def test_no_runs_no_saving_and_no_rate() -> None:
    s = co_delivery_saving([])
    assert (s["trips"], s["saving_fen"], s["saving_permille"], s["by_brand"]) == (0, 0, None, [])


def test_coverage_counts_each_township_and_the_county() -> None:
    xiliu = {v.id for v in COUNTY.villages if v.parent == "TWN-XILIU"}
    c = village_coverage(COUNTY, timetabled=xiliu, ran=xiliu, arrived={"VIL-XILIU-01"},
                         delivered={"VIL-XILIU-01", "VIL-XILIU-02", "NOT-A-VILLAGE"})
    assert (c["villages"], c["run_covered"], c["run_arrived"], c["parcels_reached"]) == (
        len(COUNTY.villages), len(xiliu), 1, 2)
    row = next(t for t in c["by_township"] if t["township"] == "TWN-XILIU")
    assert row["coverage_permille"] == 1000 and row["name"] == "西柳镇站"
    other = next(t for t in c["by_township"] if t["township"] == "TWN-TENGAO")
    assert (other["run_covered"], other["coverage_permille"]) == (0, 0)
