"""Parcel tracking: the full view for brand, manager and admin tokens; a masked public lookup."""

from __future__ import annotations

from typing import Any

import asyncpg
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field, field_validator

from api.deps import CountyDep, PoolDep, PrincipalDep, require_role
from api.errors import ApiError, documented, require_json, token_route
from api.models import Answer
from domain.county import County
from domain.lookup import POLICY, address_key, normalise_last4
from domain.tracking import Status
from infra.public_lookup import look_up

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


class TimelineEntry(Answer):
    event_id: str
    type: str = Field(examples=["parcel.scanned"])
    occurred_at: str = Field(description="when it happened (ISO-8601 with offset)")
    recorded_at: str | None = Field(None, description="when the platform heard of it")
    action: str | None = None
    node_id: str | None = None
    node_name: str | None = None


class ParcelView(Answer):
    waybill: str
    brand: str
    status: Status
    public_code: int | None = Field(description="the status code shown to recipients")
    public_label: str | None = None
    misrouted: bool
    destination_village: str | None = None
    current_node: str | None = None
    pickup_code: str | None = None
    phone_masked: str | None = Field(None, examples=["138****5678"])
    timeline: list[TimelineEntry]


class ParcelSummary(Answer):
    waybill: str
    brand: str
    status: Status
    public_code: int | None = None
    current_node: str | None = None
    destination_village: str | None = None
    misrouted: bool | None = None
    last_event_at: str | None = None


class ParcelList(Answer):
    parcels: list[ParcelSummary]


class PublicTimelineEntry(Answer):
    occurred_at: str
    action: str | None = None
    node_name: str | None = None


class PublicParcelView(Answer):
    waybill: str
    brand: str
    status: Status
    public_code: int | None = None
    public_label: str | None = None
    destination: str | None = Field(None, description="the village point's name")
    pickup_code: str | None = None
    phone_masked: str | None = None
    timeline: list[PublicTimelineEntry]


async def fetch_parcel(conn: asyncpg.Connection, waybill: str, scope: str) -> asyncpg.Record | None:
    """The parcel row as row-level security lets `scope` see it (None: absent or not yours)."""
    async with conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('gongpei.brand_scope', $1, true)", scope)
        return await conn.fetchrow(
            "SELECT view, phone_masked, phone_last4 FROM parcels WHERE waybill = $1", waybill)


def _not_found(waybill: str) -> ApiError:
    return ApiError(404, "not_found", f"no parcel {waybill} is visible to this token")


@router.get("/v1/parcels/{waybill}", summary="A parcel's status and timeline",
            response_model=ParcelView,
            responses={200: {"content": {"application/json": {"example": EXAMPLE_VIEW}}},
                       **token_route(notes={404: "Unknown, or another brand's parcel"})})
async def get_parcel(principal: PrincipalDep, pool: PoolDep,
                     waybill: str = Path(pattern=WAYBILL_PATTERN, examples=["ZT7300012345678"])
                     ) -> dict[str, Any]:
    require_role(principal, *READERS)
    async with pool.acquire() as conn:
        row = await fetch_parcel(conn, waybill, principal.brand_scope)
    if row is None:
        raise _not_found(waybill)
    return {**row["view"], "phone_masked": row["phone_masked"]}


@router.get("/v1/parcels", summary="Recently moved parcels visible to this token",
            response_model=ParcelList, responses=token_route())
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
    # The validator below is the rule; the pattern tells clients the same (Unicode \d, as
    # Python's: any script's decimal digits, surrounding spaces ignored).
    phone_last4: str = Field(max_length=32, examples=["5678"],
                             description="four digits; fullwidth and other scripts' digits count",
                             json_schema_extra={"pattern": r"^\s*\d{4}\s*$"})

    @field_validator("phone_last4")
    @classmethod
    def _four_digits(cls, value: str) -> str:
        last4 = normalise_last4(value)
        if last4 is None:
            raise ValueError("'phone_last4' must be the last four digits of the phone number")
        return last4


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


@router.post("/v1/public/track", summary="Public lookup by waybill and the last 4 phone digits",
             dependencies=[Depends(require_json)],
             description="Wrong guesses are limited per client address, per address and waybill, "
                         "and per waybill (docs/security/public-lookup.md); a refused try is "
                         "answered 429 with Retry-After in seconds and is not counted.",
             response_model=PublicParcelView,
             responses=documented(400, 413, 415, 503, notes={
                 404: "No such parcel, or the digits do not match",
                 422: "Not a waybill, or not four digits",
                 429: "Too many wrong tries (`too_many_attempts`); see Retry-After"}))
async def public_track(body: PublicLookup, request: Request, pool: PoolDep,
                       county: CountyDep) -> dict[str, Any]:
    address = address_key(request.client.host if request.client else None)
    async with pool.acquire() as conn:
        outcome = await look_up(conn, POLICY, address, body.waybill, body.phone_last4)
    if outcome.retry_after:
        raise ApiError(429, "too_many_attempts",
                       f"too many wrong tries; try again in {outcome.retry_after} s, or ask at"
                       " the service point", headers={"Retry-After": str(outcome.retry_after)})
    # The same answer for "no parcel" and "wrong digits": a waybill alone reveals nothing.
    if outcome.view is None:
        raise ApiError(404, "not_found", "no parcel matches this waybill and phone digits")
    return public_view(outcome.view, outcome.phone_masked, county)
