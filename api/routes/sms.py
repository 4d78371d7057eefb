"""Arrival SMS: delivery reports in from providers; history, daily counts, the station keeper's
call list and the parcels without consent out, for staff. Phones only ever masked."""

from __future__ import annotations

import hmac
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Body, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from api.deps import CountyDep, PoolDep, PrincipalDep, require_role
from api.errors import ApiError, documented, token_route
from api.models import Answer
from api.routes.parcels import WAYBILL_PATTERN
from projections import journal, sms_queries, sms_receipts
from projections.ledger_queries import scoped
from projections.metrics import SMS_FAILURES, SMS_OUTCOMES

router = APIRouter(tags=["sms"])
STAFF = ("manager", "admin")
HISTORY_READERS = ("brand", "brand-system", "manager", "admin")
BEIJING = timezone(timedelta(hours=8))


# Ids and codes are printable ASCII: anything else (a NUL byte, say) is refused here with a 422,
# not by the database.
ProviderId = Annotated[str, Field(pattern=r"^[!-~]{1,64}$")]
Code = Annotated[str, Field(pattern=r"^[ -~]{0,64}$")]
NodeId = Annotated[str | None, Query(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
FIRST_DAY, LAST_DAY = date(2000, 1, 1), date(2100, 12, 31)
MAX_RANGE_DAYS = 366
# The days a county day may be: what the checks in sms_stats allow, said in the schema too.
DAY_PATTERN = r"^(20[0-9]{2}|2100)-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$"
RECEIPT_ERRORS = documented(400, 413, 415, 422, 503, notes={
    401: "The receipt URL's key is wrong or missing (`invalid_key`)"})


class ReceiptCounts(Answer):
    accepted: int = Field(description="reports new to the journal")
    repeated: int = Field(description="reports already there (a provider's retry)")
    unknown: int = Field(description="reports naming no SMS known here")


class AliyunAnswer(ReceiptCounts):
    code: int = Field(description="0: Aliyun will not push the batch again")
    msg: str


class TencentAnswer(ReceiptCounts):
    result: int = Field(description="0: taken; 1: some reports name no SMS known yet, push again")
    errmsg: str


class Arrival(Answer):
    node_id: str
    pickup_code: str | None = None
    waiting: bool
    stored_at: str | None = None
    reminders: int


class SmsMessage(Answer):
    sms_id: str
    kind: str
    node_id: str | None = None
    phone_masked: str | None = Field(None, examples=["138****5678"])
    state: str
    requested_at: str | None = None


class ParcelSms(Answer):
    waybill: str
    arrival: Arrival | None
    sms: list[SmsMessage]


class DayCounts(Answer):
    day: str
    requested: int
    submitted: int
    delivered: int
    failed: int
    cancelled: int
    reminders: int
    segments: int


class FailureCount(Answer):
    provider: str | None = None
    failure_code: str | None = None
    n: int


class SmsStats(Answer):
    from_: str = Field(alias="from")
    to: str
    days: list[DayCounts]
    failures: list[FailureCount]


class CallListEntry(Answer):
    waybill: str
    brand: str
    node_id: str
    node_name: str | None = None
    pickup_code: str | None = None
    stored_at: str | None = None
    reminders: int
    reason: str | None = None
    phone_masked: str | None = None


class CallList(Answer):
    parcels: list[CallListEntry]


class NoConsentEntry(Answer):
    waybill: str
    brand: str
    node_id: str | None = None
    pickup_code: str | None = None
    sms_id: str
    state: str
    phone_masked: str | None = None
    requested_at: str | None = None


class NoConsentList(Answer):
    parcels: list[NoConsentEntry]


class SmsSummary(Answer):
    day: str
    counts: dict[str, int]
    overdue: int = Field(description="due more than five minutes ago and still not with a provider")
    call_list_total: int
    call_list: list[CallListEntry]
    no_consent_total: int


class AliyunReport(BaseModel):
    """One item of Aliyun's SmsReport push. The phone number it carries is ignored, never kept."""

    model_config = ConfigDict(extra="ignore")

    success: StrictBool
    err_code: Code = ""
    biz_id: ProviderId
    out_id: Annotated[str, Field(pattern=r"^[!-~]{0,64}$")] = ""
    report_time: str | None = None


def _report_time(s: str | None, now: datetime) -> datetime:
    if not s:
        return now
    try:
        t = datetime.strptime(s, "%Y-%m-%d %H:%M:%S").replace(tzinfo=BEIJING)
    except ValueError:
        return now
    return t if FIRST_DAY.year <= t.year <= LAST_DAY.year else now  # a clock gone wrong


async def _receipts(request: Request, pool: asyncpg.Pool, provider: str, key: str,
                    receipts: list[sms_receipts.Receipt], skipped: int) -> dict[str, int]:
    """Journal events for a provider's pushed reports; counts of new, repeated and unknown."""
    expected = request.app.state.settings.sms_receipt_key
    if not expected or not hmac.compare_digest(key.encode(), expected.encode()):
        raise ApiError(401, "invalid_key", "the receipt URL's key is wrong")
    now = datetime.now(UTC)
    async with pool.acquire() as conn:
        events, unknown = await sms_receipts.receipt_events(conn, provider, receipts, now)
        async with conn.transaction():
            new = await journal.append(conn, events)
    for e in events:
        if e.event_id in new:
            if e.type == "sms.delivered":
                SMS_OUTCOMES.labels(outcome="delivered").inc()
            else:
                SMS_OUTCOMES.labels(outcome="failed").inc()
                SMS_FAILURES.labels(provider=provider, code=e.payload.provider_code,  # type: ignore[attr-defined]
                                    permanent="true").inc()
    return {"accepted": len(new), "repeated": len(events) - len(new), "unknown": unknown + skipped}


@router.post("/v1/sms/receipts/aliyun", summary="Delivery reports pushed by Aliyun (SmsReport)",
             response_model=AliyunAnswer, responses=RECEIPT_ERRORS)
async def aliyun_receipts(request: Request, pool: PoolDep,
                          reports: Annotated[list[AliyunReport], Body(max_length=1000)],
                          key: str = Query("", max_length=200)) -> dict[str, Any]:
    now = datetime.now(UTC)
    receipts = [sms_receipts.Receipt(r.out_id, r.biz_id, r.success, r.err_code or "UNKNOWN",
                                     _report_time(r.report_time, now))
                for r in reports if r.out_id]
    counts = await _receipts(request, pool, "aliyun", key, receipts, len(reports) - len(receipts))
    # Aliyun's push expects this answer; anything else and it pushes the batch again.
    return {"code": 0, "msg": "成功", **counts}


class TencentReport(BaseModel):
    """One item of Tencent Cloud's status callback. `mobile` is ignored, never kept."""

    model_config = ConfigDict(extra="ignore")

    report_status: Literal["SUCCESS", "FAIL"]
    errmsg: Code = ""
    sid: ProviderId
    user_receive_time: str | None = None


@router.post("/v1/sms/receipts/tencent", summary="Delivery reports pushed by Tencent Cloud SMS",
             response_model=TencentAnswer, responses=RECEIPT_ERRORS)
async def tencent_receipts(request: Request, pool: PoolDep,
                           reports: Annotated[list[TencentReport], Body(max_length=1000)],
                           key: str = Query("", max_length=200)) -> dict[str, Any]:
    now = datetime.now(UTC)
    receipts = [sms_receipts.Receipt("", r.sid, r.report_status == "SUCCESS",
                                     r.errmsg or "UNKNOWN", _report_time(r.user_receive_time, now))
                for r in reports]
    counts = await _receipts(request, pool, "tencent", key, receipts, 0)
    # Tencent's reports name only its own id (SerialNo). One we cannot place yet (its send is
    # still being recorded after a crash) is refused, so Tencent pushes the batch again later;
    # the reports already placed are idempotent.
    if counts["unknown"]:
        return {"result": 1, "errmsg": f"{counts['unknown']} reports name no SMS known yet", **counts}
    return {"result": 0, "errmsg": "OK", **counts}


@router.get("/v1/parcels/{waybill}/sms", summary="The SMS that named this parcel (phones masked)",
            response_model=ParcelSms, responses=token_route())
async def parcel_sms(principal: PrincipalDep, pool: PoolDep,
                     waybill: str = Path(pattern=WAYBILL_PATTERN)) -> dict[str, Any]:
    require_role(principal, *HISTORY_READERS)
    async with scoped(pool, principal.brand_scope) as conn:
        return await sms_queries.parcel_history(conn, waybill)


def _day(name: str, value: str | None) -> date | None:
    """A day the pattern let through; only the calendar can still refuse it (2026-02-30)."""
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ApiError(422, "invalid_range", f"'{name}' is not a day of the calendar",
                       f"$.{name}") from None


@router.get("/v1/sms/stats", summary="SMS per county day by outcome, and failures by code",
            description=f"`from` and `to` are county days between {FIRST_DAY} and {LAST_DAY}, "
                        f"`from` not after `to`, at most {MAX_RANGE_DAYS} days apart (else 422 "
                        "`invalid_range`). Defaults: `to` today, `from` six days before `to`; "
                        f"with `from` alone, `to` is today or {MAX_RANGE_DAYS} days after `from`, "
                        "whichever is earlier.",
            response_model=SmsStats, response_model_by_alias=True,
            responses=token_route(notes={422: f"A day that is not YYYY-MM-DD between {FIRST_DAY}"
                                         f" and {LAST_DAY}, or `from` after `to`, or more than "
                                         f"{MAX_RANGE_DAYS} days (`invalid_range`)"}))
async def sms_stats(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                    first: Annotated[str | None, Query(
                        alias="from", description="first county day (inclusive)",
                        pattern=DAY_PATTERN, json_schema_extra={"format": "date"})] = None,
                    last: Annotated[str | None, Query(
                        alias="to", description="last county day (inclusive); at most "
                        f"{MAX_RANGE_DAYS} days after `from`", pattern=DAY_PATTERN,
                        json_schema_extra={"format": "date"})] = None) -> dict[str, Any]:
    require_role(principal, *STAFF)
    today = datetime.now(timezone(timedelta(minutes=county.utc_offset_minutes))).date()
    start, end = _day("from", first), _day("to", last)
    end = end or (min(today, start + timedelta(days=MAX_RANGE_DAYS)) if start else today)
    start = start or max(FIRST_DAY, end - timedelta(days=6))
    if start > end or (end - start).days > MAX_RANGE_DAYS:
        raise ApiError(422, "invalid_range", "'from' must not be after 'to', and a year at most",
                       "$.from")
    async with scoped(pool, principal.brand_scope) as conn:
        days = await sms_queries.day_counts(conn, start, end, county.utc_offset_minutes)
        failed = await sms_queries.failures(conn, start, end, county.utc_offset_minutes)
    return {"from": start.isoformat(), "to": end.isoformat(),
            "days": [{"day": k, **v} for k, v in sorted(days.items())], "failures": failed}


@router.get("/v1/sms/summary", summary="Today's SMS for the dashboard: by state, overdue, call list",
            response_model=SmsSummary, responses=token_route(parameters=False))
async def sms_summary(principal: PrincipalDep, pool: PoolDep, county: CountyDep) -> dict[str, Any]:
    require_role(principal, *HISTORY_READERS)
    async with scoped(pool, principal.brand_scope) as conn:
        return await sms_queries.summary(conn, county, datetime.now(UTC))


@router.get("/v1/sms/call-list", summary="Parcels the station keeper should phone about",
            response_model=CallList, responses=token_route())
async def call_list(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                    node_id: NodeId = None) -> dict[str, Any]:
    require_role(principal, *STAFF)
    async with scoped(pool, principal.brand_scope) as conn:
        return {"parcels": await sms_queries.call_list(conn, county, node_id)}


@router.get("/v1/sms/no-consent", summary="Parcels at village points without consent to station"
            " delivery (the SMS offered home delivery)", response_model=NoConsentList,
            responses=token_route())
async def no_consent(principal: PrincipalDep, pool: PoolDep,
                     node_id: NodeId = None) -> dict[str, Any]:
    require_role(principal, *STAFF)
    async with scoped(pool, principal.brand_scope) as conn:
        return {"parcels": await sms_queries.no_consent(conn, node_id)}
