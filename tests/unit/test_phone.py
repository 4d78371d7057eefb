"""Phone numbers: what counts as a mainland mobile, and how little of one we ever show."""

from __future__ import annotations

import pytest

from domain.phone import is_mobile, last4, mask_phone


@pytest.mark.parametrize("number, ok", [
    ("13812345678", True), ("19912345678", True), ("17012345678", True),
    ("12912345678", False), ("23812345678", False), ("1381234567", False), ("138123456789", False),
    ("13812345678\n", False), ("1381234567８", False), ("+8613812345678", False), ("", False),
])
def test_given_a_string_when_checked_then_only_11_digit_mainland_mobiles_pass(number: str,
                                                                              ok: bool) -> None:
    assert is_mobile(number) is ok


def test_given_a_mobile_when_masked_then_the_middle_four_are_hidden() -> None:
    assert mask_phone("13812345678") == "138****5678"


@pytest.mark.parametrize("junk", ["0123456789", "+8613812345678", "138-1234-5678", "12345",
                                  "", "1381234567８", "abcdefghijk"])
def test_given_anything_else_when_masked_then_at_most_two_characters_show(junk: str) -> None:
    masked = mask_phone(junk)
    assert masked.startswith("****")
    assert len(masked.replace("*", "")) <= 2
    assert masked[4:] == junk[len(junk) - len(masked[4:]):]


def test_given_a_short_string_when_masked_then_nothing_of_it_shows() -> None:
    assert mask_phone("12345") == "****"
    assert mask_phone("123456") == "****"


def test_last4_is_the_last_four_digits() -> None:
    assert last4("13812345678") == "5678"
