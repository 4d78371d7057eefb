"""The sender's decisions on a fake clock: whether a due message goes now, waits or is cancelled,
the daily budget per number, which provider, and how long after a transient failure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from domain import sms
from domain.sms import SmsPolicy

BJ = timezone(timedelta(hours=8))
OFFSET = 480
POLICY = SmsPolicy()


def at(day: int, hh: int, mm: int = 0) -> datetime:
    return datetime(2026, 11, day, hh, mm, tzinfo=BJ)


def gate(now: datetime, *, accepted: bool = False, waiting: bool = True
         ) -> tuple[sms.SendGate, datetime]:
    return sms.send_gate(accepted=accepted, waiting=waiting, now=now, policy=POLICY,
                         utc_offset_minutes=OFFSET)


def test_a_due_message_goes_in_the_day() -> None:
    assert gate(at(11, 10)) == ("go", at(11, 10))


def test_a_message_a_provider_already_accepted_waits_for_its_record_and_is_never_resent() -> None:
    assert gate(at(11, 10), accepted=True) == ("wait", at(11, 10) + sms.ACCEPTED_RECHECK)
    # even if its parcels were collected meanwhile: it went, it cannot be cancelled
    assert gate(at(11, 10), accepted=True, waiting=False)[0] == "wait"


def test_a_message_whose_parcels_were_all_collected_while_it_waited_is_cancelled() -> None:
    assert gate(at(11, 10), waiting=False)[0] == "cancel"
    assert gate(at(11, 22), waiting=False)[0] == "cancel"  # quiet hours or not


def test_a_message_caught_by_the_quiet_hours_waits_for_the_morning() -> None:
    assert gate(at(11, 21, 30)) == ("wait", at(12, 8))
    assert gate(at(12, 7, 59)) == ("wait", at(12, 8))
    assert gate(at(12, 8)) == ("go", at(12, 8))


def test_the_budget_counts_from_midnight_county_time() -> None:
    assert sms.county_day_start(at(11, 0, 30), OFFSET) == at(11, 0)
    # 23:30 UTC on the 10th is already the 11th in the county
    assert sms.county_day_start(datetime(2026, 11, 10, 23, 30, tzinfo=UTC), OFFSET) == at(11, 0)


def test_a_number_gets_at_most_the_daily_budget() -> None:
    assert not sms.over_budget(POLICY.daily_budget - 1, POLICY)
    assert sms.over_budget(POLICY.daily_budget, POLICY)


@pytest.mark.parametrize("transient, provider", [
    ({}, "aliyun"),
    ({"aliyun": 2}, "aliyun"),
    ({"aliyun": 3}, "tencent"),                  # three transient failures: fail over
    ({"aliyun": 3, "tencent": 3}, "tencent"),    # all failed: the last keeps being tried
])
def test_failover_after_three_transient_failures(transient: dict[str, int], provider: str) -> None:
    assert sms.pick_provider(["aliyun", "tencent"], transient, 3) == provider


def test_transient_failures_back_off_2_4_8_seconds_up_to_five_minutes() -> None:
    assert [sms.retry_delay({"aliyun": n}).total_seconds() for n in range(4)] == [2, 4, 8, 16]
    assert sms.retry_delay({"aliyun": 3, "tencent": 1}) == timedelta(seconds=32)
    assert sms.retry_delay({"aliyun": 20}) == timedelta(minutes=5)
