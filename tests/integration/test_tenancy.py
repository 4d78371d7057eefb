"""Tenancy is enforced by PostgreSQL itself, for the application's own non-superuser role."""

from __future__ import annotations

import asyncio

import asyncpg

from infra.platform import Platform
from tests.conftest import wait_for


def _as_app(platform: Platform, scope: str | None) -> tuple[set[str], int, bool]:
    async def go() -> tuple[set[str], int, bool]:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.app_database_url)
        try:
            superuser = await conn.fetchval("SELECT rolsuper OR rolbypassrls FROM pg_roles"
                                            " WHERE rolname = current_user")
            async with conn.transaction():
                if scope is not None:
                    await conn.execute("SELECT set_config('gongpei.brand_scope', $1, true)", scope)
                rows = await conn.fetch("SELECT brand FROM parcels")
                events = await conn.fetchval("SELECT count(*) FROM tracking_events")
            return {r["brand"] for r in rows}, events, superuser
        finally:
            await conn.close()

    return asyncio.run(go())


def test_given_the_app_role_then_rls_scopes_rows_and_denies_by_default(platform: Platform,
                                                                      client, tokens) -> None:
    from domain.county import load_county
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
