"""The public lookup's rules: four digits in any script, and buckets that refuse guessers but
never let one stranger lock the recipient out."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from domain.lookup import POLICY, Rate, address_key, after_failure, decide, normalise_last4

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


@pytest.mark.parametrize("raw, ascii_digits", [
    ("5678", "5678"), ("５６７８", "5678"), ("٥٦٧٨", "5678"), ("۵۶۷۸", "5678"), ("५६७८", "5678"),
    (" 5678\u3000", "5678"),
])
def test_given_four_digits_in_any_script_then_they_are_ascii(raw: str, ascii_digits: str) -> None:
    assert normalise_last4(raw) == ascii_digits


@pytest.mark.parametrize("raw", ["567", "56789", "56a8", "5 78", "\x005678"[:4], "²³⁴⁵", "五六七八",
                                 "", "5678\x00", "½678"])
def test_given_anything_but_four_decimal_digits_then_none(raw: str) -> None:
    assert normalise_last4(raw) is None


def failures(start: dict[str, datetime], n: int, at: datetime) -> dict[str, datetime]:
    tats = dict(start)
    for _ in range(n):
        d = decide(POLICY, tats, at)
        assert d.retry_after == 0, d
        tats.update(after_failure(POLICY, tats, at, d.new_waybill))
    return tats


def keyed(address: str, waybill: str, store: dict[str, datetime]) -> dict[str, datetime]:
    """The named tats of one lookup, read from a store keyed like the database."""
    keys = POLICY.keys(address, waybill)
    return {name: store[key] for name, key in keys.items() if key in store}


def test_a_bucket_takes_its_burst_then_one_per_interval() -> None:
    rate = Rate(5, timedelta(hours=1), burst=5)
    tat = NOW
    for _ in range(5):
        assert rate.wait(tat, NOW) == timedelta(0)
        tat = rate.fill(tat, NOW)
    assert rate.wait(tat, NOW) == timedelta(minutes=12)
    assert rate.wait(tat, NOW + timedelta(minutes=12)) == timedelta(0)


def test_given_five_wrong_guesses_from_one_address_then_it_waits_12_minutes_on_that_waybill() -> None:
    tats = failures({}, 5, NOW)
    d = decide(POLICY, tats, NOW)
    assert d.refused_by == ("per_address_waybill",) and d.retry_after == 12 * 60


def test_given_a_stranger_at_its_limit_then_the_waybill_still_answers_another_address() -> None:
    store: dict[str, datetime] = {}
    for _ in range(5):
        named = keyed("203.0.113.9", "YT1234567890123", store)
        d = decide(POLICY, named, NOW)
        assert d.retry_after == 0
        for name, tat in after_failure(POLICY, named, NOW, d.new_waybill).items():
            store[POLICY.keys("203.0.113.9", "YT1234567890123")[name]] = tat
    assert decide(POLICY, keyed("203.0.113.9", "YT1234567890123", store), NOW).retry_after
    recipient = decide(POLICY, keyed("198.51.100.7", "YT1234567890123", store), NOW)
    assert recipient.retry_after == 0


def test_given_the_waybill_bucket_full_then_everyone_waits_at_most_three_minutes() -> None:
    tats = {"per_waybill": NOW + 10 * POLICY.per_waybill.interval}
    d = decide(POLICY, tats, NOW)
    assert d.refused_by == ("per_waybill",) and d.retry_after == 180


def test_given_ten_new_waybills_from_one_address_then_an_eleventh_waits_but_a_known_one_not() -> None:
    tats = {"new_waybills": NOW + 10 * POLICY.new_waybills.interval}
    assert decide(POLICY, tats, NOW).refused_by == ("new_waybills",)
    known = {**tats, "per_address_waybill": NOW + POLICY.per_address_waybill.interval}
    assert decide(POLICY, known, NOW).retry_after == 0


def test_given_a_waybill_guessed_on_earlier_today_then_it_is_not_new_again() -> None:
    # Its own bucket drained 12 minutes after the guess; the address still knows it for a day.
    tats = {"new_waybills": NOW + 10 * POLICY.new_waybills.interval,
            "per_address_waybill": NOW - timedelta(hours=5)}
    assert decide(POLICY, tats, NOW).retry_after == 0
    stale = {**tats, "per_address_waybill": NOW - timedelta(days=1, seconds=1)}
    assert decide(POLICY, stale, NOW).refused_by == ("new_waybills",)


def test_refused_tries_do_not_count() -> None:
    tats = failures({}, 5, NOW)
    for _ in range(100):
        decide(POLICY, tats, NOW)  # nothing is filled without a compared, wrong guess
    assert decide(POLICY, tats, NOW + timedelta(minutes=12)).retry_after == 0


@pytest.mark.parametrize("host, key", [
    ("203.0.113.9", "203.0.113.9"), ("2001:db8:1:2:3:4:5:6", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:ffff::1", "2001:db8:1:2::/64"), ("::ffff:203.0.113.9", "203.0.113.9"),
    (None, "unknown"), ("testclient", "testclient"),
])
def test_an_address_is_kept_by_ipv4_or_ipv6_slash_64(host: str | None, key: str) -> None:
    assert address_key(host) == key
