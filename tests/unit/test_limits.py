"""Rate-limit buckets, token expiry parsing, client addresses and last-used throttling, on a fake
clock: no I/O, no sleeping."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from api.access_log import AccessLog, Entry, LastUsed
from api.auth import Principal, parse_expires_in
from api.limits import (
    READ,
    UPLOAD,
    KeyedBuckets,
    Limits,
    LimitSettings,
    address_key,
    client_address,
    retry_after,
)
from infra.settings import Settings, SettingsError


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_given_a_full_bucket_when_the_burst_is_taken_then_the_next_waits_one_refill() -> None:
    clock = FakeClock()
    b = KeyedBuckets(3, 60, clock=clock)  # 1 per second
    assert [b.take("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert b.take("k") == pytest.approx(1.0)
    clock.advance(0.5)
    assert b.take("k") == pytest.approx(0.5)  # a refused take takes nothing
    clock.advance(0.5)
    assert b.take("k") == 0.0


def test_given_a_long_pause_then_the_bucket_refills_only_to_its_burst() -> None:
    clock = FakeClock()
    b = KeyedBuckets(2, 60, clock=clock)
    b.take("k")
    clock.advance(3600)
    assert b.level("k") == 2.0
    assert [b.take("k") for _ in range(3)][:2] == [0.0, 0.0] and b.take("k") > 0


def test_given_two_keys_then_one_emptied_does_not_touch_the_other() -> None:
    clock = FakeClock()
    b = KeyedBuckets(1, 1, clock=clock)
    assert b.take("noisy") == 0.0 and b.take("noisy") > 0
    assert b.take("quiet") == 0.0


def test_given_a_debit_beyond_the_level_then_wait_is_the_time_to_pay_it_back() -> None:
    clock = FakeClock()
    b = KeyedBuckets(1000, 6000, clock=clock)  # 100 per second
    b.debit("k", 1500)
    assert b.level("k") == -500
    assert b.wait("k", 0.0) == pytest.approx(5.0)
    clock.advance(5.0)
    assert b.wait("k", 0.0) == 0.0


def test_given_a_refund_then_the_level_never_exceeds_the_burst() -> None:
    clock = FakeClock()
    b = KeyedBuckets(2, 60, clock=clock)
    b.refund("k", 5)
    assert b.level("k") == 2.0


def test_given_more_keys_than_the_bound_then_full_buckets_are_forgotten_first() -> None:
    clock = FakeClock()
    b = KeyedBuckets(5, 60, clock=clock, max_keys=10)
    b.take("empty", 5)
    for i in range(20):
        b.take(i)
        clock.advance(10)  # refills each one fully before the next arrives
    assert len(b) <= 10
    assert b.level("empty") == 5.0  # full again by now, so nothing was lost by forgetting it


def test_given_a_flood_of_distinct_partly_empty_keys_then_the_map_stays_bounded() -> None:
    b = KeyedBuckets(5, 1, clock=FakeClock(), max_keys=100)
    for i in range(10_000):
        b.take(i)
    assert len(b) <= 100


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert [retry_after(s) for s in (0.0, 0.01, 1.0, 1.2, 29.5)] == ["1", "1", "1", "2", "30"]


def limits(clock: FakeClock, **changes: float) -> Limits:
    return Limits(LimitSettings(**changes), clock=clock)  # type: ignore[arg-type]


def test_given_the_default_limits_when_a_handheld_uploads_a_days_backlog_at_once_then_none_is_refused(
        ) -> None:
    clock = FakeClock()
    lim = limits(clock)
    for _ in range(40):  # 20,000 events in 500-event batches, back to back
        assert lim.take(7, UPLOAD) is None
        lim.charge_events(7, 500)
        clock.advance(0.05)
        lim.release(7, UPLOAD)


def test_given_the_default_limits_when_a_device_sends_1500_tiny_batches_then_it_is_refused_soon(
        ) -> None:
    clock = FakeClock()
    lim = limits(clock)
    refused = []
    for _ in range(1500):
        r = lim.take(7, UPLOAD)
        if r is None:
            lim.charge_events(7, 1)
            lim.release(7, UPLOAD)
        else:
            refused.append(r)
        clock.advance(0.002)  # 1,500 in 3 seconds, one after the other
    assert len(refused) >= 1500 - 60 - 4
    assert refused[0].code == "rate_limited" and 0 < refused[0].seconds <= 1.0


def test_given_a_device_pushing_full_batches_at_a_request_a_second_then_its_events_run_out() -> None:
    clock = FakeClock()
    lim = limits(clock)
    outcomes = []
    for _ in range(200):
        r = lim.take(7, UPLOAD)
        outcomes.append(r)
        if r is None:
            lim.charge_events(7, 500)
            lim.release(7, UPLOAD)
        clock.advance(1.0)
    refused = [r for r in outcomes if r is not None]
    assert refused and all("events" in r.message for r in refused)
    # Sustained, it gets what the events refill allows: 100 events/s, one batch in five.
    assert sum(r is None for r in outcomes[-100:]) == pytest.approx(20, abs=2)


def test_given_uploads_refused_then_reads_by_the_same_token_still_pass() -> None:
    clock = FakeClock()
    lim = limits(clock, upload_burst=1)
    assert lim.take(7, UPLOAD) is None
    lim.release(7, UPLOAD)
    refused = lim.take(7, UPLOAD)
    assert refused is not None and refused.code == "rate_limited"
    assert lim.take(7, READ) is None


def test_given_an_upload_in_progress_then_a_second_one_by_the_same_token_waits_its_turn() -> None:
    clock = FakeClock()
    lim = limits(clock)
    assert lim.take(7, UPLOAD) is None
    second = lim.take(7, UPLOAD)
    assert second is not None and second.code == "too_many_concurrent_uploads"
    assert lim.take(8, UPLOAD) is None and lim.take(7, READ) is None  # others, and reads: free
    lim.release(7, UPLOAD)
    assert lim.take(7, UPLOAD) is None
    # The refused attempt took nothing from the bucket: 60 in the burst, two taken.
    assert lim.requests[UPLOAD].level(7) == 58


def test_given_two_upload_slots_then_a_third_concurrent_upload_is_refused() -> None:
    lim = limits(FakeClock(), upload_concurrency=2)
    assert lim.take(7, UPLOAD) is None and lim.take(7, UPLOAD) is None
    assert lim.take(7, UPLOAD) is not None
    lim.release(7, UPLOAD)
    lim.release(7, UPLOAD)
    assert lim.uploading == {}


def test_precheck_refuses_what_take_would_and_takes_nothing() -> None:
    clock = FakeClock()
    lim = limits(clock, upload_burst=2, auth_failure_burst=1)
    lim.remember(b"known", Principal(7, "device", "scanner", "pda", frozenset({"ZTO"})))
    assert lim.precheck(b"known", "198.51.100.1", UPLOAD) is None
    assert lim.requests[UPLOAD].level(7) == 2  # a precheck that lets in takes nothing
    assert lim.take(7, UPLOAD) is None
    busy = lim.precheck(b"known", "198.51.100.1", UPLOAD)
    assert busy is not None and busy.code == "too_many_concurrent_uploads"
    lim.release(7, UPLOAD)
    assert lim.take(7, UPLOAD) is None
    lim.release(7, UPLOAD)
    empty = lim.precheck(b"known", "198.51.100.1", UPLOAD)
    assert empty is not None and empty.code == "rate_limited"
    assert lim.requests[UPLOAD].level(7) == 0
    # An unknown token: only its address's failures count.
    assert lim.precheck(b"guess", "198.51.100.1", UPLOAD) is None
    lim.failed("198.51.100.1")
    blocked = lim.precheck(b"guess", "198.51.100.1", UPLOAD)
    assert blocked is not None and blocked.code == "too_many_failed_authentications"
    assert lim.precheck(b"known", "198.51.100.1", READ) is None  # a known token is not blocked


def test_given_a_refund_after_a_server_failure_then_the_request_is_not_charged() -> None:
    clock = FakeClock()
    lim = limits(clock, upload_burst=1)
    assert lim.take(7, UPLOAD) is None
    lim.release(7, UPLOAD)
    lim.refund(7, UPLOAD)
    assert lim.take(7, UPLOAD) is None


def test_given_failed_authentications_from_one_address_then_it_is_blocked_and_others_not() -> None:
    clock = FakeClock()
    lim = limits(clock, auth_failure_burst=20, auth_failures_per_minute=2)
    statuses = []
    for _ in range(1500):
        refusal = lim.check_address("198.51.100.7")
        if refusal is None:
            lim.failed("198.51.100.7")
            statuses.append(401)
        else:
            statuses.append(429)
    assert statuses[:20] == [401] * 20 and set(statuses[20:]) == {429}
    refusal = lim.check_address("198.51.100.7")
    assert refusal is not None and refusal.seconds == pytest.approx(30.0)
    assert lim.check_address("203.0.113.9") is None
    clock.advance(30.0)
    assert lim.check_address("198.51.100.7") is None  # one more try every 30 s


def test_given_ipv6_addresses_then_a_subscribers_whole_64_counts_as_one() -> None:
    assert address_key("2001:db8:1:2::1") == address_key("2001:db8:1:2:ffff::9")
    assert address_key("2001:db8:1:3::1") != address_key("2001:db8:1:2::1")
    assert address_key("::ffff:198.51.100.7") == "198.51.100.7"
    assert address_key("unknown") == "unknown"


@pytest.mark.parametrize("peer, forwarded, trusted, expected", [
    ("198.51.100.7", "203.0.113.1", "", "198.51.100.7"),          # no proxy trusted
    ("127.0.0.1", "203.0.113.1", "127.0.0.1", "203.0.113.1"),
    ("127.0.0.1", "6.6.6.6, 203.0.113.1", "127.0.0.1", "203.0.113.1"),  # spoofed left
    ("127.0.0.1", "203.0.113.1, 10.0.0.2", "127.0.0.1, 10.0.0.2", "203.0.113.1"),
    ("127.0.0.1", "203.0.113.1, 10.9.8.7", "127.0.0.1, 10.0.0.0/8", "203.0.113.1"),  # a network
    ("127.0.0.1", "not-an-ip", "127.0.0.1", "127.0.0.1"),
    ("127.0.0.1", None, "127.0.0.1", "127.0.0.1"),
    (None, None, "", "unknown"),
])
def test_client_address_believes_forwarded_for_only_from_trusted_proxies(
        peer: str | None, forwarded: str | None, trusted: str, expected: str) -> None:
    proxies = Settings(database_url="", app_password="", kafka_bootstrap_servers="",
                       trusted_proxies=trusted).trusted_proxy_set()
    assert client_address(peer, forwarded, proxies) == expected


@pytest.mark.parametrize("text, expected", [
    ("30m", timedelta(minutes=30)), ("12h", timedelta(hours=12)), ("90d", timedelta(days=90)),
    ("2w", timedelta(weeks=2)), (" 90D ", timedelta(days=90)), ("never", "never"),
])
def test_expires_in_accepts_minutes_hours_days_weeks_and_never(text: str, expected: object) -> None:
    assert parse_expires_in(text) == expected


@pytest.mark.parametrize("text", ["", "90", "0d", "-1d", "1y", "1.5h", "3651d", "９０d", "d"])
def test_expires_in_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError):
        parse_expires_in(text)


def test_given_a_token_used_often_then_its_last_use_is_written_at_most_once_a_minute() -> None:
    clock = FakeClock()
    used = LastUsed(every=60, clock=clock)
    t0 = datetime(2026, 12, 1, tzinfo=UTC)
    for s in range(120):
        used.touch(7, t0 + timedelta(seconds=s))
        clock.advance(1)
        if s == 30:
            assert used.take() == {7: t0}
    assert used.take() == {7: t0 + timedelta(seconds=60)}
    assert used.take() == {}


def test_given_limit_settings_in_the_environment_then_they_round_trip() -> None:
    env = {"DATABASE_URL": "postgresql://x@h/db", "KAFKA_BOOTSTRAP_SERVERS": "h:9092",
           "GONGPEI_APP_PASSWORD": "a-real-secret-of-16+", "GONGPEI_UPLOAD_BURST": "80",
           "GONGPEI_UPLOAD_EVENTS_PER_MINUTE": "1200.5", "GONGPEI_TRUSTED_PROXIES": "10.0.0.1, ::1",
           "GONGPEI_ACCESS_LOG_RETENTION_DAYS": "30"}
    s = Settings.from_env(env)
    assert (s.upload_burst, s.upload_events_per_minute, s.access_log_retention_days) == (
        80, 1200.5, 30)
    assert {str(n) for n in s.trusted_proxy_set()} == {"10.0.0.1/32", "::1/128"}
    assert Settings.from_env(s.to_env()) == s
    assert Settings.from_env({**env, "GONGPEI_UPLOAD_BURST": ""}).upload_burst == 60


@pytest.mark.parametrize("var, value", [
    ("GONGPEI_UPLOAD_BURST", "0"), ("GONGPEI_READ_PER_MINUTE", "-5"), ("GONGPEI_READ_BURST", "x"),
    ("GONGPEI_UPLOAD_PER_MINUTE", "nan"), ("GONGPEI_UPLOAD_EVENTS_PER_MINUTE", "inf"),
    ("GONGPEI_TRUSTED_PROXIES", "proxy.local"), ("GONGPEI_ACCESS_LOG_RETENTION_DAYS", "3")])
def test_given_an_unusable_limit_setting_then_it_is_refused_by_name(var: str, value: str) -> None:
    env = {"DATABASE_URL": "postgresql://x@h/db", "KAFKA_BOOTSTRAP_SERVERS": "h:9092",
           "GONGPEI_APP_PASSWORD": "a-real-secret-of-16+", var: value}
    with pytest.raises(SettingsError, match=var):
        Settings.from_env(env)


def entry(status: int, client: str = "198.51.100.7", token_id: int | None = 7) -> Entry:
    return Entry(at=datetime(2026, 12, 1, tzinfo=UTC), token_id=token_id, token_name="pda",
                 role="scanner", method="POST", route="/v1/scan-batches", status=status,
                 duration_ms=0.1, client=client)


def test_given_a_flood_of_refusals_then_the_access_log_counts_them_in_one_row_per_caller() -> None:
    log = AccessLog()
    for _ in range(1000):
        log.record(entry(429))
    log.record(entry(200))
    log.record(entry(429, client="203.0.113.9", token_id=None))
    rows = log.buffered()
    assert [(r["status"], r["client"], r["requests"]) for r in rows] == [
        (429, "198.51.100.7", 1000), (200, "198.51.100.7", 1), (429, "203.0.113.9", 1)]


def test_given_a_full_buffer_then_rows_are_dropped_not_waited_for() -> None:
    log = AccessLog(max_pending=3)
    for status in (200, 201, 202, 203, 204):
        log.record(entry(status))
    assert [r["status"] for r in log.buffered()] == [200, 201, 202]
