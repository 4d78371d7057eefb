"""On-time delivery for the county logistics manager (and each brand, for its own parcels).

Every time in these answers is county time (the county's UTC offset, +08:00 for 海城), for the
people who read them; `now=` and `day=` are ISO 8601 and anything else is 400."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from pathlib import Path as FsPath
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import HTMLResponse

from api.auth import Principal
from api.deps import CountyDep, PoolDep, PrincipalDep, require_role
from api.errors import ApiError, token_route
from domain.county import County
from projections import sla_queries as q

router = APIRouter(tags=["on-time delivery"])
VIEWERS = ("manager", "admin", "brand")
DASHBOARD = FsPath(__file__).resolve().parents[1] / "static" / "dashboard.html"
ID = r"^[A-Za-z0-9._:-]{1,64}$"
YEARS = range(2000, 2100)  # far enough either way; outside it date arithmetic would overflow

TIMES = "Times in the answer are county time (ISO 8601 with the county's offset, +08:00)."
NOW_DOC = ("Replay the clock: an ISO 8601 time with its UTC offset, e.g. 2026-11-11T07:00:00+08:00"
           " (encode '+' as %2B). Default: the present. Anything else is 400 `invalid_time`.")
DAY_DOC = ("A county-time day, YYYY-MM-DD. Default: today in county time (at `now`)."
           " Anything else is 400 `invalid_date`.")
ERRORS: dict[int | str, dict[str, Any]] = token_route(400, 404, notes={
    400: "`now`, `day`, `from` or `to` is not an ISO 8601 time or day (`invalid_time`,"
         " `invalid_date`), or the range is longer than a year",
    404: "no SLA configuration, or a brand this token may not see"})


def _county_sla(county: County) -> Any:
    if county.sla is None:
        raise ApiError(404, "not_found", "this county has no SLA configuration")
    return county.sla


def _tz(county: County) -> timezone:
    return timezone(timedelta(minutes=county.utc_offset_minutes))


def parse_now(raw: str | None, field: str = "now") -> datetime:
    """An ISO 8601 time with offset, or 400; never a number read as seconds since 1970."""
    if raw is None:
        return datetime.now(UTC)
    try:
        at = (datetime.fromisoformat(raw.strip())
              if len(raw) <= 40 and "-" in raw and ":" in raw else None)
    except ValueError:
        at = None
    if at is None or at.year not in YEARS:
        hint = " ('+' must be sent as %2B)" if " " in raw.strip() else ""
        raise ApiError(400, "invalid_time", f"'{field}' must be an ISO 8601 time with its UTC offset,"
                       f" e.g. 2026-11-11T07:00:00+08:00{hint}", f"$.{field}")
    if at.tzinfo is None:
        raise ApiError(400, "invalid_time", f"'{field}' needs a UTC offset, e.g. +08:00", f"$.{field}")
    return at


def parse_day(raw: str | None, field: str = "day") -> date | None:
    """A YYYY-MM-DD day, or 400."""
    if raw is None:
        return None
    try:
        day = date.fromisoformat(raw) if len(raw) == 10 else None
    except ValueError:
        day = None
    if day is None or day.year not in YEARS:
        raise ApiError(400, "invalid_date", f"'{field}' must be a day as YYYY-MM-DD", f"$.{field}")
    return day


def _today(county: County, now: datetime) -> date:
    return now.astimezone(_tz(county)).date()


def county_time(value: Any, tz: timezone) -> Any:
    """The answer with every datetime in county time, as ISO 8601."""
    if isinstance(value, datetime):
        return value.astimezone(tz).isoformat()
    if isinstance(value, dict):
        return {k: county_time(v, tz) for k, v in value.items()}
    if isinstance(value, list):
        return [county_time(v, tz) for v in value]
    return value


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
# What the schema can say of a day and a time; the calendar (2026-02-30) and the one-year range
# are checked by the route (400).
DAY_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
NOW_PATTERN = (r"^20[0-9]{2}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]"
               r"(:[0-5][0-9](\.[0-9]{1,6})?)?(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])$")
# Stated in the schema, checked by the route (parse_now, parse_day): a bad one is this route's
# own 400 `invalid_time` / `invalid_date`, not the framework's 422.
NowParam = Annotated[str | None, Query(description=NOW_DOC,
                                       json_schema_extra={"pattern": NOW_PATTERN})]
DayParam = Annotated[str | None, Query(description=DAY_DOC,
                                       json_schema_extra={"pattern": DAY_PATTERN})]


@router.get("/v1/sla/rates", summary="On-time rate per day and leg, in any slice",
            description="Late counts legs that ended late and legs still open past their due time"
                        " (at `now`). `from`..`to` is at most a year (366 days; default: the 14"
                        f" days to `to`, which defaults to today); longer is 400 `invalid_range`."
                        f" {TIMES}", responses=ERRORS)
async def rates(principal: PrincipalDep, pool: PoolDep, county: CountyDep, where: SliceDep,
                first: Annotated[str | None, Query(
                    alias="from", description=DAY_DOC,
                    json_schema_extra={"pattern": DAY_PATTERN})] = None,
                last: Annotated[str | None, Query(
                    alias="to", description=DAY_DOC,
                    json_schema_extra={"pattern": DAY_PATTERN})] = None,
                now: NowParam = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    _county_sla(county)
    at = parse_now(now)
    last_day = parse_day(last, "to") or _today(county, at)
    first_day = parse_day(first, "from") or last_day - timedelta(days=13)
    if (last_day - first_day).days > 366 or last_day < first_day:
        raise ApiError(400, "invalid_range", "'from'..'to' must be a range of at most a year,"
                       " 'from' not after 'to'", "$.from")
    async with q.snapshot(pool, principal.brand_scope) as conn:
        return county_time({"from": str(first_day), "to": str(last_day), "now": at,
                            "rates": await q.rates(conn, first_day, last_day, at, where)},
                           _tz(county))


@router.get("/v1/sla/breaches", summary="Late legs of a day, with their causes",
            description="Every late leg (ended late, or open past its due time at `now`) has one"
                        " cause of docs/sla.md; `causes` adds up to the day's late count."
                        f" {TIMES}", responses=ERRORS)
async def breaches(principal: PrincipalDep, pool: PoolDep, county: CountyDep, where: SliceDep,
                   day: DayParam = None, now: NowParam = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    _county_sla(county)
    at = parse_now(now)
    the_day = parse_day(day) or _today(county, at)
    async with q.snapshot(pool, principal.brand_scope) as conn:
        return county_time({"day": str(the_day), "now": at,
                            "breaches": await q.breaches(conn, the_day, at, where),
                            "causes": await q.causes(conn, the_day, where, now=at)}, _tz(county))


@router.get("/v1/sla/at-risk", summary="Legs at risk of breaching, least time left first",
            description="The legs that at `now` had used more than their warning share of their"
                        " time, were not yet due and had not ended (a past `now` replays the"
                        f" queue as it was then). {TIMES}", responses=ERRORS)
async def at_risk(principal: PrincipalDep, pool: PoolDep, county: CountyDep, where: SliceDep,
                  now: NowParam = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    _county_sla(county)
    at = parse_now(now)
    async with q.snapshot(pool, principal.brand_scope) as conn:
        return county_time({"now": at, "at_risk": await q.at_risk(conn, at, where, tz=_tz(county))},
                           _tz(county))


@router.get("/v1/sla/runs", summary="Fixed-run punctuality and village coverage for a day",
            description="Every recorded trip of the day (late ones first) and every timetabled run"
                        f" with no trip recorded, with route names. {TIMES}", responses=ERRORS)
async def runs(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
               day: DayParam = None, now: NowParam = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    sla = _county_sla(county)
    at = parse_now(now)
    the_day = parse_day(day) or _today(county, at)
    async with q.snapshot(pool, principal.brand_scope) as conn:
        return county_time({"day": str(the_day),
                            **await q.runs(conn, the_day, sla.run_tolerance_minutes, county, at),
                            "coverage": await q.coverage(conn, county, the_day)}, _tz(county))


@router.get("/v1/sla/dashboard", summary="Everything the manager's dashboard shows, in one answer",
            description="All panels are read in one snapshot and count late legs the same way, so"
                        " the townships, villages and causes add up to the headline per leg."
                        f" `brand` (or a brand's token) filters every panel. {TIMES}",
            responses=ERRORS)
async def dashboard_data(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                         where: SliceDep, day: DayParam = None,
                         now: NowParam = None) -> dict[str, Any]:
    require_role(principal, *VIEWERS)
    _county_sla(county)
    at = parse_now(now)
    the_day = parse_day(day) or _today(county, at)
    async with q.snapshot(pool, principal.brand_scope) as conn:
        answer = await q.dashboard(conn, county, the_day, at, where)
    # A brand's token sees only its brands' parcels: the page says so.
    answer["scope_brands"] = None if principal.brand_scope == "*" else sorted(principal.brands)
    return county_time(answer, _tz(county))  # type: ignore[no-any-return]


@router.get("/dashboard", response_class=HTMLResponse, include_in_schema=False)
async def dashboard_page() -> HTMLResponse:
    return HTMLResponse(DASHBOARD.read_text(encoding="utf-8"))
