"""Waybill owners and ingest conflicts in PostgreSQL: read and written inside the ingest
transaction, after the journal's append lock, so two uploads can never both claim one waybill."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from domain.ownership import Conflict, Owner


@dataclass(frozen=True)
class OwnerChange:
    """An owner to store: `first` is the event that claimed the waybill (kept once set)."""

    owner: Owner
    event_id: str
    at: datetime


@dataclass(frozen=True)
class ConflictRecord:
    kind: Conflict
    event_id: str
    event_type: str
    waybill: str | None
    owner_brand: str | None
    claimed_brand: str
    token_id: int
    device_id: str
    recorded_at: datetime
    body: dict[str, Any]


async def owners(conn: asyncpg.Connection, waybills: Iterable[str]) -> dict[str, Owner]:
    rows = await conn.fetch(
        "SELECT waybill, brand, registered, destination_village FROM waybill_owners"
        " WHERE waybill = ANY($1::text[])", list(set(waybills)))
    return {r["waybill"]: Owner(r["waybill"], r["brand"], r["registered"],
                                r["destination_village"]) for r in rows}


async def save_owners(conn: asyncpg.Connection, changes: Sequence[OwnerChange]) -> None:
    """Upsert owners; a claim's brand and first event never change (only a manifest confirms)."""
    if not changes:
        return
    await conn.executemany(
        "INSERT INTO waybill_owners (waybill, brand, registered, destination_village,"
        " first_event_id, first_seen_at, registered_at)"
        " VALUES ($1, $2, $3::boolean, $4, $5, $6::timestamptz,"
        " CASE WHEN $3::boolean THEN $6::timestamptz END)"
        " ON CONFLICT (waybill) DO UPDATE SET registered = EXCLUDED.registered,"
        " destination_village = coalesce(EXCLUDED.destination_village,"
        " waybill_owners.destination_village),"
        " registered_at = coalesce(waybill_owners.registered_at, EXCLUDED.registered_at)"
        " WHERE waybill_owners.brand = EXCLUDED.brand",
        [(c.owner.waybill, c.owner.brand, c.owner.registered, c.owner.destination_village,
          c.event_id, c.at) for c in changes])


async def record_conflicts(conn: asyncpg.Connection, records: Sequence[ConflictRecord]) -> None:
    if records:
        await conn.executemany(
            "INSERT INTO ingest_conflicts (kind, event_id, event_type, waybill, owner_brand,"
            " claimed_brand, token_id, device_id, recorded_at, body)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
            [(str(r.kind), r.event_id, r.event_type, r.waybill, r.owner_brand, r.claimed_brand,
              r.token_id, r.device_id, r.recorded_at, r.body) for r in records])


async def list_conflicts(conn: asyncpg.Connection, *, open_only: bool, kind: str | None,
                         waybill: str | None, limit: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, kind, event_id, event_type, waybill, owner_brand, claimed_brand, token_id,"
        " device_id, recorded_at, body, resolved_at, resolved_by, resolution"
        " FROM ingest_conflicts WHERE (NOT $1 OR resolved_at IS NULL)"
        " AND ($2::text IS NULL OR kind = $2) AND ($3::text IS NULL OR waybill = $3)"
        " ORDER BY recorded_at DESC, id DESC LIMIT $4", open_only, kind, waybill, limit)
    return [{**dict(r), "recorded_at": r["recorded_at"].isoformat(),
             "resolved_at": r["resolved_at"].isoformat() if r["resolved_at"] else None}
            for r in rows]


async def count_open(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM ingest_conflicts WHERE resolved_at IS NULL"))


async def resolve_conflict(conn: asyncpg.Connection, conflict_id: int, by: str,
                           resolution: str) -> bool:
    done = await conn.execute(
        "UPDATE ingest_conflicts SET resolved_at = now(), resolved_by = $2, resolution = $3"
        " WHERE id = $1 AND resolved_at IS NULL", conflict_id, by, resolution)
    return bool(done.endswith(" 1"))
