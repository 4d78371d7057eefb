"""Finance: statements (JSON, CSV, XLSX), trip drill-down, reconciliation, what-if, closing."""

from __future__ import annotations

import asyncio
import uuid
from collections import defaultdict
from datetime import timedelta, timezone
from typing import Any, Literal

from fastapi import APIRouter, Path, Query, Response
from pydantic import Field

from api.auth import Principal
from api.deps import CountyDep, PoolDep, PrincipalDep, require_role
from api.errors import ApiError, token_route
from api.exports import to_csv, to_xlsx
from api.models import Answer, Money
from domain.county import County
from domain.envelope import Envelope
from domain.events import PeriodClosed
from domain.settlement.config import BASES, Period
from domain.settlement.rules import TripManifest, trip_lines
from domain.settlement.statement import build_statement
from projections import journal
from projections import ledger_queries as q

router = APIRouter(tags=["settlement"])
FINANCE = ("finance", "finance-admin", "admin")
PERIOD = Path(pattern=r"^\d{4}-\d{2}(-\d{2}\.\.\d{4}-\d{2}-\d{2})?$", examples=["2026-11"],
              description="A settlement period's key: `YYYY-MM` for a month, or"
                          " `YYYY-MM-DD..YYYY-MM-DD` where the county's periods are not months."
                          " A key that is no period of the county is answered 404.")
NOT_FOUND = {404: "No such period in the county's settlement calendar (or no settlement), or "
                  "nothing of it visible to this token"}


class PeriodRow(Answer):
    period: str
    starts: str
    ends: str
    closed: bool
    closed_by: str | None = None


class Periods(Answer):
    periods: list[PeriodRow]


class KindTotal(Money):
    label: str


class TripShare(Money):
    route: str
    trips: int


class UpwardSummary(Money):
    parcels: int = Field(description="parcels handed in and charged the upward handling fee")
    kg: int = Field(description="started kilograms charged")
    cold_chain_parcels: int = Field(description="perishable parcels charged the cold-chain fee")


class Adjustment(Money):
    entry_id: str
    adjusts_period: str | None
    kind: str
    late_event_id: str | None = None


class StatementLine(Answer):
    entry_id: str
    posting_date: str
    kind: str
    ref: str | None = None
    amount_fen: int
    adjusts_period: str | None = None
    event_ids: list[str]


class Statement(Answer):
    brand: str
    period: str
    status: str
    parcels_by_tier: dict[str, int]
    totals: dict[str, KindTotal]
    trip_shares: list[TripShare] = Field(description="shared runs per route, and per bus line"
                                                     " for the runs of a bus line")
    upward: UpwardSummary = Field(description="the upward tariff's charges (农产品上行)")
    adjustments: list[Adjustment]
    adjustments_total: Money
    net: Money
    lines: list[StatementLine]


class TripLine(Answer):
    account: str
    brand: str | None = None
    route: str | None = None
    period: str
    fen: int
    event_ids: list[str]
    adjusts_period: str | None = None


class TripScan(Answer):
    event_id: str
    type: str
    brand: str | None = None
    waybill: str | None = None
    action: str | None = None
    node_id: str | None = None
    occurred_at: str


class Trip(Answer):
    trip_id: str
    lines: list[TripLine]
    scans: list[TripScan]


class TripMismatch(Answer):
    trip: str
    cost: int
    shares: int


class Reconciliation(Answer):
    period: str
    trips: int
    trips_mismatched: list[TripMismatch]
    entries: int
    entries_unbalanced: list[str]
    trial_balance_fen: int = Field(description="the sum of every line: 0 when the books balance")
    by_account_class_fen: dict[str, int]
    ok: bool


class BrandWhatIf(Answer):
    brand: str
    booked_fen: int
    what_if_fen: int
    difference_fen: int


class WhatIf(Answer):
    period: str
    basis: str
    trips: int
    books_unchanged: bool
    brands: list[BrandWhatIf]
    total_booked_fen: int
    total_what_if_fen: int


class Closing(Answer):
    period: str
    status: Literal["closed", "closing"] = Field(
        description="`closing`: the event is in the journal; the ledger freezes it shortly")
    event_id: str
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _period(county: County, key: str) -> Period:
    if county.settlement is None:
        raise ApiError(404, "not_found", "this county has no settlement configuration")
    try:
        return county.settlement.period_by_key(key)
    except (ValueError, OverflowError) as exc:
        # The key has the documented form but names no period of this county (or no day at
        # all): nothing is there, as for any unknown resource.
        raise ApiError(404, "not_found", str(exc), "$.period") from None


