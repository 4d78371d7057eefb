"""The event journal: the durable system of record every projection is rebuilt from."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg

from domain.envelope import Envelope
from projections.locks import Lock

# Appends are serialised by this lock so that journal seq order equals commit order: the relay
# reads "everything after seq N" and must never pass over a row committed later with a lower seq.
JOURNAL_APPEND_LOCK = int(Lock.JOURNAL_APPEND)
NOTIFY_CHANNEL = "journal_appended"

class UnsealedPhoneError(ValueError):
    """An envelope with a plain phone reached the journal: a programming error, never data."""


_INSERT = """
INSERT INTO journal (event_id, type, schema_version, brand, partition_key,
                     occurred_at, recorded_at, device_id, body, content_hash)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[],
                     $6::timestamptz[], $7::timestamptz[], $8::text[], $9::jsonb[], $10::bytea[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


async def lock(conn: asyncpg.Connection) -> None:
    """Take the append lock for the caller's transaction (re-entrant): what is read after it
    (owners, known ids) stays true until the commit."""
    await conn.execute("SELECT pg_advisory_xact_lock($1)", JOURNAL_APPEND_LOCK)


async def known_digests(conn: asyncpg.Connection, event_ids: Sequence[str]) -> dict[str, bytes | None]:
    """The content digests of those of `event_ids` already in the journal."""
    rows = await conn.fetch("SELECT event_id, content_hash FROM journal WHERE event_id = ANY($1::text[])",
                            list(event_ids))
    return {r["event_id"]: r["content_hash"] for r in rows}


async def append(conn: asyncpg.Connection, events: Sequence[Envelope],
                 digests: Mapping[str, bytes] | None = None) -> set[str]:
    """Append events in the caller's transaction, with the content digests of uploaded ones;
    returns the ids that were new (others: duplicates). An event still holding a phone in clear
    is refused: seal it first (infra.pii.seal_events)."""
    if not events:
        return set()
    if any(e.unsealed for e in events):
        raise UnsealedPhoneError("an event with a phone in clear cannot be journalled; seal it")
    await lock(conn)
    digests = digests or {}
    cols: list[list[Any]] = [[] for _ in range(10)]
    for e in events:
        for col, value in zip(cols, (
            e.event_id, e.type, e.schema_version, e.brand, e.partition_key,
            e.occurred_at, e.recorded_at, e.device_id, e.to_wire(), digests.get(e.event_id),
        )):
            col.append(value)
    rows = await conn.fetch(_INSERT, *cols)
    if rows:
        await conn.execute("SELECT pg_notify($1, '')", NOTIFY_CHANNEL)
    return {r["event_id"] for r in rows}


async def read_after(conn: asyncpg.Connection, seq: int, limit: int) -> list[asyncpg.Record]:
    """Journal rows after `seq`, in order: (seq, type, partition_key, body)."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT seq, type, partition_key, body FROM journal WHERE seq > $1 ORDER BY seq LIMIT $2",
        seq, limit,
    )
    return rows


async def read_page(conn: asyncpg.Connection, *, families: tuple[str, ...], after: int = 0,
                    limit: int = 5000) -> list[asyncpg.Record]:
    """A page of the journal's events of these families (type prefixes), in seq order."""
    rows: list[asyncpg.Record] = await conn.fetch(
        "SELECT seq, body FROM journal WHERE seq > $1 AND type LIKE ANY($2::text[])"
        " ORDER BY seq LIMIT $3",
        after, [f + "%" for f in families], limit,
    )
    return rows


async def last_seq(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT coalesce(max(seq), 0) FROM journal"))


def recorded_now() -> datetime:
    """The server's stamp for `recorded_at` (the only place the ingest path reads the clock)."""
    from datetime import UTC

    return datetime.now(UTC)
