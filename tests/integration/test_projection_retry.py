"""Fixing the reducer and replaying applies it: what a projection set aside is re-applied by
`runtime.retry_set_aside` (and `gongpei projections retry NAME`) and leaves the list; what still
fails stays, with its new reason."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Sequence
from typing import Any, ClassVar

import asyncpg
import httpx

from domain.county import County
from entrypoints.platform import Platform
from infra.db import _init_connection
from projections import runtime
from projections.locks import Lock
from projections.runtime import Applied, Base, Source
from tests.conftest import db_fetch
from tests.integration.test_projections import _gongpei, _owner
from tests.integration.test_spine import _ingest, _lifecycle


class _Fixable(Base):
    """A journal follower over this test's scans that raises on `poison` until it is fixed."""

    name = "fixable"
    source = Source.JOURNAL
    reads = frozenset({"parcel.scanned"})
    lock = Lock.REBUILD
    tables: ClassVar[dict[str, str]] = {"fixable_seen": "*"}

    def __init__(self, mine: set[str], poison: set[str]) -> None:
        self.mine, self.poison = mine, poison

    def decode(self, seq: int, wire: dict[str, Any]) -> str:
        return str(wire["event_id"])

    async def apply(self, conn: asyncpg.Connection, items: Sequence[str]) -> Applied:
        for event_id in items:
            if event_id in self.poison:
                raise ValueError(f"cannot fold {event_id} yet")
        ours = [(i,) for i in items if i in self.mine]
        await conn.executemany("INSERT INTO fixable_seen VALUES ($1)", ours)
        return Applied(len(ours), 0)

    async def reset(self, conn: asyncpg.Connection) -> None:
        await conn.execute("DELETE FROM fixable_seen")


def test_given_a_reducer_that_raised_when_fixed_then_retry_applies_it_and_clears_it(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    _, regs, scans = _lifecycle(county, seed=random.Random(time.time_ns()).randrange(10**9),
                                parcels=3, steps=3)
    _ingest(client, tokens, regs, scans)
    mine = {e["event_id"] for e in scans}
    poison = {scans[0]["event_id"], scans[4]["event_id"]}
    fixable = _Fixable(mine, set(poison))

    async def go() -> tuple[list[asyncpg.Record], runtime.RetryReport, runtime.RetryReport,
                            list[asyncpg.Record], set[str]]:
        conn = await asyncpg.connect(_owner(platform))
        try:
            await _init_connection(conn)
            await conn.execute("CREATE TABLE IF NOT EXISTS fixable_seen (event_id text)")
            await runtime.catch_up(conn, fixable, page=50)
            aside = await conn.fetch("SELECT event_id, reason FROM projection_set_aside"
                                     " WHERE projection = 'fixable'")
            fixable.poison = {scans[4]["event_id"]}  # half fixed: one still raises
            first = await runtime.retry_set_aside(conn, fixable)
            still = await conn.fetch("SELECT event_id, reason FROM projection_set_aside"
                                     " WHERE projection = 'fixable'")
            fixable.poison = set()                   # fixed
            second = await runtime.retry_set_aside(conn, fixable)
            seen = [r["event_id"] for r in await conn.fetch("SELECT event_id FROM fixable_seen")]
            assert len(seen) == len(set(seen)), "an event applied twice"
            return aside, first, second, still, set(seen)
        finally:
            await conn.execute("DROP TABLE IF EXISTS fixable_seen;"
                               " DELETE FROM projection_set_aside WHERE projection = 'fixable';"
                               " DELETE FROM consumer_offsets WHERE consumer = 'fixable'")
            await conn.close()

    aside, first, second, still, seen = asyncio.run(go())
    assert {r["event_id"] for r in aside} == poison
    assert (first.applied, first.still) == (1, 1)
    assert [(r["event_id"], r["reason"].split(":")[0]) for r in still] == [
        (scans[4]["event_id"], "ValueError")]
    assert (second.applied, second.still) == (1, 0)
    assert seen == mine  # every scan of ours folded once, the poisoned ones after the fix


def test_given_a_set_aside_event_the_reducer_now_accepts_then_the_cli_retry_clears_it(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    _, regs, scans = _lifecycle(county, seed=random.Random(time.time_ns()).randrange(10**9),
                                parcels=1, steps=2)
    _ingest(client, tokens, regs, scans)
    [row] = db_fetch(platform, "SELECT body::text AS body FROM journal WHERE event_id = $1",
                     scans[-1]["event_id"])
    # As if tracking had once raised on it (a reducer since fixed): set aside at a position of
    # its own, with the stored wire form the runtime keeps.
    position = random.Random(time.time_ns()).randrange(10**12, 10**13)
    db_fetch(platform, "INSERT INTO projection_set_aside (projection, topic, partition, position,"
                       " event_id, reason, body) VALUES ('tracking', 'parcel-events', 0, $1, $2,"
                       " 'ValueError: a bug since fixed', $3)", position, scans[-1]["event_id"],
             row["body"])
    listed = _gongpei(platform, "projections")
    assert "a bug since fixed" in listed.stdout, listed.stdout + listed.stderr
    done = _gongpei(platform, "projections", "retry", "tracking")
    # Another test's poison on the shared platform may still fail (exit 1): ours must not.
    assert done.returncode in (0, 1) and "set-aside events applied" in done.stdout, (
        done.stdout + done.stderr)
    assert not db_fetch(platform, "SELECT 1 FROM projection_set_aside WHERE projection ="
                                  " 'tracking' AND position = $1", position)
    timeline = db_fetch(platform, "SELECT count(*) AS n FROM tracking_events WHERE event_id = $1",
                        scans[-1]["event_id"])
    assert timeline[0]["n"] == 1  # applied once: the model already held it
