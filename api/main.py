"""The API's composition root: build a FastAPI app for given settings and county."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import fields

from fastapi import FastAPI

from api import errors
from api.access_log import AccessLog, AccessLogMiddleware
from api.limits import Limits, LimitSettings
from api.routes import access_log, conflicts, ingest, meta, parcels, reports, settlement, sla, sms
from domain.county import County
from infra.db import create_pool
from infra.pii import Keyring
from infra.settings import Settings

DESCRIPTION = """Gongpei (共配) — parcel tracking and co-delivery for a county's rural logistics.

Handhelds upload scans with `POST /v1/scan-batches`; anyone with the right token reads a parcel with
`GET /v1/parcels/{waybill}`; villagers look a parcel up with the waybill and the last four digits
of their phone at `POST /v1/public/track`."""


def create_app(settings: Settings, county: County) -> FastAPI:
    log = AccessLog(retention_days=settings.access_log_retention_days)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.pool = await create_pool(settings.database_url_for("api"), min_size=2,
                                           max_size=10)
        log.start(app.state.pool)
        try:
            yield
        finally:
            await log.stop(app.state.pool)
            await app.state.pool.close()

    app = FastAPI(title="Gongpei API", version="0.1.0", description=DESCRIPTION,
                  lifespan=lifespan)
    app.state.settings = settings
    app.state.county = county
    # Phones are sealed at ingest to the master public key: no key, no API (SettingsError).
    app.state.pii = Keyring.from_settings(settings, county.utc_offset_minutes)
    app.state.limits = Limits(LimitSettings(**{f.name: getattr(settings, f.name)
                                               for f in fields(LimitSettings)}))
    app.state.trusted_proxies = settings.trusted_proxy_set()
    app.state.access_log = log
    # No request body is read past the upload limit, token or not (the public lookup's too).
    app.add_middleware(errors.BodyLimitMiddleware, limit=settings.max_body_bytes)
    app.add_middleware(AccessLogMiddleware, access_log=log, limits=app.state.limits,
                       trusted_proxies=app.state.trusted_proxies)
    errors.install(app)
    for router in (ingest.router, parcels.router, settlement.router, sla.router, sms.router,
                   conflicts.router, access_log.router, reports.router):
        app.include_router(router, responses=errors.documented(429))
    app.include_router(meta.router)
    return app
