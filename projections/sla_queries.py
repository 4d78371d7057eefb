"""Reads of the SLA read models: rates per day and leg in any slice, breaches, the at-risk queue,
run punctuality and village coverage. "now" is always an argument."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from typing import Any

import asyncpg

from domain.county import County
from domain.sla import AIR_CUTOFF, CAUSE_LABELS, COLD_CHAIN, UP_COLD_STORE, UPWARD_LEGS
from projections.metrics import SLA_AT_RISK, SLA_ON_TIME


@asynccontextmanager
async def snapshot(pool: asyncpg.Pool, scope: str) -> AsyncIterator[asyncpg.Connection]:
    """One read-only REPEATABLE READ transaction that sees what `scope` ('*' or brands) may see:
    every query in it reads the same snapshot, so figures read together agree while events flow."""
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        await conn.execute("SELECT set_config('gongpei.brand_scope', $1, true)", scope)
        yield conn


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


# A leg is late on a day if it ended late that day, or if it has not ended and its time ran out
# (by "now") that day: every figure below counts late legs with this one predicate.
# An open leg counts on the county day of its due time, so its due time lies within a day of that
# day's UTC midnight: the redundant range lets the partial index on open legs' due_at do the work.
_OVERDUE = ("outcome = 'open' AND due_at < {now} AND due_at >= {first}::date - 1"
            " AND due_at < {last}::date + 2")


async def rates(conn: asyncpg.Connection, first: date, last: date, now: datetime,
                where: Slice = Slice()) -> list[dict[str, Any]]:
    """Per day and leg: finished on time, late (finished late, or overdue and still open)."""
    cond, params = where.where(4)
    rows = await conn.fetch(
        f"WITH done AS (SELECT day, leg, sum(on_time) AS on_time, sum(late) AS late FROM sla_daily"
        f" WHERE day BETWEEN $1 AND $2{cond} GROUP BY day, leg),"
        f" overdue AS (SELECT day, leg, count(*) AS n FROM sla_legs WHERE"
        f" {_OVERDUE.format(now='$3', first='$1', last='$2')} AND day BETWEEN $1 AND $2{cond}"
        f" GROUP BY day, leg)"
        f" SELECT coalesce(d.day, o.day) AS day, coalesce(d.leg, o.leg) AS leg,"
        f" coalesce(d.on_time, 0)::int AS on_time, coalesce(d.late, 0)::int AS finished_late,"
        f" coalesce(o.n, 0)::int AS overdue FROM done d FULL JOIN overdue o USING (day, leg)"
        f" ORDER BY 1, 2", first, last, now, *params)
    return [{"day": str(r["day"]), "leg": r["leg"], "on_time": r["on_time"],
             "late": r["finished_late"] + r["overdue"], "overdue_open": r["overdue"],
             "rate_permille": _rate(r["on_time"], r["finished_late"] + r["overdue"])} for r in rows]


async def by_area(conn: asyncpg.Connection, day: date, leg: str, level: str, now: datetime,
                  where: Slice = Slice()) -> list[dict[str, Any]]:
    """On-time per township or village for one day and leg, late counting overdue legs too, so
    the areas add up to the day's figure; legs of no known destination are area None."""
    assert level in ("township", "village")
    cond, params = where.where(4)
    rows = await conn.fetch(
        f"SELECT area, sum(on_time)::int AS on_time, sum(late)::int AS late FROM ("
        f" SELECT {level} AS area, on_time, late FROM sla_daily WHERE day = $1 AND leg = $2{cond}"
        f" UNION ALL SELECT {level}, 0, 1 FROM sla_legs WHERE day = $1 AND leg = $2"
        f" AND {_OVERDUE.format(now='$3', first='$1', last='$1')}{cond}) x"
        f" GROUP BY area ORDER BY area", day, leg, now, *params)
    return [{"id": r["area"] or None, "on_time": r["on_time"], "late": r["late"],
             "rate_permille": _rate(r["on_time"], r["late"])} for r in rows]


