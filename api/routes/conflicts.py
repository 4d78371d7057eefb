"""Ingest conflicts for the county manager: uploads refused because another brand owns the
waybill, and event ids re-sent with different content. Phones in them are masked."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from api.deps import PoolDep, PrincipalDep, require_role
from api.errors import ApiError, token_route
from api.models import Answer
from api.routes.parcels import WAYBILL_PATTERN
from domain.ownership import Conflict
from projections import ownership_store

router = APIRouter(tags=["conflicts"])
STAFF = ("manager", "admin")


class ConflictRow(Answer):
    id: int
    kind: Conflict
    event_id: str
    event_type: str | None = None
    waybill: str | None = None
    owner_brand: str | None = None
    claimed_brand: str | None = None
    token_id: int | None = None
    device_id: str | None = None
    recorded_at: str
    body: Any = Field(None, description="the refused event as sent (phones masked)")
    resolved_at: str | None = None
    resolved_by: str | None = None
    resolution: str | None = None


class ConflictList(Answer):
    open_total: int
    conflicts: list[ConflictRow]


class Resolved(Answer):
    id: int
    resolved: bool


@router.get("/v1/conflicts", summary="Uploads refused for another brand's waybill, and reused"
            " event ids: what the county manager resolves", response_model=ConflictList,
            responses=token_route())
async def list_conflicts(
    principal: PrincipalDep, pool: PoolDep,
    status: Annotated[str, Query(pattern=r"^(open|all)$")] = "open",
    kind: Conflict | None = None,
    waybill: Annotated[str | None, Query(pattern=WAYBILL_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    require_role(principal, *STAFF)
    async with pool.acquire() as conn:
        rows = await ownership_store.list_conflicts(
            conn, open_only=status == "open", kind=str(kind) if kind else None, waybill=waybill,
            limit=limit)
        open_total = await ownership_store.count_open(conn)
    return {"open_total": open_total, "conflicts": rows}


class Resolution(BaseModel):
    model_config = ConfigDict(extra="forbid")

    resolution: str = Field(min_length=1, max_length=500, pattern=r"^[^\x00]*$",
                            examples=["YTO's manifest is right; ZTO's system had a typo"])


@router.post("/v1/conflicts/{conflict_id}/resolve", summary="Close a conflict with a note",
             response_model=Resolved,
             responses=token_route(400, notes={404: "No open conflict with this id"}))
async def resolve_conflict(principal: PrincipalDep, pool: PoolDep,
                           conflict_id: Annotated[int, Path(ge=1, le=2**62)],
                           body: Annotated[Resolution, Body()]) -> dict[str, Any]:
    require_role(principal, *STAFF)
    async with pool.acquire() as conn:
        done = await ownership_store.resolve_conflict(conn, conflict_id, principal.name,
                                                      body.resolution)
    if not done:
        raise ApiError(404, "not_found", f"no open conflict {conflict_id}")
    return {"id": conflict_id, "resolved": True}
