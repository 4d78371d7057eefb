"""Money: integer fen only; allocation sums exactly, stays within a fen, ignores input order."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from domain.money import Fen, allocate

weights_st = st.dictionaries(st.sampled_from(["EMS", "ZTO", "YTO", "STO", "YUNDA", "JT", "SF", "JD"]),
                             st.integers(0, 10**6), min_size=1)


@given(st.integers(-10**9, 10**9), weights_st)
def test_property_parts_sum_exactly_and_each_is_within_one_fen_of_its_exact_share(
        total: int, weights: dict[str, int]) -> None:
    parts = allocate(Fen(total), weights)
    assert Fen.total(parts.values()) == Fen(total)
    whole = sum(weights.values()) or len(weights)
    for k, part in parts.items():
        exact = Fraction(total * (weights[k] if sum(weights.values()) else 1), whole)
        assert abs(part.value - exact) < 1


@given(st.integers(0, 10**9), weights_st, st.randoms(use_true_random=False))
def test_property_allocation_is_deterministic_and_ignores_input_order(
        total: int, weights: dict[str, int], rnd) -> None:
    items = list(weights.items())
    rnd.shuffle(items)
    assert allocate(Fen(total), dict(items)) == allocate(Fen(total), weights)


def test_given_a_tie_then_the_extra_fen_goes_by_brand_code() -> None:
    assert allocate(Fen(100), {"ZTO": 1, "EMS": 1, "SF": 1}) == {
        "EMS": Fen(34), "SF": Fen(33), "ZTO": Fen(33)}


def test_floats_are_refused() -> None:
    with pytest.raises(TypeError):
        Fen(1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Fen(100).times(1.5)  # type: ignore[arg-type]
    assert Fen(-1234).yuan() == "-12.34"
