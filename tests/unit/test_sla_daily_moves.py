"""The SLA store moves its daily slices by differences: given the legs before and after a batch,
the moves are exactly what a recount of the slices would change."""

from __future__ import annotations

from datetime import date, datetime, timedelta, timezone
from typing import Any

from projections.sla_store import daily_moves

CST = timezone(timedelta(hours=8))
START = datetime(2026, 11, 11, 6, tzinfo=CST)
D1, D2 = date(2026, 11, 11), date(2026, 11, 12)


def leg(outcome: str, day: date = D1, brand: str = "ZTO", waybill: str = "ZT1") -> tuple[Any, ...]:
    """An sla_legs row (the columns in table order)."""
    return (waybill, "county_to_township", brand, "R-XILIU", "TWN-XILIU", "VIL-XILIU-01", START,
            START + timedelta(hours=12), START + timedelta(hours=9), None, outcome, None, None,
            day, "e1", None)


SLICE = (D1, "county_to_township", "R-XILIU", "TWN-XILIU", "VIL-XILIU-01")


def test_given_an_open_leg_that_finishes_on_time_then_its_slice_gains_one_on_time() -> None:
    assert daily_moves([leg("open")], [leg("on_time")]) == [(*SLICE, "ZTO", 1, 0)]


def test_given_a_new_leg_still_open_then_no_slice_moves() -> None:
    assert daily_moves([], [leg("open")]) == []


def test_given_an_on_time_leg_found_late_then_one_moves_from_on_time_to_late() -> None:
    assert daily_moves([leg("on_time")], [leg("late")]) == [(*SLICE, "ZTO", -1, 1)]


def test_given_a_leg_that_now_counts_on_another_day_then_it_leaves_one_slice_for_the_other() -> None:
    assert daily_moves([leg("late", D1)], [leg("late", D2)]) == sorted(
        [(*SLICE, "ZTO", 0, -1), (D2, *SLICE[1:], "ZTO", 0, 1)], key=str)


def test_given_changes_that_cancel_within_a_slice_then_it_does_not_move() -> None:
    before = [leg("on_time", waybill="ZT1"), leg("open", waybill="ZT2")]
    after = [leg("open", waybill="ZT1"), leg("on_time", waybill="ZT2")]
    assert daily_moves(before, after) == []


def test_given_a_leg_that_is_gone_then_its_count_is_taken_off() -> None:
    assert daily_moves([leg("on_time", brand="SF")], []) == [(*SLICE, "SF", -1, 0)]
