"""The supervisor's restart backoff: at once after a stable run, doubling while a part keeps
dying young or will not start, capped; and its record says since when it is down and why."""

from __future__ import annotations

from entrypoints.platform import MAX_BACKOFF, STABLE_AFTER, Watch


def test_given_a_part_that_ran_long_when_it_dies_then_it_is_restarted_at_once() -> None:
    watch = Watch(up_at=0.0)
    assert watch.noticed_down(STABLE_AFTER + 5)
    assert watch.retry_at == STABLE_AFTER + 5 and watch.as_state()["down_since"]
    assert not watch.noticed_down(STABLE_AFTER + 6)  # noticed once


def test_given_a_part_that_keeps_dying_young_then_each_wait_doubles_up_to_the_cap() -> None:
    watch, now, waits = Watch(up_at=0.0), 1.0, []
    for _ in range(8):
        watch.noticed_down(now)
        waits.append(watch.delay)
        now = watch.retry_at
        watch.restarted(now)
        now += 1.0  # dies a second after each restart
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, MAX_BACKOFF, MAX_BACKOFF, MAX_BACKOFF]
    assert watch.restarts == 8


def test_given_restarts_that_fail_then_it_backs_off_and_says_why_until_one_works() -> None:
    watch = Watch(up_at=0.0)
    watch.noticed_down(100.0)
    watch.start_failed(100.0, "EmbeddedError: PostgreSQL exited with code 1 during start-up")
    watch.start_failed(101.0, "EmbeddedError: PostgreSQL exited with code 1 during start-up")
    assert watch.delay == 2.0 and watch.retry_at == 103.0
    assert watch.as_state()["last_error"] and watch.restarts == 0
    watch.restarted(103.0)
    assert watch.as_state() == {"restarts": 1, "down_since": None, "last_error": None}
