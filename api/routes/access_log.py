"""GET /v1/access-log: who called what, for admins. No secrets, paths, queries or bodies in it."""

from __future__ import annotations

from datetime import datetime

from fastapi import APIRouter, Query
from pydantic import BaseModel

from api.deps import PoolDep, PrincipalDep, require_role
from api.errors import token_route

router = APIRouter(tags=["operations"])


class AccessLogEntry(BaseModel):
    at: datetime
    token_id: int | None
    token_name: str | None
    role: str | None
    method: str
    route: str
    status: int
    duration_ms: float
    client: str
    requests: int  # > 1: refusals (429) of the same caller and route within about a second


class AccessLogPage(BaseModel):
    entries: list[AccessLogEntry]


@router.get("/v1/access-log", response_model=AccessLogPage, responses=token_route(),
            summary="The newest access-log entries (admin): token, route template, status, client",
            description="Entries are written in batches about once a second and kept for "
                        "GONGPEI_ACCESS_LOG_RETENTION_DAYS (90 by default). The route is the "
                        "template (`/v1/parcels/{waybill}`), never the concrete path.")
async def list_access_log(principal: PrincipalDep, pool: PoolDep,
                          limit: int = Query(100, ge=1, le=1000),
                          token_id: int | None = Query(None, ge=1, le=2**63 - 1),
                          status: int | None = Query(None, ge=100, le=599)) -> AccessLogPage:
    require_role(principal, "admin")
    async with pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT at, token_id, token_name, role, method, route, status, duration_ms, client,"
            " requests"
            " FROM access_log WHERE ($1::bigint IS NULL OR token_id = $1)"
            " AND ($2::int IS NULL OR status = $2) ORDER BY at DESC LIMIT $3",
            token_id, status, limit)
    return AccessLogPage(entries=[AccessLogEntry(**dict(r)) for r in rows])
