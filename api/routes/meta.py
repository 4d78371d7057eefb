"""Health, Prometheus metrics and the ingest contract's JSON Schema."""

from __future__ import annotations

import os
from typing import Any, Literal

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, RootModel

from api.deps import PoolDep
from api.errors import documented
from api.schema import scan_batch_schema

router = APIRouter(tags=["meta"])


class Health(BaseModel):
    status: Literal["ok"]


class JsonSchemaDocument(RootModel[dict[str, Any]]):
    """A JSON Schema (draft 2020-12) document."""


@router.get("/healthz", summary="Liveness and database reachability", response_model=Health,
            responses=documented(413, 503))
async def healthz(pool: PoolDep) -> Health:
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
    return Health(status="ok")


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
