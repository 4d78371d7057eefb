"""The operator's side of personal data (`gongpei pii`): retention by shredding whole months,
erasure of one number on a data subject's request, and re-sealing period keys under a new master
key. Runs as the schema owner; nothing here rewrites the journal, and nothing prints a number."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta

import asyncpg

from domain.sms_planning import ERASED
from infra.pii import (
    Keyring,
    KeyUnavailable,
    _period_context,
    household,
    master_key_id,
    period_of,
    public_of,
    seal,
    unseal,
)


@dataclass
class Erased:
    """What a shred or an erasure destroyed and cleared."""

    periods: list[str] = field(default_factory=list)
    keys: int = 0
    parcels: int = 0          # tracking rows whose masked phone and last four were cleared
    sms_recipients: int = 0
    sms_messages: int = 0

    def lines(self) -> list[str]:
        return [f"periods: {', '.join(self.periods) or 'none'}",
                f"data keys destroyed: {self.keys}",
                f"tracking rows cleared (masked phone, last 4): {self.parcels}",
                f"sms recipients cleared: {self.sms_recipients}",
                f"sms messages cleared: {self.sms_messages}"]


async def _clear_projections(conn: asyncpg.Connection, key_ids: list[str], out: Erased) -> None:
    """Clear what the read models keep of these numbers (masked form, last four, sealed
    object, grouping reference); figures, statuses and timelines stay as they are."""
    if not key_ids:
        return
    await conn.execute("SELECT set_config('gongpei.brand_scope', '*', true)")
    out.parcels += len(await conn.fetch(
        "UPDATE parcels SET phone_masked = NULL, phone_last4 = NULL, updated_at = now()"
        " WHERE phone_key_id = ANY($1::text[]) AND (phone_masked IS NOT NULL"
        " OR phone_last4 IS NOT NULL) RETURNING 1", key_ids))
    stub = ("jsonb_build_object('key_id', sealed_phone->>'key_id', 'waybill',"
            " sealed_phone->>'waybill', 'erased', true)")
    out.sms_recipients += len(await conn.fetch(
        f"UPDATE sms_recipients SET sealed_phone = {stub},"
        " phone_ref = 'erased:' || (sealed_phone->>'key_id')"
        " WHERE sealed_phone->>'key_id' = ANY($1::text[]) AND sealed_phone->>'erased' IS NULL"
        " RETURNING 1", key_ids))
    # A long SMS ends "凭尾号5678取件" (the last four): that goes from its text and params too.
    out.sms_messages += len(await conn.fetch(
        f"UPDATE sms_messages SET sealed_phone = {stub}, phone_masked = $2,"
        " phone_ref = 'erased:' || (sealed_phone->>'key_id'),"
        " text = regexp_replace(text, '尾号[0-9]{4}', '尾号****', 'g'),"
        " params = CASE WHEN params ? 'codes' THEN jsonb_set(params, '{codes}', to_jsonb("
        "  regexp_replace(params->>'codes', '尾号[0-9]{4}', '尾号****', 'g'))) ELSE params END"
        " WHERE sealed_phone->>'key_id' = ANY($1::text[]) AND sealed_phone->>'erased' IS NULL"
        " RETURNING 1", key_ids, ERASED))


def retention_cutoff(now: datetime, retention_days: int, utc_offset_minutes: int) -> str:
    """The first month not yet entirely older than the retention: every month before it goes."""
    return period_of(now - timedelta(days=retention_days), utc_offset_minutes)


async def shred(conn: asyncpg.Connection, before: str, now: datetime,
                utc_offset_minutes: int) -> Erased:
    """Destroy every period before `before` ('YYYY-MM'): its private key, hash key and data
    keys. The current month is never shredded (the API is sealing into it)."""
    current = period_of(now, utc_offset_minutes)
    if before > current:
        raise ValueError(f"--before {before} would shred the current month {current} or later")
    out = Erased()
    async with conn.transaction():
        out.periods = [r["period"] for r in await conn.fetch(
            "SELECT period FROM pii_periods WHERE period < $1 AND shredded_at IS NULL"
            " ORDER BY period FOR UPDATE", before)]
        if not out.periods:
            return out
        key_ids = [r["key_id"] for r in await conn.fetch(
            "DELETE FROM pii_keys WHERE period = ANY($1::text[]) RETURNING key_id", out.periods)]
        out.keys = len(key_ids)
        await conn.execute(
            "UPDATE pii_periods SET private_key = NULL, hash_key = NULL, shredded_at = now()"
            " WHERE period = ANY($1::text[])", out.periods)
        await _clear_projections(conn, key_ids, out)
    return out


async def erase(conn: asyncpg.Connection, phone: str) -> Erased:
    """Destroy every data key of this number, in every month still readable (found by its
    household hash, computed with each month's hash key), and clear the read models."""
    out = Erased()
    async with conn.transaction():
        key_ids: list[str] = []
        for r in await conn.fetch("SELECT period, hash_key FROM pii_periods"
                                  " WHERE hash_key IS NOT NULL ORDER BY period FOR UPDATE"):
            deleted = [k["key_id"] for k in await conn.fetch(
                "DELETE FROM pii_keys WHERE period = $1 AND household = $2 RETURNING key_id",
                r["period"], household(bytes(r["hash_key"]), phone))]
            if deleted:
                out.periods.append(r["period"])
                key_ids += deleted
        out.keys = len(key_ids)
        await _clear_projections(conn, key_ids, out)
    return out


async def rotate(conn: asyncpg.Connection, keys: Keyring) -> list[str]:
    """Re-seal every live period's private key to the newest master key (the first of the
    private keys); returns the periods re-sealed. Afterwards older master keys can be retired."""
    if not keys.private_keys:
        raise KeyUnavailable("rotation needs the master private keys")
    newest_private = next(iter(keys.private_keys.values()))
    newest_public = public_of(newest_private)
    newest_id = master_key_id(newest_public)
    done = []
    async with conn.transaction():
        for r in await conn.fetch(
                "SELECT period, private_key, master_key_id FROM pii_periods WHERE private_key"
                " IS NOT NULL AND master_key_id <> $1 ORDER BY period FOR UPDATE", newest_id):
            old = keys.private_keys.get(r["master_key_id"])
            if old is None:
                raise KeyUnavailable(f"period {r['period']} is sealed to master key"
                                     f" {r['master_key_id']}, which was not given")
            context = _period_context(r["period"])
            private = unseal(old, bytes(r["private_key"]), context)
            await conn.execute(
                "UPDATE pii_periods SET private_key = $2, master_key_id = $3 WHERE period = $1",
                r["period"], seal(newest_public, private, context), newest_id)
            done.append(r["period"])
    return done
