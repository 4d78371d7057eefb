"""Tenancy is enforced by PostgreSQL itself, for the services' own non-superuser roles."""

from __future__ import annotations

import asyncio

import asyncpg

from entrypoints.platform import Platform
from tests.conftest import wait_for


def _as_app(platform: Platform, scope: str | None) -> tuple[set[str], int, bool]:
    """Parcels' brands as the API's role sees them, tracking events as the worker's role sees
    them (the API's may not read those at all), and whether either role bypasses RLS."""
    async def one(service: str, sql: str) -> tuple[list[asyncpg.Record], bool]:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url_for(service))
        try:
            superuser = await conn.fetchval("SELECT rolsuper OR rolbypassrls FROM pg_roles"
                                            " WHERE rolname = current_user")
            async with conn.transaction():
                if scope is not None:
                    await conn.execute("SELECT set_config('gongpei.brand_scope', $1, true)", scope)
                return await conn.fetch(sql), superuser
        finally:
            await conn.close()

    async def go() -> tuple[set[str], int, bool]:
        parcels, api_super = await one("api", "SELECT brand FROM parcels")
        events, worker_super = await one("worker", "SELECT count(*) AS n FROM tracking_events")
        return {r["brand"] for r in parcels}, events[0]["n"], api_super or worker_super

    return asyncio.run(go())


def test_given_the_service_roles_then_rls_scopes_rows_and_denies_by_default(
        platform: Platform, client, tokens) -> None:
    from infra.county_file import load_county
    from infra.settings import DEMO_COUNTY
    from tests.integration.test_spine import _ingest, _lifecycle

    _, regs, scans = _lifecycle(load_county(DEMO_COUNTY), seed=21, parcels=24, steps=1)
    _ingest(client, tokens, regs, scans)
    wait_for(lambda: len(_as_app(platform, "*")[0]) >= 2, 10.0, "parcels of several brands")

    _, _, superuser = _as_app(platform, "*")
    assert not superuser
    assert _as_app(platform, "ZTO")[0] <= {"ZTO"}
    assert _as_app(platform, "ZTO,SF")[0] <= {"ZTO", "SF"}
    nothing, no_events, _ = _as_app(platform, None)
    assert nothing == set() and no_events == 0
    assert _as_app(platform, "")[0] == set()
