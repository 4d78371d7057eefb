"""Parcel tracking: the full view for brand, manager and admin tokens; a masked public lookup."""

from __future__ import annotations

import hmac
from typing import Any

import asyncpg
from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, Field

from api.deps import CountyDep, PoolDep, PrincipalDep, require_role
from api.errors import ApiError
from domain.county import County
from domain.tracking import Status

router = APIRouter(tags=["tracking"])
READERS = ("brand", "brand-system", "manager", "finance", "admin")
WAYBILL_PATTERN = r"^[A-Z0-9]{8,32}$"

EXAMPLE_VIEW = {
    "waybill": "ZT7300012345678", "brand": "ZTO", "status": "stored_at_point",
    "public_code": 501, "public_label": "已入站", "misrouted": False,
    "destination_village": "VIL-XILIU-01", "current_node": "VIL-XILIU-01",
    "pickup_code": "10-2-7507", "phone_masked": "138****5678",
    "timeline": [{"event_id": "0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a10", "type": "parcel.scanned",
                  "action": "arrived", "node_id": "TWN-XILIU", "node_name": "西柳镇站",
                  "occurred_at": "2026-11-11T09:15:32+08:00"}],
}


async def fetch_parcel(conn: asyncpg.Connection, waybill: str, scope: str) -> asyncpg.Record | None:
    """The parcel row as row-level security lets `scope` see it (None: absent or not yours)."""
    async with conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('gongpei.brand_scope', $1, true)", scope)
        return await conn.fetchrow(
            "SELECT view, phone_masked, phone_last4 FROM parcels WHERE waybill = $1", waybill)


def _not_found(waybill: str) -> ApiError:
    return ApiError(404, "not_found", f"no parcel {waybill} is visible to this token")


@router.get("/v1/parcels/{waybill}", summary="A parcel's status and timeline",
            responses={200: {"content": {"application/json": {"example": EXAMPLE_VIEW}}},
                       404: {"description": "Unknown, or another brand's parcel"}})
async def get_parcel(principal: PrincipalDep, pool: PoolDep,
                     waybill: str = Path(pattern=WAYBILL_PATTERN, examples=["ZT7300012345678"])
                     ) -> dict[str, Any]:
    require_role(principal, *READERS)
    async with pool.acquire() as conn:
        row = await fetch_parcel(conn, waybill, principal.brand_scope)
    if row is None:
        raise _not_found(waybill)
    return {**row["view"], "phone_masked": row["phone_masked"]}


@router.get("/v1/parcels", summary="Recently moved parcels visible to this token")
async def list_parcels(principal: PrincipalDep, pool: PoolDep,
                       status: Status | None = None,
                       limit: int = Query(50, ge=1, le=500)) -> dict[str, Any]:
    require_role(principal, *READERS)
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('gongpei.brand_scope', $1, true)",
                           principal.brand_scope)
        rows = await conn.fetch(
            "SELECT waybill, brand, status, public_code, current_node, destination_village,"
            " misrouted, last_event_at FROM parcels WHERE ($1::text IS NULL OR status = $1)"
            " ORDER BY last_event_at DESC NULLS LAST, waybill LIMIT $2",
            str(status) if status else None, limit)
    return {"parcels": [{**dict(r), "last_event_at": r["last_event_at"].isoformat()
                         if r["last_event_at"] else None} for r in rows]}


class PublicLookup(BaseModel):
    waybill: str = Field(pattern=WAYBILL_PATTERN, examples=["ZT7300012345678"])
    phone_last4: str = Field(pattern=r"^\d{4}$", examples=["5678"])


def public_view(view: dict[str, Any], phone_masked: str | None, county: County) -> dict[str, Any]:
    """What a villager may see: status and where, never operators, devices or the phone."""
    dest = view.get("destination_village")
    return {
        "waybill": view["waybill"], "brand": view["brand"], "status": view["status"],
        "public_code": view["public_code"], "public_label": view["public_label"],
        "destination": county.nodes[dest].name if dest in county.nodes else None,
        "pickup_code": view.get("pickup_code"), "phone_masked": phone_masked,
        "timeline": [{"occurred_at": e["occurred_at"], "action": e.get("action"),
                      "node_name": e.get("node_name")}
                     for e in view.get("timeline", []) if e.get("type") != "parcel.registered"],
    }


# Ten wrong guesses per waybill per hour, then 429: four digits are 10,000 tries otherwise.
LOOKUP_FAILURES_PER_HOUR = 10


@router.post("/v1/public/track", summary="Public lookup by waybill and the last 4 phone digits",
             responses={404: {"description": "No such parcel, or the digits do not match"},
                        429: {"description": "Too many wrong tries for this waybill this hour"}})
async def public_track(body: PublicLookup, pool: PoolDep, county: CountyDep) -> dict[str, Any]:
    async with pool.acquire() as conn:
        failures = await conn.fetchval(
            "SELECT failures FROM public_lookup_failures WHERE waybill = $1"
            " AND hour = date_trunc('hour', now())", body.waybill)
        if failures is not None and failures >= LOOKUP_FAILURES_PER_HOUR:
            raise ApiError(429, "too_many_attempts", "too many tries for this waybill; try again"
                           " within the hour, or ask at the service point", headers={"Retry-After": "3600"})
        row = await fetch_parcel(conn, body.waybill, "*")
        # The same answer for "no parcel" and "wrong digits": a waybill alone reveals nothing.
        if row is None or not row["phone_last4"] or not hmac.compare_digest(
                row["phone_last4"], body.phone_last4):
            await conn.execute(
                "INSERT INTO public_lookup_failures (waybill, hour, failures)"
                " VALUES ($1, date_trunc('hour', now()), 1) ON CONFLICT (waybill, hour)"
                " DO UPDATE SET failures = public_lookup_failures.failures + 1", body.waybill)
            raise ApiError(404, "not_found", "no parcel matches this waybill and phone digits")
    return public_view(row["view"], row["phone_masked"], county)
