"""The programme's monthly statistics report (统计上报): what the county reports upward, as JSON
and as the XLSX a county official sends on. Operator tokens only (see docs/reports.md)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from pydantic import BaseModel, Field

from api.auth import Principal
from api.deps import CountyDep, PoolDep, PrincipalDep, require_role
from api.errors import ApiError, documented
from api.report_xlsx import report_xlsx
from domain.county import County
from projections import ledger_queries
from projections import report_queries as q

router = APIRouter(tags=["statistics report"])
READERS = ("manager", "finance", "finance-admin", "admin")
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"

UPWARD_NOTE = ("Upward (农产品上行) parcels are those handed in at a village point "
               "(`parcel.handed_in`) or whose first scan is a hand-in (`received`) there, the rule "
               "of the SLA's village → county leg; every other parcel is downward.")
PRODUCE_NOTE = ("Upward produce: parcels handed in (`parcel.handed_in`) on a county day of the "
                "month, each once, with their weight; cold store, cold chain and air cut-off are "
                "the SLA's up_cold_store, cold_chain and air_cutoff legs counted as /v1/sla/rates "
                "counts them (late includes legs still open past due at `as_of`).")
NODE_NOTE = ("Per node: distinct parcels scanned there in the month; a parcel scanned at several "
             "nodes counts at each, so node rows do not add up to the brand totals.")
COVERAGE_NOTE = ("run_covered: village points on a route one of whose fixed runs departed in the "
                 "month (the headline rate); run_arrived: a run's arrival was scanned at the point; "
                 "parcels_reached: a parcel's township → village leg ended there (as /v1/sla/runs "
                 "counts a day).")
ASSUMPTION = ("Counterfactual: without co-delivery each brand would have run a vehicle of its own "
              "on every run it shared, at the cost the ledger booked for that run (the county "
              "file's [settlement] trip_cost: {fixed} fen per run + {per_km} fen per km of the "
              "route). Saving = that sum − what the shared runs cost. Runs that carried nothing "
              "are a cost with no saving.")


ERRORS = documented(413, notes={
    400: "`month` missing or not YYYY-MM (2000–2099), or `now` not an ISO-8601 time with an "
         "offset (`invalid_month`, `invalid_now`)",
    401: "No token, or an unknown, revoked or expired one",
    403: "Not an operator token: the role is not manager, finance, finance-admin or admin "
         "(`forbidden_role`), or the token is scoped to brands (`forbidden_scope`)",
    503: "Storage unavailable; retry after `Retry-After`",
})


class BrandVolume(BaseModel):
    brand: str
    registered: int = Field(description="manifests (parcel.registered) dated in the month")
    down: int = Field(description="downward parcels scanned in the month")
    to_village: int = Field(description="downward parcels stored or delivered at a village point")
    delivered: int = Field(description="downward parcels signed for (delivered) in the month")
    up: int = Field(description="upward parcels (农产品上行) scanned in the month")
    up_to_county: int = Field(description="upward parcels scanned at the county centre")


class VolumeTotals(BaseModel):
    registered: int
    down: int
    to_village: int
    delivered: int
    up: int
    up_to_county: int


class NodeVolume(BaseModel):
    node_id: str
    name: str | None
    tier: str | None
    township: str | None
    down: int
    up: int


class Volumes(BaseModel):
    by_brand: list[BrandVolume]
    brand_total: VolumeTotals
    by_node: list[NodeVolume]
    upward_note: str
    node_note: str


class CoverageCounts(BaseModel):
    villages: int
    on_timetable: int
    run_covered: int
    run_arrived: int
    parcels_reached: int
    coverage_permille: int | None


class TownshipCoverage(CoverageCounts):
    township: str
    name: str


class Coverage(CoverageCounts):
    by_township: list[TownshipCoverage]
    note: str


class LegRate(BaseModel):
    leg: str
    name: str
    direction: str
    on_time: int
    late: int = Field(description="finished late, or still open past due at `as_of`")
    overdue_open: int
    rate_permille: int | None


class RunPunctuality(BaseModel):
    moves: int
    punctual: int
    rate_permille: int | None
    tolerance_minutes: int


class OnTime(BaseModel):
    legs: list[LegRate]
    runs: RunPunctuality


class ProduceClass(BaseModel):
    class_: str | None = Field(alias="class", description="the [perishables] class; null: none")
    name: str | None
    parcels: int
    weight_g: int


class ProduceBrand(BaseModel):
    brand: str
    parcels: int
    weight_g: int


class LegFigures(BaseModel):
    on_time: int
    late: int = Field(description="finished late, or still open past due at `as_of`")
    overdue_open: int
    rate_permille: int | None


class AirCutoff(BaseModel):
    made: int = Field(description="air_loaded at the centre by the cut-off")
    missed: int = Field(description="missed the cut-off (waits a day), or still open past it")
    overdue_open: int
    rate_permille: int | None


class UpwardProduce(BaseModel):
    parcels: int = Field(description="parcels handed in at village points in the month")
    weight_g: int
    kg: float = Field(description="weight_g in kg, to one decimal")
    perishable: int = Field(description="of them, of a perishable class")
    by_class: list[ProduceClass]
    by_brand: list[ProduceBrand]
    cold_store: LegFigures = Field(description="hand-in → first cold_in at the centre in time")
    cold_chain: LegFigures = Field(description="cold-chain compliance: time out of the cold within budget")
    air_cutoff: AirCutoff
    note: str


class ProblemReason(BaseModel):
    reason: str
    label: str
    parcels: int
    closed: int


class Problems(BaseModel):
    by_reason: list[ProblemReason]
    total: int
    closed: int


class BrandSaving(BaseModel):
    brand: str
    trips: int
    shares_fen: int = Field(description="its shares of the runs, as booked (its statement's trip_cost)")
    own_vehicle_fen: int = Field(description="the booked cost of every run it rode, whole")
    saving_fen: int


class TripCostRule(BaseModel):
    fixed_fen: int
    per_km_fen: int
    basis: str


class CostSaving(BaseModel):
    period: str | None
    status: str | None
    trips: int
    shared_trips: int
    empty_trips: int
    shared_cost_fen: int
    own_vehicles_fen: int
    saving_fen: int
    saving_permille: int | None
    unallocated_fen: int
    adjustments_fen: int
    by_brand: list[BrandSaving]
    trip_cost: TripCostRule | None
    assumption: str


class MonthlyReport(BaseModel):
    county: str
    county_code: str
    month: str
    first_day: str
    last_day: str
    utc_offset: str
    generated_at: str
    as_of: str
    volumes: Volumes
    coverage: Coverage
    on_time: OnTime
    problems: Problems
    upward: UpwardProduce
    cost_saving: CostSaving
    notes: list[str]


PROBLEM_LABELS = {"address_unknown": "地址不详", "refused": "拒收", "damaged": "破损", "lost": "丢失",
                  "no_consent": "未同意代收", "recipient_unreachable": "联系不上收件人",
                  "other": "其他", "unspecified": "未注明"}


def _month(county: County, month: str | None) -> q.Month:
    if not month:
        raise ApiError(400, "invalid_month", "give the month as ?month=YYYY-MM, e.g. 2026-11",
                       "$.month")
    try:
        return q.Month.parse(month, county.utc_offset_minutes)
    except ValueError as exc:
        raise ApiError(400, "invalid_month", str(exc), "$.month") from None


def _as_of(county: County, now: str | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(now)
        if parsed.tzinfo is None:
            raise ValueError("naive")
        # Both conversions the report makes, so that a time at the calendar's edge is refused here.
        parsed.astimezone(UTC), parsed.astimezone(timezone(timedelta(minutes=county.utc_offset_minutes)))
    except (ValueError, OverflowError):
        raise ApiError(400, "invalid_now", "'now' must be an ISO-8601 time with a UTC offset,"
                       " e.g. 2026-12-01T08:00:00+08:00", "$.now") from None
    return parsed


def _operator(principal: Principal) -> None:
    require_role(principal, *READERS)
    if principal.brand_scope != "*":
        raise ApiError(403, "forbidden_scope", "the monthly report is the county's whole figures;"
                       " a brand's token reads its own statements and SLA slice instead")


async def build_report(pool: Any, county: County, month: q.Month, now: datetime) -> dict[str, Any]:
    """Every section of the report, read in one read-only snapshot."""
    tz = timezone(timedelta(minutes=county.utc_offset_minutes))
    settlement = county.settlement
    period = None
    if settlement is not None:
        try:
            period = settlement.period_by_key(month.key).key
        except ValueError:
            period = None  # settlement periods are not calendar months here
    async with q.snapshot(pool) as conn:
        volumes = await q.volumes(conn, county, month)
        coverage = await q.coverage(conn, county, month)
        on_time = (await q.on_time(conn, county, month, now) if county.sla is not None
                   else {"legs": [], "runs": {"moves": 0, "punctual": 0, "rate_permille": None,
                                              "tolerance_minutes": 0}})
        problems = await q.problems(conn, month, now)
        upward = await q.upward(conn, county, month, now)
        lines = await q.trip_lines(conn, period) if period else []
        status = await ledger_queries.period_status(conn, period) if period else None
    rule = settlement.version_on(month.first).trip_cost if settlement is not None else None
    notes = [UPWARD_NOTE, NODE_NOTE, COVERAGE_NOTE, PRODUCE_NOTE]
    if period is None:
        notes.append("The county's settlement periods are not calendar months (or it has no "
                      "settlement): the cost saving is left empty.")
    return {
        "county": county.name, "county_code": county.code, "month": month.key,
        "first_day": str(month.first), "last_day": str(month.last),
        "utc_offset": f"{'+' if county.utc_offset_minutes >= 0 else '-'}"
                      f"{abs(county.utc_offset_minutes) // 60:02d}:{abs(county.utc_offset_minutes) % 60:02d}",
        "generated_at": datetime.now(UTC).astimezone(tz).isoformat(timespec="seconds"),
        "as_of": now.astimezone(tz).isoformat(timespec="seconds"),
        "volumes": {**volumes, "upward_note": UPWARD_NOTE, "node_note": NODE_NOTE},
        "coverage": {**coverage, "note": COVERAGE_NOTE},
        "on_time": on_time,
        "problems": {"by_reason": [{**p, "label": PROBLEM_LABELS.get(p["reason"], p["reason"])}
                                   for p in problems],
                     "total": sum(p["parcels"] for p in problems),
                     "closed": sum(p["closed"] for p in problems)},
        "upward": {**upward, "note": PRODUCE_NOTE},
        "cost_saving": {
            "period": period, "status": status, **q.co_delivery_saving(lines),
            "trip_cost": ({"fixed_fen": rule.fixed_fen, "per_km_fen": rule.per_km_fen,
                           "basis": rule.basis} if rule else None),
            "assumption": ASSUMPTION.format(fixed=rule.fixed_fen if rule else "?",
                                            per_km=rule.per_km_fen if rule else "?"),
        },
        "notes": notes,
    }


MONTH_PATTERN = r"^20[0-9]{2}-(0[1-9]|1[0-2])$"
# The query is read by hand so that every bad value is our 400 with its own code, not the
# framework's 422; the OpenAPI document still says exactly what is accepted.
PARAMETERS = [
    {"name": "month", "in": "query", "required": True,
     "description": "The month, in county time: YYYY-MM (2000-01 to 2099-12)",
     "schema": {"type": "string", "pattern": MONTH_PATTERN}, "example": "2026-11"},
    {"name": "now", "in": "query", "required": False,
     "description": "Read open SLA legs and problem close-outs as at this time (ISO-8601 with a"
                    " UTC offset); default: the time of the request",
     "schema": {"type": "string", "format": "date-time"}, "example": "2026-12-01T08:00:00+08:00"},
]


async def _args(request: Request, principal: PrincipalDep,
                county: CountyDep) -> tuple[q.Month, datetime]:
    """Who may ask first (401, 403), then what was asked (400)."""
    _operator(principal)
    params = request.query_params
    return _month(county, params.get("month")), _as_of(county, params.get("now"))


ArgsDep = Annotated[tuple[q.Month, datetime], Depends(_args)]


@router.get("/v1/reports/monthly", summary="The programme's monthly statistics (统计上报)",
            response_model=MonthlyReport, responses=ERRORS,
            openapi_extra={"parameters": PARAMETERS})
async def monthly(pool: PoolDep, county: CountyDep, args: ArgsDep) -> dict[str, Any]:
    return await build_report(pool, county, *args)


@router.get("/v1/reports/monthly.xlsx", summary="The monthly statistics as an XLSX workbook",
            response_class=Response, openapi_extra={"parameters": PARAMETERS},
            responses={**ERRORS, 200: {"content": {XLSX: {"schema": {"type": "string",
                                                                     "format": "binary"}}},
                                       "description": "The workbook, one sheet per table"}})
async def monthly_xlsx(pool: PoolDep, county: CountyDep, args: ArgsDep) -> Response:
    report = await build_report(pool, county, *args)
    name = f"gongpei-{county.code}-{report['month']}-statistics.xlsx"
    return Response(report_xlsx(report), media_type=XLSX,
                    headers={"Content-Disposition": f'attachment; filename="{name}"'})
