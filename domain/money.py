"""Money is integer fen (分) in a type of its own; allocation by largest remainder."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass


@dataclass(frozen=True, order=True, slots=True)
class Fen:
    """An amount in fen. Only integers go in; floats are refused at the door."""

    value: int

    def __post_init__(self) -> None:
        if type(self.value) is not int:
            raise TypeError(f"Fen needs an int, got {type(self.value).__name__}")

    def __add__(self, other: Fen) -> Fen:
        return Fen(self.value + other.value)

    def __sub__(self, other: Fen) -> Fen:
        return Fen(self.value - other.value)

    def __neg__(self) -> Fen:
        return Fen(-self.value)

    def times(self, count: int) -> Fen:
        if type(count) is not int:
            raise TypeError("multiply fen by an int count only")
        return Fen(self.value * count)

    def yuan(self) -> str:
        """For people: 1234 → '12.34' (string formatting, never a float)."""
        sign = "-" if self.value < 0 else ""
        return f"{sign}{abs(self.value) // 100}.{abs(self.value) % 100:02d}"

    @staticmethod
    def total(amounts: Iterable[Fen]) -> Fen:
        return Fen(sum(a.value for a in amounts))


ZERO = Fen(0)


def allocate(total: Fen, weights: Mapping[str, int]) -> dict[str, Fen]:
    """Split `total` by integer `weights` so the parts sum exactly to it (largest remainder).

    Each part is its exact share rounded down; the fen left over go one each to the largest
    remainders, ties broken by key so the result never depends on input order. All-zero weights
    split equally."""
    if not weights:
        raise ValueError("nothing to allocate to")
    if any(type(w) is not int or w < 0 for w in weights.values()):
        raise ValueError("weights must be non-negative ints")
    keys = sorted(weights)
    w = {k: weights[k] for k in keys}
    if sum(w.values()) == 0:
        w = {k: 1 for k in keys}
    whole = sum(w.values())
    sign = -1 if total.value < 0 else 1
    amount = abs(total.value)
    base = {k: amount * w[k] // whole for k in keys}
    remainders = {k: amount * w[k] % whole for k in keys}
    left = amount - sum(base.values())
    for k in sorted(keys, key=lambda k: (-remainders[k], k))[:left]:
        base[k] += 1
    return {k: Fen(sign * base[k]) for k in keys}
