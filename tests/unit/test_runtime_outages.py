"""What the projection runtime treats as the database's trouble (retried whole) rather than the
event's (set aside): a full disk or exhausted memory must never cost an event its effect."""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from projections.runtime import Applied, Outcome, Stored, _apply_guarded


class _Conn:
    """Just enough of a connection for the guard: savepoints that do nothing."""

    @asynccontextmanager
    async def transaction(self) -> Any:
        yield


class _Raising:
    name = "ledger"
    not_poison: tuple[type[BaseException], ...] = ()

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc

    async def apply(self, conn: Any, items: list[Any]) -> Applied:
        raise self.exc


def _batch(n: int) -> list[tuple[Stored, int]]:
    return [(Stored("journal", 0, seq, f"e{seq}", {}), seq) for seq in range(n)]


@pytest.mark.parametrize("exc", [asyncpg.exceptions.DiskFullError("could not extend file"),
                                 asyncpg.exceptions.OutOfMemoryError("out of memory"),
                                 asyncpg.exceptions.TooManyConnectionsError("too many clients")])
async def test_given_the_server_out_of_disk_or_memory_then_the_batch_is_retried_not_set_aside(
        exc: BaseException) -> None:
    out = Outcome()
    with pytest.raises(type(exc)):
        await _apply_guarded(_Conn(), _Raising(exc), _batch(4), out)  # type: ignore[arg-type]
    assert out.set_aside == []


async def test_given_a_reducer_that_raises_then_its_event_is_set_aside() -> None:
    out = Outcome()
    await _apply_guarded(_Conn(), _Raising(ValueError("bad")), _batch(1), out)  # type: ignore[arg-type]
    assert [(s.event_id, why) for s, why in out.set_aside] == [("e0", "ValueError: bad")]