async def breaches(conn: asyncpg.Connection, day: date, now: datetime, where: Slice = Slice(),
                   limit: int = 200) -> list[dict[str, Any]]:
    cond, params = where.where(3)
    cols = ("waybill, leg, brand, route_id, township, village, start_at, due_at, end_at,"
            " minutes_over, cause, outcome")
    # Two index-backed reads (finished late; overdue and still open) rather than one OR.
    rows = await conn.fetch(
        f"(SELECT {cols} FROM sla_legs WHERE {_OVERDUE.format(now='$2', first='$1', last='$1')} AND day = $1{cond}"
        f" ORDER BY due_at LIMIT {int(limit)}) UNION ALL"
        f" (SELECT {cols} FROM sla_legs WHERE outcome = 'late' AND day = $1{cond}"
        f" ORDER BY minutes_over DESC LIMIT {int(limit)})", day, now, *params)
    rows = rows[:limit]
    return [{**_leg(r), "minutes_over": r["minutes_over"] if r["outcome"] == "late"
             else int((now - r["due_at"]).total_seconds() // 60),
             "cause": r["cause"] or "not_arrived"} for r in rows]


async def causes_by_leg(conn: asyncpg.Connection, day: date, *, now: datetime,
                        where: Slice = Slice()) -> dict[str, dict[str, int]]:
    """Per leg, the day's late legs (ended late, or overdue at "now") by cause."""
    cond, params = where.where(3)
    # A row journalled before open legs carried a cause (or never re-evaluated since) says NULL.
    # Two index-backed reads (finished late; overdue and still open) rather than one OR.
    rows = await conn.fetch(
        f"SELECT leg, coalesce(cause, 'not_arrived') AS cause, count(*)::int AS n FROM ("
        f" (SELECT leg, cause FROM sla_legs WHERE outcome = 'late' AND day = $1{cond}) UNION ALL"
        f" (SELECT leg, cause FROM sla_legs WHERE {_OVERDUE.format(now='$2', first='$1', last='$1')} AND day = $1{cond})"
        f") x GROUP BY 1, 2 ORDER BY 1, 3 DESC, 2", day, now, *params)
    out: dict[str, dict[str, int]] = {}
    for r in rows:
        out.setdefault(r["leg"], {})[r["cause"]] = r["n"]
    return out


async def causes(conn: asyncpg.Connection, day: date, where: Slice = Slice(), *,
                 now: datetime) -> dict[str, int]:
    """The day's late legs of every leg by cause, most frequent first: they add up to the late
    count of `rates` for that day, overdue legs included."""
    cond, params = where.where(3)
    # Without the leg, the finished late legs' causes come from their partial index alone.
    rows = await conn.fetch(
        f"SELECT coalesce(cause, 'not_arrived') AS cause, count(*)::int AS n FROM ("
        f" (SELECT cause FROM sla_legs WHERE outcome = 'late' AND day = $1{cond}) UNION ALL"
        f" (SELECT cause FROM sla_legs WHERE {_OVERDUE.format(now='$2', first='$1', last='$1')}"
        f" AND day = $1{cond})) x GROUP BY 1", day, now, *params)
    return sum_causes({"": {r["cause"]: r["n"] for r in rows}})


def sum_causes(by_leg: dict[str, dict[str, int]]) -> dict[str, int]:
    total: dict[str, int] = {}
    for per_leg in by_leg.values():
        for cause, n in per_leg.items():
            total[cause] = total.get(cause, 0) + n
    return dict(sorted(total.items(), key=lambda kv: (-kv[1], kv[0])))


# At "now", a leg is at risk if it had started, was past its warning point, was not yet due and
# had not ended then (it may have ended since: a replayed "now" sees the queue as it was).
# The day bound keeps the read to legs counting on now's day or later (a leg ending after "now"
# counts on a later day); the open ones come from their partial index.
_AT_RISK_OPEN = "outcome = 'open' AND due_at >= $1 AND at_risk_at <= $1"
_AT_RISK_ENDED = ("outcome <> 'open' AND day >= $2 AND end_at > $1 AND due_at >= $1"
                  " AND at_risk_at <= $1")


def _day_floor(now: datetime, tz: tzinfo | None) -> date:
    """The county day of `now` (a leg ending after it counts on that day or later); without the
    county's zone, a day early, which is at or before it in any zone."""
    return now.astimezone(tz).date() if tz is not None else (now - timedelta(days=1)).date()


async def at_risk_queue(conn: asyncpg.Connection, now: datetime, where: Slice = Slice(),
                        limit: int = 100, *, tz: tzinfo | None = None
                        ) -> tuple[list[dict[str, Any]], int]:
    """Legs at risk at `now`, the least time left first (at most `limit`), and how many in all."""
    cond, params = where.where(3)
    cols = "waybill, leg, brand, route_id, township, village, start_at, due_at, end_at"
    # Two index-backed reads (still open; ended after "now") rather than one OR.
    rows = await conn.fetch(
        f"WITH x AS ((SELECT {cols} FROM sla_legs WHERE {_AT_RISK_OPEN}{cond})"
        f" UNION ALL (SELECT {cols} FROM sla_legs WHERE {_AT_RISK_ENDED}{cond}))"
        f" SELECT *, count(*) OVER () AS total FROM x ORDER BY due_at, waybill, leg"
        f" LIMIT {int(limit)}", now, _day_floor(now, tz), *params)
    total = rows[0]["total"] if rows else 0
    return [{**_leg(r), "minutes_left": int((r["due_at"] - now).total_seconds() // 60)}
            for r in rows], total


async def at_risk(conn: asyncpg.Connection, now: datetime, where: Slice = Slice(),
                  limit: int = 100, *, tz: tzinfo | None = None) -> list[dict[str, Any]]:
    """Legs at risk at `now`, the least time left first."""
    return (await at_risk_queue(conn, now, where, limit, tz=tz))[0]


async def at_risk_count(conn: asyncpg.Connection, now: datetime, where: Slice = Slice(), *,
                        tz: tzinfo | None = None) -> int:
    cond, params = where.where(3)
    n: int = await conn.fetchval(
        f"SELECT (SELECT count(*) FROM sla_legs WHERE {_AT_RISK_OPEN}{cond})"
        f" + (SELECT count(*) FROM sla_legs WHERE {_AT_RISK_ENDED}{cond})",
        now, _day_floor(now, tz), *params)
    return n


def _leg(r: asyncpg.Record) -> dict[str, Any]:
    """A leg's row; times stay datetimes, the API answers them in county time."""
    return {"waybill": r["waybill"], "leg": r["leg"], "brand": r["brand"],
            "route_id": r["route_id"] or None, "township": r["township"] or None,
            "village": r["village"] or None, "start_at": r["start_at"],
            "due_at": r["due_at"], "end_at": r["end_at"]}


async def runs(conn: asyncpg.Connection, day: date, tolerance_minutes: int,
               county: County | None = None, now: datetime | None = None) -> dict[str, Any]:
    """The day's runs: every recorded trip (late ones first) and, given the county, every
    timetabled run no trip was recorded for, each with its route's name (a bus line's run: its
    line's; a bus departure that carried no parcel is no missed run, so it is not listed)."""
    rows = await conn.fetch("SELECT trip_id, kind, node_id, route_id, run_id, scheduled_at,"
                            " delay_minutes FROM sla_runs WHERE day = $1"
                            " ORDER BY route_id, run_id, trip_id, kind, scheduled_at", day)
    routes = {r.id: r for r in county.routes} if county else {}
    by_run: dict[str, dict[str, Any]] = {}
    for r in rows:
        route = routes.get(r["route_id"])
        # A bus line's run is named after its line, whatever route its departure named.
        bus = county.bus_line_of(r["trip_id"]) if county else None
        item = by_run.setdefault(r["trip_id"], {
            "trip_id": r["trip_id"], "route_id": bus.id if bus else r["route_id"],
            "route_name": bus.name if bus else route.name if route else r["route_id"],
            "run_id": r["run_id"],
            "scheduled_at": None, "departed": None, "arrivals": [], "status": "punctual"})
        if r["kind"] == "departed":
            item["departed"], item["scheduled_at"] = r["delay_minutes"], r["scheduled_at"]
        else:
            item["arrivals"].append({"node_id": r["node_id"], "delay_minutes": r["delay_minutes"]})
        if abs(r["delay_minutes"]) > tolerance_minutes:
            item["status"] = "late"
    recorded = list(by_run.values())
    seen = {x["run_id"] for x in recorded}
    unseen = [] if county is None else _unrecorded(county, day, seen, now)
    delays = [r["delay_minutes"] for r in rows]
    punctual = sum(abs(d) <= tolerance_minutes for d in delays)
    late_first = sorted(recorded, key=lambda x: x["status"] != "late")  # stable: route order kept
    return {"runs": late_first + unseen, "moves": len(delays), "punctual": punctual,
            "late_runs": sum(x["status"] == "late" for x in recorded),
            "rate_permille": punctual * 1000 // len(delays) if delays else None,
            "tolerance_minutes": tolerance_minutes}


def _unrecorded(county: County, day: date, seen: set[str], now: datetime | None) -> list[dict[str, Any]]:
    """Timetabled runs of the day with no recorded trip: not due yet, or not seen leaving."""
    tz = _county_tz(county)
    out: list[dict[str, Any]] = []
    for route in county.routes:
        for run in route.runs:
            if run.id in seen:
                continue
            at = datetime.combine(day, time.fromisoformat(run.departs), tz)
            out.append({"trip_id": None, "route_id": route.id, "route_name": route.name,
                        "run_id": run.id, "scheduled_at": at, "departed": None, "arrivals": [],
                        "status": "not_due" if now is not None and now < at else "not_recorded"})
    # Runs that should have left and were not seen come before those still to leave.
    return sorted(out, key=lambda x: (x["status"] == "not_due", x["scheduled_at"], x["route_id"]))


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


def _county_tz(county: County) -> timezone:
    return timezone(timedelta(minutes=county.utc_offset_minutes))


async def export_gauges(conn: asyncpg.Connection, county: County, now: datetime) -> None:
    """Today's on-time ratio and at-risk count per leg, for Prometheus alert rules."""
    async with conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('gongpei.brand_scope', '*', true)")
        today = now.astimezone(_county_tz(county)).date()
        for row in await rates(conn, today, today, now):
            if row["rate_permille"] is not None:
                SLA_ON_TIME.labels(leg=row["leg"]).set(row["rate_permille"] / 1000)
        for leg in county.sla.legs:
            SLA_AT_RISK.labels(leg=leg.id).set(
                await at_risk_count(conn, now, Slice(leg=leg.id), tz=_county_tz(county)))


async def handins(conn: asyncpg.Connection, first: date, last: date,
                  where: Slice = Slice()) -> list[dict[str, Any]]:
    """Handed-in parcels per county day: parcels, grams, perishable ones (any leg filter aside:
    a hand-in is no leg; route, township, village and brand narrow it like the legs)."""
    cond, params = replace(where, leg=None).where(3)
    rows = await conn.fetch(
        "SELECT day, count(*)::int AS parcels, coalesce(sum(weight_g), 0)::bigint AS weight_g,"
        " count(*) FILTER (WHERE perishable IS NOT NULL)::int AS perishable FROM sla_handins"
        f" WHERE day BETWEEN $1 AND $2{cond} GROUP BY day ORDER BY day", first, last, *params)
    return [{"day": str(r["day"]), "parcels": r["parcels"], "weight_g": int(r["weight_g"]),
             "perishable": r["perishable"]} for r in rows]


def upward_days(first: date, last: date, volumes: Iterable[Mapping[str, Any]],
                trend: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each day's upward figures (pure): hand-ins, cold-store and cold-chain compliance, air
    cut-off hits (made: loaded by the cut-off; missed: late, overdue open ones included)."""
    by_day = {v["day"]: v for v in volumes}
    legs = {(t["day"], t["leg"]): t for t in trend if t["leg"] in UPWARD_LEGS}
    out = []
    for i in range((last - first).days + 1):
        day = str(first + timedelta(days=i))
        v = by_day.get(day, {})

        def leg(leg_id: str, day: str = day) -> dict[str, Any]:
            t = legs.get((day, leg_id), {})
            on, late = t.get("on_time", 0), t.get("late", 0)
            return {"on_time": on, "late": late, "rate_permille": _rate(on, late)}
        air = leg(AIR_CUTOFF)
        out.append({"day": day, "parcels": v.get("parcels", 0), "weight_g": v.get("weight_g", 0),
                    "perishable": v.get("perishable", 0), "cold_store": leg(UP_COLD_STORE),
                    "cold_chain": leg(COLD_CHAIN),
                    "air_cutoff": {"made": air["on_time"], "missed": air["late"],
                                   "rate_permille": air["rate_permille"]}})
    return out


async def upward_panel(conn: asyncpg.Connection, county: County, day: date,
                       trend: list[dict[str, Any]], where: Slice = Slice()) -> dict[str, Any]:
    """The dashboard's upward panel over the 14 days the trend shows: shown in the harvest season
    of the county file, or when those days had upward traffic."""
    first = day - timedelta(days=13)
    days = upward_days(first, day, await handins(conn, first, day, where), trend)
    traffic = any(d["parcels"] or any(d[k]["on_time"] + d[k]["late"]
                                      for k in ("cold_store", "cold_chain")) for d in days)
    return {"shown": county.in_harvest(day) or traffic, "harvest": county.in_harvest(day),
            "today": days[-1], "days": days}


async def dashboard(conn: asyncpg.Connection, county: County, day: date, now: datetime,
                    where: Slice = Slice()) -> dict[str, Any]:
    """Everything the manager's dashboard shows, read in the caller's one snapshot: the headline
    per leg, the townships (first leg), the villages (township → village), the causes and the
    runs all count late legs the same way, so each panel adds up to the headline."""
    sla = county.sla
    assert sla is not None
    names = {n.id: n.name for n in county.nodes.values()}
    trend = await rates(conn, day - timedelta(days=13), day, now, where)
    today = {r["leg"]: r for r in trend if r["day"] == str(day)}
    by_leg = await causes_by_leg(conn, day, now=now, where=where)
    main_leg = sla.legs[0].id
    village_leg = next((leg.id for leg in sla.legs
                        if leg.from_tier == "township" and leg.to_tier == "village"), main_leg)

    def areas(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [{**a, "name": names.get(a["id"] or "", a["id"] or "目的地未登记")} for a in rows]

    villages = areas(await by_area(conn, day, village_leg, "village", now, where))
    risk, risk_total = await at_risk_queue(conn, now, where, 30, tz=_county_tz(county))
    # Those needing attention first: any late leg, then the lowest rate.
    villages.sort(key=lambda a: (a["late"] == 0, a["rate_permille"] or 0, a["id"] or ""))
    return {
        "county": county.name, "day": str(day), "now": now,
        "target_permille": sla.target_permille,
        "brand": where.brand,
        "legs": [{"id": leg.id, "name": leg.name,
                  **{k: today.get(leg.id, {}).get(k, 0) for k in ("on_time", "late")},
                  "rate_permille": today.get(leg.id, {}).get("rate_permille"),
                  "causes": by_leg.get(leg.id, {})}
                 for leg in sla.legs]
        # The upward produce clocks, on a day they have figures: the causes still add up.
        + [{"id": leg, "name": name, "on_time": today[leg]["on_time"], "late": today[leg]["late"],
            "rate_permille": today[leg]["rate_permille"], "causes": by_leg.get(leg, {})}
           for leg, name in UPWARD_LEGS.items() if leg in today],
        "trend": trend,
        "township_leg": main_leg,
        "townships": areas(await by_area(conn, day, main_leg, "township", now, where)),
        "village_leg": village_leg,
        "villages": villages,
        "villages_total": len(county.villages),
        "causes": [{"cause": c, "label": CAUSE_LABELS.get(c, c), "count": n}
                   for c, n in sum_causes(by_leg).items()],
        "at_risk": [{**a, "village_name": names.get(a["village"] or "", a["village"])}
                    for a in risk],
        "at_risk_total": risk_total,
        "runs": await runs(conn, day, sla.run_tolerance_minutes, county, now),
        "coverage": await coverage(conn, county, day),
        "upward": await upward_panel(conn, county, day, trend, where),
        "leg_names": {**{leg.id: leg.name for leg in sla.legs}, **UPWARD_LEGS},
    }
