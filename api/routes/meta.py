"""Health, Prometheus metrics and the ingest contract's JSON Schema."""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import asyncpg
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, RootModel

from api.deps import PoolDep
from api.errors import documented
from api.schema import scan_batch_schema
from infra.embedded import parts_down, read_state

router = APIRouter(tags=["meta"])


# The database is away (down, restarting, in crash recovery, or out of connections).
_DB_AWAY = (asyncpg.PostgresConnectionError, asyncpg.exceptions.OperatorInterventionError,
            asyncpg.exceptions.InsufficientResourcesError, asyncpg.exceptions.InterfaceError,
            asyncpg.exceptions._base.InternalClientError, OSError, TimeoutError)


def _supervisor_state() -> dict[str, object] | None:
    """What the embedded supervisor (our parent) last wrote; None elsewhere (production, or a
    stale file)."""
    folder = os.environ.get("GONGPEI_STATE_DIR")
    state = read_state(Path(folder)) if folder else None
    if not state or state.get("supervisor_pid") != os.getppid() or state.get("stopped_at"):
        return None
    return state


def _capacity_warnings(state: dict[str, object] | None) -> list[str]:
    """The supervisor's disk and memory warnings ("disk 92% full: …"), if any."""
    capacity = state.get("capacity") if state else None
    warnings = capacity.get("warnings") if isinstance(capacity, dict) else None
    return [str(w) for w in warnings] if isinstance(warnings, list) else []


class PartDown(BaseModel):
    since: str


class Health(BaseModel):
    """ok; degraded (a supervised part is down, or disk or memory is running out: the API still
    takes uploads); down (the database does not answer)."""

    status: Literal["ok", "degraded", "down"]
    down: dict[str, PartDown] | None = None
    warnings: list[str] | None = None


class JsonSchemaDocument(RootModel[dict[str, Any]]):
    """A JSON Schema (draft 2020-12) document."""


@router.get("/healthz", summary="Liveness, database reachability and which supervised part is"
            " down since when", response_model=Health,
            responses={**documented(413), 503: {
                "model": Health, "headers": {"Retry-After": {"schema": {"type": "integer"}}},
                "description": "The database does not answer: every write is refused; retry"
                               " after `Retry-After` seconds"}})
async def healthz(request: Request, pool: PoolDep) -> JSONResponse:
    """200 `{"status": "ok"}`; 200 `degraded` when the database answers but a supervised part
    is down or disk or memory runs out (`warnings`; the API still takes uploads); 503 `down`
    when the database does not answer."""
    state = _supervisor_state()
    down = parts_down(state) if state else {}
    warnings = _capacity_warnings(state)
    try:
        async with pool.acquire(timeout=3) as conn:
            await conn.fetchval("SELECT 1", timeout=3)
        request.app.state.db_away_since = None
        down.pop("postgres", None)  # it answers us: back, whatever the supervisor last wrote
    except _DB_AWAY:
        first = getattr(request.app.state, "db_away_since", None) or datetime.now(UTC).isoformat()
        request.app.state.db_away_since = first
        down["postgres"] = down.get("postgres") or first
    if not down and not warnings:
        return JSONResponse({"status": "ok"})
    body: dict[str, object] = {"status": "down" if "postgres" in down else "degraded"}
    if down:
        body["down"] = {name: {"since": since} for name, since in sorted(down.items())}
    if warnings:
        body["warnings"] = warnings
    if "postgres" in down:
        return JSONResponse(body, 503, headers={"Retry-After": "2"})
    return JSONResponse(body)




@router.get("/metrics", summary="Prometheus metrics", response_class=Response,
            responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {
                "schema": {"type": "string"}}}, "description": "The text exposition format"},
                **documented(413)})
async def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        data = generate_latest(registry)
    else:
        data = generate_latest()
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/schema/scan-batch.json", summary="JSON Schema of the ingest contract",
            response_model=JsonSchemaDocument, responses=documented(413))
async def scan_batch_json_schema() -> dict[str, Any]:
    return scan_batch_schema()
