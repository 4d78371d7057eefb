"""Reads of the SLA read models: rates per day and leg in any slice, breaches, the at-risk queue,
run punctuality and village coverage. "now" is always an argument."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any

import asyncpg

from domain.county import County
from projections.metrics import SLA_AT_RISK, SLA_ON_TIME


@dataclass(frozen=True)
class Slice:
    """Which legs to count: any of route, township, village, brand may narrow it."""

    leg: str | None = None
    route_id: str | None = None
    township: str | None = None
    village: str | None = None
    brand: str | None = None

    def where(self, first_param: int, alias: str = "") -> tuple[str, list[Any]]:
        clauses, params = [], []
        for name in ("leg", "route_id", "township", "village", "brand"):
            value = getattr(self, name)
            if value is not None:
                params.append(value)
                clauses.append(f"{alias}{name} = ${first_param + len(params) - 1}")
        return (" AND " + " AND ".join(clauses)) if clauses else "", params


def _rate(on_time: int, late: int) -> int | None:
    return None if on_time + late == 0 else on_time * 1000 // (on_time + late)


async def rates(conn: asyncpg.Connection, first: date, last: date, now: datetime,
                where: Slice = Slice()) -> list[dict[str, Any]]:
    """Per day and leg: finished on time, late (finished late, or overdue and still open)."""
    cond, params = where.where(4)
    rows = await conn.fetch(
        f"WITH done AS (SELECT day, leg, sum(on_time) AS on_time, sum(late) AS late FROM sla_daily"
        f" WHERE day BETWEEN $1 AND $2{cond} GROUP BY day, leg),"
        f" overdue AS (SELECT day, leg, count(*) AS n FROM sla_legs WHERE outcome = 'open'"
        f" AND due_at < $3 AND day BETWEEN $1 AND $2{cond} GROUP BY day, leg)"
        f" SELECT coalesce(d.day, o.day) AS day, coalesce(d.leg, o.leg) AS leg,"
        f" coalesce(d.on_time, 0)::int AS on_time, coalesce(d.late, 0)::int AS finished_late,"
        f" coalesce(o.n, 0)::int AS overdue FROM done d FULL JOIN overdue o USING (day, leg)"
        f" ORDER BY 1, 2", first, last, now, *params)
    return [{"day": str(r["day"]), "leg": r["leg"], "on_time": r["on_time"],
             "late": r["finished_late"] + r["overdue"], "overdue_open": r["overdue"],
             "rate_permille": _rate(r["on_time"], r["finished_late"] + r["overdue"])} for r in rows]


async def by_area(conn: asyncpg.Connection, day: date, leg: str, level: str) -> list[dict[str, Any]]:
    """On-time per township or village for one day and leg (finished legs)."""
    assert level in ("township", "village")
    rows = await conn.fetch(
        f"SELECT {level} AS area, sum(on_time)::int AS on_time, sum(late)::int AS late FROM sla_daily"
        f" WHERE day = $1 AND leg = $2 AND {level} <> '' GROUP BY {level} ORDER BY {level}", day, leg)
    return [{"id": r["area"], "on_time": r["on_time"], "late": r["late"],
             "rate_permille": _rate(r["on_time"], r["late"])} for r in rows]


async def breaches(conn: asyncpg.Connection, day: date, now: datetime, where: Slice = Slice(),
                   limit: int = 200) -> list[dict[str, Any]]:
    cond, params = where.where(3)
    cols = ("waybill, leg, brand, route_id, township, village, start_at, due_at, end_at,"
            " minutes_over, cause, outcome")
    # Two index-backed reads (finished late; overdue and still open) rather than one OR.
    rows = await conn.fetch(
        f"(SELECT {cols} FROM sla_legs WHERE outcome = 'open' AND due_at < $2 AND day = $1{cond}"
        f" ORDER BY due_at LIMIT {int(limit)}) UNION ALL"
        f" (SELECT {cols} FROM sla_legs WHERE outcome = 'late' AND day = $1{cond}"
        f" ORDER BY minutes_over DESC LIMIT {int(limit)})", day, now, *params)
    rows = rows[:limit]
    return [{**_leg(r), "minutes_over": r["minutes_over"] if r["outcome"] == "late"
             else int((now - r["due_at"]).total_seconds() // 60),
             "cause": r["cause"] or "not_arrived"} for r in rows]


async def causes(conn: asyncpg.Connection, day: date, where: Slice = Slice()) -> dict[str, int]:
    cond, params = where.where(2)
    rows = await conn.fetch(f"SELECT cause, count(*)::int AS n FROM sla_legs WHERE day = $1"
                            f" AND outcome = 'late'{cond} GROUP BY cause ORDER BY 2 DESC", day, *params)
    return {r["cause"]: r["n"] for r in rows}


async def at_risk(conn: asyncpg.Connection, now: datetime, where: Slice = Slice(),
                  limit: int = 100) -> list[dict[str, Any]]:
    """Open legs past their at-risk point and not yet due, the least time left first."""
    cond, params = where.where(2)
    rows = await conn.fetch(
        f"SELECT waybill, leg, brand, route_id, township, village, start_at, due_at, end_at"
        f" FROM sla_legs WHERE outcome = 'open' AND due_at >= $1 AND at_risk_at <= $1{cond}"
        f" ORDER BY due_at, waybill LIMIT {int(limit)}", now, *params)
    return [{**_leg(r), "minutes_left": int((r["due_at"] - now).total_seconds() // 60)} for r in rows]


def _leg(r: asyncpg.Record) -> dict[str, Any]:
    return {"waybill": r["waybill"], "leg": r["leg"], "brand": r["brand"],
            "route_id": r["route_id"] or None, "township": r["township"] or None,
            "village": r["village"] or None, "start_at": r["start_at"].isoformat(),
            "due_at": r["due_at"].isoformat(),
            "end_at": r["end_at"].isoformat() if r["end_at"] else None}


async def runs(conn: asyncpg.Connection, day: date, tolerance_minutes: int) -> dict[str, Any]:
    rows = await conn.fetch("SELECT trip_id, kind, node_id, route_id, run_id, delay_minutes"
                            " FROM sla_runs WHERE day = $1 ORDER BY route_id, run_id, kind", day)
    by_run: dict[str, dict[str, Any]] = {}
    for r in rows:
        item = by_run.setdefault(r["trip_id"], {"trip_id": r["trip_id"], "route_id": r["route_id"],
                                                "run_id": r["run_id"], "departed": None,
                                                "arrivals": []})
        if r["kind"] == "departed":
            item["departed"] = r["delay_minutes"]
        else:
            item["arrivals"].append({"node_id": r["node_id"], "delay_minutes": r["delay_minutes"]})
    delays = [r["delay_minutes"] for r in rows]
    punctual = sum(abs(d) <= tolerance_minutes for d in delays)
    return {"runs": list(by_run.values()), "moves": len(delays), "punctual": punctual,
            "rate_permille": punctual * 1000 // len(delays) if delays else None,
            "tolerance_minutes": tolerance_minutes}


async def coverage(conn: asyncpg.Connection, county: County, day: date) -> dict[str, Any]:
    """Villages on a fixed run in the timetable, and villages a run or a delivery reached today."""
    villages = {v.id for v in county.villages}
    timetabled = {s for r in county.routes if r.runs for s in r.stops} & villages
    reached = {r["node"] for r in await conn.fetch(
        "SELECT node_id AS node FROM sla_runs WHERE day = $1 AND kind = 'arrived'"
        " UNION SELECT village FROM sla_daily WHERE leg = 'township_to_village' AND day = $1",
        day)} & villages
    return {"villages": len(villages), "on_timetable": len(timetabled),
            "timetable_permille": len(timetabled) * 1000 // len(villages) if villages else None,
            "reached_today": len(reached),
            "reached_permille": len(reached) * 1000 // len(villages) if villages else None}


async def export_gauges(conn: asyncpg.Connection, county: County, now: datetime) -> None:
    """Today's on-time ratio and at-risk count per leg, for Prometheus alert rules."""
    async with conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('gongpei.brand_scope', '*', true)")
        today = now.astimezone(timezone(timedelta(minutes=county.utc_offset_minutes))).date()
        for row in await rates(conn, today, today, now):
            if row["rate_permille"] is not None:
                SLA_ON_TIME.labels(leg=row["leg"]).set(row["rate_permille"] / 1000)
        for leg in county.sla.legs:
            n = await conn.fetchval("SELECT count(*) FROM sla_legs WHERE outcome = 'open'"
                                    " AND leg = $1 AND due_at >= $2 AND at_risk_at <= $2", leg.id, now)
            SLA_AT_RISK.labels(leg=leg.id).set(n)
