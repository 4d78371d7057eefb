"""Health, Prometheus metrics and the ingest contract's JSON Schema."""

from __future__ import annotations

import os
from typing import Any

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import PoolDep
from api.schema import scan_batch_schema

router = APIRouter(tags=["meta"])


@router.get("/healthz", summary="Liveness and database reachability")
async def healthz(pool: PoolDep) -> dict[str, Any]:
    async with pool.acquire() as conn:
        await conn.fetchval("SELECT 1")
    return {"status": "ok"}


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics() -> Response:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        data = generate_latest(registry)
    else:
        data = generate_latest()
    return Response(data, media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/schema/scan-batch.json", summary="JSON Schema of the ingest contract")
async def scan_batch_json_schema() -> dict[str, Any]:
    return scan_batch_schema()
