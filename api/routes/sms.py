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
from api.errors import ApiError
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
             responses={401: {"description": "Wrong or missing key"}})
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
             responses={401: {"description": "Wrong or missing key"}})
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


@router.get("/v1/parcels/{waybill}/sms", summary="The SMS that named this parcel (phones masked)")
async def parcel_sms(principal: PrincipalDep, pool: PoolDep,
                     waybill: str = Path(pattern=WAYBILL_PATTERN)) -> dict[str, Any]:
    require_role(principal, *HISTORY_READERS)
    async with scoped(pool, principal.brand_scope) as conn:
        return await sms_queries.parcel_history(conn, waybill)


@router.get("/v1/sms/stats", summary="SMS per county day by outcome, and failures by code")
async def sms_stats(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                    start: Annotated[date | None, Query(alias="from")] = None,
                    end: Annotated[date | None, Query(alias="to")] = None) -> dict[str, Any]:
    require_role(principal, *STAFF)
    today = datetime.now(timezone(timedelta(minutes=county.utc_offset_minutes))).date()
    for name, value in (("from", start), ("to", end)):
        if value is not None and not FIRST_DAY <= value <= LAST_DAY:
            raise ApiError(422, "invalid_range", f"'{name}' must be between {FIRST_DAY} and"
                           f" {LAST_DAY}", f"$.{name}")
    end = end or today
    start = start or max(FIRST_DAY, end - timedelta(days=6))
    if start > end or (end - start).days > 366:
        raise ApiError(422, "invalid_range", "'from' must not be after 'to', and a year at most",
                       "$.from")
    async with scoped(pool, principal.brand_scope) as conn:
        days = await sms_queries.day_counts(conn, start, end, county.utc_offset_minutes)
        failed = await sms_queries.failures(conn, start, end, county.utc_offset_minutes)
    return {"from": start.isoformat(), "to": end.isoformat(),
            "days": [{"day": k, **v} for k, v in sorted(days.items())], "failures": failed}


@router.get("/v1/sms/summary", summary="Today's SMS for the dashboard: by state, overdue, call list")
async def sms_summary(principal: PrincipalDep, pool: PoolDep, county: CountyDep) -> dict[str, Any]:
    require_role(principal, *HISTORY_READERS)
    async with scoped(pool, principal.brand_scope) as conn:
        return await sms_queries.summary(conn, county, datetime.now(UTC))


@router.get("/v1/sms/call-list", summary="Parcels the station keeper should phone about")
async def call_list(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                    node_id: NodeId = None) -> dict[str, Any]:
    require_role(principal, *STAFF)
    async with scoped(pool, principal.brand_scope) as conn:
        return {"parcels": await sms_queries.call_list(conn, county, node_id)}


@router.get("/v1/sms/no-consent", summary="Parcels at village points without consent to station"
            " delivery (the SMS offered home delivery)")
async def no_consent(principal: PrincipalDep, pool: PoolDep,
                     node_id: NodeId = None) -> dict[str, Any]:
    require_role(principal, *STAFF)
    async with scoped(pool, principal.brand_scope) as conn:
        return {"parcels": await sms_queries.no_consent(conn, node_id)}
