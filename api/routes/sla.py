"""On-time delivery for the county logistics manager (and each brand, for its own parcels)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from api.auth import Principal
from api.deps import CountyDep, PoolDep, PrincipalDep, require_role
from api.errors import ApiError
from domain.county import County
from domain.sla import CAUSE_LABELS
from projections import ledger_queries
from projections import sla_queries as q

router = APIRouter(tags=["on-time delivery"])
VIEWERS = ("manager", "admin", "brand")
DASHBOARD = FsPath(__file__).resolve().parents[1] / "static" / "dashboard.html"
ID = r"^[A-Za-z0-9._:-]{1,64}$"


def _county_sla(county: County) -> Any:
    if county.sla is None:
        raise ApiError(404, "not_found", "this county has no SLA configuration")
    return county.sla


def _now(now: datetime | None) -> datetime:
    if now is not None and now.tzinfo is None:
        raise ApiError(422, "naive_timestamp", "'now' needs a UTC offset", "$.now")
    return now or datetime.now(UTC)


def _today(county: County, now: datetime) -> date:
    return now.astimezone(timezone(timedelta(minutes=county.utc_offset_minutes))).date()


def slice_for(principal: Principal, leg: str | None, route: str | None, township: str | None,
              village: str | None, brand: str | None) -> q.Slice:
    """The slice asked for, narrowed to the caller's own brand unless it sees every brand."""
    if principal.brand_scope != "*":  # a brand sees its own slice; row-level security agrees
        if brand is not None and brand not in principal.brands:
            raise ApiError(404, "not_found", f"no figures for {brand} are visible to this token")
        brand = brand or (min(principal.brands) if len(principal.brands) == 1 else None)
    return q.Slice(leg, route, township, village, brand)


async def _slice(principal: PrincipalDep, leg: str | None = Query(None, pattern=ID),
                 route: str | None = Query(None, pattern=ID),
                 township: str | None = Query(None, pattern=ID),
                 village: str | None = Query(None, pattern=ID),
                 brand: str | None = Query(None, pattern=r"^[A-Z]{2,8}$")) -> q.Slice:
    return slice_for(principal, leg, route, township, village, brand)


SliceDep = Annotated[q.Slice, Depends(_slice)]


@router.get("/v1/sla/rates", summary="On-time rate per day and leg, in any slice")
async def rates(principal: PrincipalDep, pool: PoolDep, county: CountyDep, where: SliceDep,
                first: Annotated[date | None, Query(alias="from")] = None,
                last: Annotated[date | None, Query(alias="to")] = None,
                now: datetime | None = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    _county_sla(county)
    now = _now(now)
    last = last or _today(county, now)
    first = first or last - timedelta(days=13)
    if (last - first).days > 366 or last < first:
        raise ApiError(422, "invalid_value", "'from'..'to' must be a range of at most a year", "$.from")
    async with ledger_queries.scoped(pool, principal.brand_scope) as conn:
        return {"from": str(first), "to": str(last), "rates": await q.rates(conn, first, last, now, where)}


@router.get("/v1/sla/breaches", summary="Late legs of a day, with their causes")
async def breaches(principal: PrincipalDep, pool: PoolDep, county: CountyDep, where: SliceDep,
                   day: date | None = None, now: datetime | None = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    _county_sla(county)
    now = _now(now)
    day = day or _today(county, now)
    async with ledger_queries.scoped(pool, principal.brand_scope) as conn:
        return {"day": str(day), "breaches": await q.breaches(conn, day, now, where),
                "causes": await q.causes(conn, day, where)}


@router.get("/v1/sla/at-risk", summary="Open legs at risk of breaching, least time left first")
async def at_risk(principal: PrincipalDep, pool: PoolDep, county: CountyDep, where: SliceDep,
                  now: datetime | None = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    _county_sla(county)
    now = _now(now)
    async with ledger_queries.scoped(pool, principal.brand_scope) as conn:
        return {"now": now.isoformat(), "at_risk": await q.at_risk(conn, now, where)}


@router.get("/v1/sla/runs", summary="Fixed-run punctuality and village coverage for a day")
async def runs(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
               day: date | None = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    sla = _county_sla(county)
    day = day or _today(county, _now(None))
    async with ledger_queries.scoped(pool, principal.brand_scope) as conn:
        return {"day": str(day), **await q.runs(conn, day, sla.run_tolerance_minutes),
                "coverage": await q.coverage(conn, county, day)}


@router.get("/v1/sla/dashboard", summary="Everything the manager's dashboard shows, in one answer")
async def dashboard_data(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                         where: SliceDep, day: date | None = None,
                         now: datetime | None = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    sla = _county_sla(county)
    now = _now(now)
    day = day or _today(county, now)
    names = {n.id: n.name for n in county.nodes.values()}
    async with ledger_queries.scoped(pool, principal.brand_scope) as conn:
        trend = await q.rates(conn, day - timedelta(days=13), day, now, where)
        main_leg = sla.legs[0].id
        result = {
            "county": county.name, "day": str(day), "now": now.isoformat(),
            "target_permille": sla.target_permille,
            "legs": [{"id": leg.id, "name": leg.name,
                      **next(({k: r[k] for k in ("on_time", "late", "rate_permille")}
                              for r in trend if r["leg"] == leg.id and r["day"] == str(day)),
                             {"on_time": 0, "late": 0, "rate_permille": None})}
                     for leg in sla.legs],
            "trend": trend,
            "townships": [{**a, "name": names.get(a["id"], a["id"])}
                          for a in await q.by_area(conn, day, main_leg, "township")],
            "villages": [{**a, "name": names.get(a["id"], a["id"])}
                         for a in await q.by_area(conn, day, "township_to_village", "village")],
            "causes": [{"cause": c, "label": CAUSE_LABELS.get(c, c), "count": n}
                       for c, n in (await q.causes(conn, day, where)).items()],
            "at_risk": [{**a, "village_name": names.get(a["village"] or "", a["village"])}
                        for a in await q.at_risk(conn, now, where, limit=30)],
            "runs": await q.runs(conn, day, sla.run_tolerance_minutes),
            "coverage": await q.coverage(conn, county, day),
        }
    return result


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))