def _operator_only(principal: Principal) -> None:
    if principal.brand_scope != "*":
        raise ApiError(403, "forbidden_role", "only the operator's finance sees every brand's books")


@router.get("/v1/ledger/periods", summary="Settlement periods and whether they are closed",
            response_model=Periods, responses=token_route(parameters=False))
async def list_periods(principal: PrincipalDep, pool: PoolDep) -> dict[str, Any]:
    require_role(principal, *FINANCE)
    async with q.scoped(pool, principal.brand_scope) as conn:
        rows = await q.periods(conn)
    return {"periods": [{"period": r["period"], "starts": str(r["starts"]), "ends": str(r["ends"]),
                         "closed": r["closed"], "closed_by": r["closed_by"]} for r in rows]}


@router.get("/v1/statements/{period}/{brand}", summary="A brand's statement for a period",
            response_model=Statement,
            responses={200: {"content": {"text/csv": {"schema": {"type": "string"}},
                                         XLSX: {"schema": {"type": "string", "format": "binary"}}},
                             "description": "JSON (the default), CSV or XLSX, as `format` asks"},
                       **token_route(notes={**NOT_FOUND, 404: NOT_FOUND[404] + "; a brand's "
                                            "finance token sees its own brand only"})})
async def statement(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                    period: str = PERIOD, brand: str = Path(pattern=r"^[A-Z]{2,8}$"),
                    format: Literal["json", "csv", "xlsx"] = "json") -> Any:
    require_role(principal, *FINANCE)
    _period(county, period)
    if principal.brand_scope != "*" and brand not in principal.brands:
        raise ApiError(404, "not_found", f"no statement for {brand} is visible to this token")
    async with q.scoped(pool, principal.brand_scope) as conn:
        lines = await q.period_lines(conn, period)
        status = await q.period_status(conn, period)
    st = build_statement(brand, period, status, lines)
    name = f"gongpei-{brand}-{period}"
    if format == "csv":
        return Response(to_csv(st), media_type="text/csv; charset=utf-8",
                        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'})
    if format == "xlsx":
        return Response(to_xlsx(st), media_type=XLSX,
                        headers={"Content-Disposition": f'attachment; filename="{name}.xlsx"'})
    return st


@router.get("/v1/trips/{trip_id}", summary="A trip's cost, each brand's share, and the scans behind it",
            response_model=Trip, responses=token_route(notes={404: "No such trip visible to "
                                                               "this token"}))
async def trip(principal: PrincipalDep, pool: PoolDep,
               trip_id: str = Path(pattern=r"^[A-Za-z0-9._:-]{1,64}$")) -> dict[str, Any]:
    require_role(principal, *FINANCE)
    async with q.scoped(pool, principal.brand_scope) as conn:
        lines = await q.unit_lines(conn, f"trip:{trip_id}")
        scans = await q.trip_scans(conn, trip_id)
    if not lines and not scans:
        raise ApiError(404, "not_found", f"no trip {trip_id} is visible to this token")
    return {
        "trip_id": trip_id,
        "lines": [{"account": r["account"], "brand": r["brand"], "route": r["ref"],
                   "period": r["period"], "fen": r["amount_fen"], "event_ids": list(r["event_ids"]),
                   "adjusts_period": r["adjusts_period"]} for r in lines],
        "scans": [{"event_id": r["event_id"], "type": r["type"], "brand": r["brand"],
                   "waybill": r["waybill"], "action": r["body"]["payload"].get("action"),
                   "node_id": r["body"]["payload"].get("node_id"),
                   "occurred_at": r["body"]["occurred_at"]} for r in scans],
    }


@router.get("/v1/reconciliation/{period}", summary="Every trip's shares against its cost; trial balance",
            response_model=Reconciliation, responses=token_route(notes=NOT_FOUND))
async def reconciliation(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                         period: str = PERIOD) -> dict[str, Any]:
    require_role(principal, *FINANCE)
    _operator_only(principal)
    _period(county, period)
    async with q.scoped(pool, "*") as conn:
        lines = await q.period_lines(conn, period)
    trips: dict[str, dict[str, int]] = defaultdict(lambda: {"cost": 0, "shares": 0})
    entries: dict[str, int] = defaultdict(int)
    accounts: dict[str, int] = defaultdict(int)
    for r in lines:
        entries[r["entry_id"]] += r["amount_fen"]
        accounts[r["account"].split(":")[0]] += r["amount_fen"]
        if r["kind"] == "trip_cost" and r["adjusts_period"] is None:
            side = "cost" if r["account"].startswith("carrier:") else "shares"
            trips[r["unit"]][side] += -r["amount_fen"] if side == "cost" else r["amount_fen"]
    unbalanced = sorted(e for e, total in entries.items() if total != 0)
    mismatched = [{"trip": t, **v} for t, v in sorted(trips.items())
                  if v["cost"] != v["shares"] and v["shares"]]
    return {"period": period, "trips": len(trips), "trips_mismatched": mismatched,
            "entries": len(entries), "entries_unbalanced": unbalanced,
            "trial_balance_fen": sum(r["amount_fen"] for r in lines),
            "by_account_class_fen": dict(sorted(accounts.items())),
            "ok": not mismatched and not unbalanced and sum(r["amount_fen"] for r in lines) == 0}


@router.get("/v1/what-if/{period}", summary="The period's trips re-shared under another basis",
            response_model=WhatIf, responses=token_route(notes=NOT_FOUND))
async def what_if(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                  period: str = PERIOD, basis: str = Query(..., pattern="^(" + "|".join(BASES) + ")$")
                  ) -> dict[str, Any]:
    require_role(principal, *FINANCE)
    _operator_only(principal)
    _period(county, period)
    async with q.scoped(pool, "*") as conn:
        lines = await q.period_lines(conn, period)
        trip_ids = sorted({r["unit"].split(":", 1)[1] for r in lines
                           if r["unit"].startswith("trip:") and r["adjusts_period"] is None})
        inputs = await q.events_for_units(conn, trip_ids)
    events = [Envelope.from_wire(r["body"]) for r in inputs]
    regs = {e.payload.waybill: e for e in sorted(  # type: ignore[attr-defined]
        (e for e in events if e.type == "parcel.registered"), key=lambda e: (e.occurred_at, e.event_id))}
    booked: dict[str, int] = defaultdict(int)
    for r in lines:
        if r["kind"] == "trip_cost" and r["brand"] and r["adjusts_period"] is None:
            booked[r["brand"]] += r["amount_fen"]
    proposed: dict[str, int] = defaultdict(int)
    for t in trip_ids:
        manifest = TripManifest.from_events(t, [e for e in events if getattr(e.payload, "trip_id", None) == t])
        for line in trip_lines(manifest, regs, county, basis=basis):
            if line.brand and line.account.startswith("brand:"):
                proposed[line.brand] += line.amount.value
    brands = sorted(set(booked) | set(proposed))
    return {"period": period, "basis": basis, "trips": len(trip_ids), "books_unchanged": True,
            "brands": [{"brand": b, "booked_fen": booked[b], "what_if_fen": proposed[b],
                        "difference_fen": proposed[b] - booked[b]} for b in brands],
            "total_booked_fen": sum(booked.values()), "total_what_if_fen": sum(proposed.values())}


@router.post("/v1/periods/{period}/close", summary="Close a period (finance-admin); it is an event",
             response_model=Closing,
             responses=token_route(notes={**NOT_FOUND, 409: "Not ended yet (`period_not_ended`),"
                                          " or closed already (`already_closed`)"}))
async def close_period(principal: PrincipalDep, pool: PoolDep, county: CountyDep,
                       period: str = PERIOD) -> dict[str, Any]:
    require_role(principal, "finance-admin")
    p = _period(county, period)
    now = journal.recorded_now()
    today = now.astimezone(timezone(timedelta(minutes=county.utc_offset_minutes))).date()
    if p.end >= today:
        raise ApiError(409, "period_not_ended", f"{period} ends on {p.end}; close it after that day")
    async with pool.acquire() as conn:
        if await conn.fetchval("SELECT closed_seq FROM ledger_periods WHERE period = $1", period):
            raise ApiError(409, "already_closed", f"{period} is closed already")
        event = Envelope(event_id=str(uuid.uuid4()), type="period.closed", schema_version=1,
                         occurred_at=now, recorded_at=now, device_id=principal.device_id,
                         brand="*", operator_id=principal.name, payload=PeriodClosed(period=period))
        async with conn.transaction():
            await journal.append(conn, [event])
        for _ in range(100):  # the ledger worker freezes it within a tick or two
            if await conn.fetchval("SELECT closed_seq FROM ledger_periods WHERE period = $1", period):
                return {"period": period, "status": "closed", "event_id": event.event_id}
            await asyncio.sleep(0.1)
    return {"period": period, "status": "closing", "event_id": event.event_id}


