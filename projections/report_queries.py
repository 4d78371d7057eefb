"""Reads for the programme's monthly statistics report (统计上报): volumes per brand and node,
village coverage by fixed runs, on-time per leg, problem parcels and the saving of shared runs.

Read models only, every section in one snapshot (`snapshot`, every brand: the report is the
operator's). On-time figures are the SLA API's own (sla_queries.rates); trip costs are the ledger lines the
settlement API reads (ledger_queries.period_lines). "now" is always an argument."""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta, timezone
from typing import Any

import asyncpg

from domain.county import County
from domain.sla import AIR_CUTOFF, COLD_CHAIN, UP_COLD_STORE, UPWARD_LEGS
from projections import ledger_queries, sla_queries

SCAN_TYPES = ["parcel.scanned", "parcel.sorted"]
# What counts a parcel as handled at a node in the month: a scan, or an upward hand-in.
HANDLED_TYPES = [*SCAN_TYPES, "parcel.handed_in"]


@asynccontextmanager
async def snapshot(pool: asyncpg.Pool) -> AsyncIterator[asyncpg.Connection]:
    """One read-only, repeatable-read transaction over every brand: all sections of a report
    see the same snapshot, so its totals agree with each other while traffic flows."""
    async with pool.acquire() as conn, conn.transaction(readonly=True, isolation="repeatable_read"):
        await conn.execute("SELECT set_config('gongpei.brand_scope', '*', true)")
        yield conn


@dataclass(frozen=True)
class Month:
    """A calendar month in county time: its first and last day and its bounds as instants."""

    key: str
    first: date
    last: date
    starts: datetime
    ends: datetime  # exclusive

    @classmethod
    def parse(cls, key: str, utc_offset_minutes: int) -> Month:
        """'YYYY-MM' (years 2000–2099) → the month; ValueError for anything else."""
        if not re.fullmatch(r"[0-9]{4}-[0-9]{2}", key):
            raise ValueError(f"'{key}' is not a month; write it as YYYY-MM, e.g. 2026-11")
        year, month = int(key[:4]), int(key[5:])
        if not 2000 <= year <= 2099 or not 1 <= month <= 12:
            raise ValueError(f"'{key}' is not a month between 2000-01 and 2099-12")
        first = date(year, month, 1)
        nxt = (first + timedelta(days=32)).replace(day=1)
        tz = timezone(timedelta(minutes=utc_offset_minutes))
        return cls(key, first, nxt - timedelta(days=1), datetime.combine(first, time(0), tz),
                   datetime.combine(nxt, time(0), tz))

    def days(self) -> list[date]:
        return [self.first + timedelta(days=i) for i in range((self.last - self.first).days + 1)]


# Each timeline entry in the month of each parcel that moved since the month began, with the
# parcel's direction: upward (农产品上行) when it was handed in (`parcel.handed_in`) or its first
# scan is a hand-in (`received`) at a village point, the rule domain/sla.py uses for the
# village → county leg. The timeline is stored sorted
# by event time (domain/tracking.py) and a JSON path visits an array in order, so the first
# match is the first scan: no sort (measured: half the time of a DISTINCT ON over the entries).
_VOLUMES = """
WITH m AS (
  SELECT p.waybill, p.brand, e.value->>'type' AS type, e.value->>'action' AS action,
         e.value->>'node_id' AS node, p.upward
  FROM (SELECT waybill, brand, view->'timeline' AS tl,
               coalesce(f->>'action' = 'received' AND f->>'node_id' = ANY($3::text[]), false)
                 OR view->'timeline' @> '[{"type": "parcel.handed_in"}]' AS upward
        FROM parcels,
             jsonb_path_query_first(view->'timeline', '$[*] ? (@.type == "parcel.scanned")') AS f
        WHERE last_event_at >= $1) p
  CROSS JOIN LATERAL jsonb_array_elements(p.tl) AS e(value)
  WHERE (e.value->>'occurred_at')::timestamptz >= $1 AND (e.value->>'occurred_at')::timestamptz < $2
)
SELECT brand, node,
  count(DISTINCT waybill) FILTER (WHERE type = 'parcel.registered')::int AS registered,
  count(DISTINCT waybill) FILTER (WHERE type = ANY($4::text[]) AND NOT upward)::int AS down,
  count(DISTINCT waybill) FILTER (WHERE type = ANY($4::text[]) AND upward)::int AS up,
  count(DISTINCT waybill) FILTER (WHERE NOT upward AND action IN ('stored', 'delivered')
                                  AND node = ANY($3::text[]))::int AS to_village,
  count(DISTINCT waybill) FILTER (WHERE NOT upward AND action = 'delivered')::int AS delivered,
  count(DISTINCT waybill) FILTER (WHERE upward AND type = ANY($4::text[])
                                  AND node = $5)::int AS up_to_county
FROM m GROUP BY GROUPING SETS ((brand), (node))
"""

# Problem parcels: each parcel once, under the reason of its latest problem scan in the month;
# closed out when a later scan (any time up to now) delivered or returned it.
_PROBLEMS = """
WITH t AS (
  SELECT p.waybill, e.value->>'action' AS action, e.value->'detail'->>'problem_reason' AS reason,
         (e.value->>'occurred_at')::timestamptz AS at, e.ord
  FROM parcels p CROSS JOIN LATERAL jsonb_array_elements(p.view->'timeline') WITH ORDINALITY
       AS e(value, ord)
  WHERE p.last_event_at >= $1 AND p.view->'timeline' @> '[{"action": "problem"}]'
), latest AS (
  SELECT DISTINCT ON (waybill) waybill, coalesce(reason, 'unspecified') AS reason, ord
  FROM t WHERE action = 'problem' AND at >= $1 AND at < $2 ORDER BY waybill, ord DESC
), closed AS (
  SELECT waybill, max(ord) AS ord FROM t WHERE action IN ('delivered', 'returned') AND at <= $3
  GROUP BY waybill
)
SELECT l.reason, count(*)::int AS parcels, count(*) FILTER (WHERE c.ord > l.ord)::int AS closed
FROM latest l LEFT JOIN closed c USING (waybill) GROUP BY l.reason ORDER BY 2 DESC, 1
"""


async def volumes(conn: asyncpg.Connection, county: County, month: Month) -> dict[str, Any]:
    """Parcels per brand and per node in the month, downward and upward (distinct parcels)."""
    villages = [v.id for v in county.villages]
    rows = await conn.fetch(_VOLUMES, month.starts, month.ends, villages, HANDLED_TYPES,
                            county.centre.id)
    cols = ("registered", "down", "to_village", "delivered", "up", "up_to_county")
    by_brand = {r["brand"]: {c: r[c] for c in cols} for r in rows if r["brand"] is not None}
    by_node = {r["node"]: {"down": r["down"], "up": r["up"]} for r in rows
               if r["brand"] is None and r["node"] is not None and (r["down"] or r["up"])}
    brands = [*county.brands, *sorted(set(by_brand) - set(county.brands))]
    brand_rows = [{"brand": b, **by_brand.get(b, dict.fromkeys(cols, 0))} for b in brands]
    tier_order = {"county": 0, "township": 1, "village": 2}

    def node_key(node_id: str) -> tuple[int, str]:
        node = county.nodes.get(node_id)
        return (tier_order.get(node.tier, 3) if node else 3, node_id)

    node_rows = []
    for node_id in sorted(by_node, key=node_key):
        node = county.nodes.get(node_id)
        node_rows.append({"node_id": node_id, "name": node.name if node else None,
                          "tier": node.tier if node else None,
                          "township": (node.parent if node.tier == "village" else None)
                          if node else None, **by_node[node_id]})
    total = {c: sum(r[c] for r in brand_rows) for c in cols}
    return {"by_brand": brand_rows, "brand_total": total, "by_node": node_rows}


async def problems(conn: asyncpg.Connection, month: Month, now: datetime) -> list[dict[str, Any]]:
    """Problem parcels of the month by reason, and how many of them were closed out by `now`."""
    rows = await conn.fetch(_PROBLEMS, month.starts, month.ends, now)
    return [{"reason": r["reason"], "parcels": r["parcels"], "closed": r["closed"]} for r in rows]


async def coverage(conn: asyncpg.Connection, county: County, month: Month) -> dict[str, Any]:
    """Village points on a fixed-run timetable, on a route one of whose runs left in the month,
    where a run's arrival was scanned, and where a parcel reached the point (per township)."""
    routes_ran = {r["route_id"] for r in await conn.fetch(
        "SELECT DISTINCT route_id FROM sla_runs WHERE kind = 'departed'"
        " AND day BETWEEN $1 AND $2", month.first, month.last)}
    arrived = {r["node_id"] for r in await conn.fetch(
        "SELECT DISTINCT node_id FROM sla_runs WHERE kind = 'arrived' AND day BETWEEN $1 AND $2",
        month.first, month.last)}
    delivered = {r["village"] for r in await conn.fetch(
        "SELECT DISTINCT village FROM sla_daily WHERE leg = 'township_to_village'"
        " AND day BETWEEN $1 AND $2 AND village <> ''", month.first, month.last)}
    timetabled = {s for r in county.routes if r.runs for s in r.stops}
    ran = {s for r in county.routes if r.id in routes_ran for s in r.stops}
    return village_coverage(county, timetabled, ran, arrived, delivered)


def village_coverage(county: County, timetabled: set[str], ran: set[str], arrived: set[str],
                     delivered: set[str]) -> dict[str, Any]:
    """Count each township's village points in each set, and the county's (pure)."""
    rows = []
    for township in county.townships:
        ids = {v.id for v in county.villages if v.parent == township.id}
        rows.append({"township": township.id, "name": township.name,
                     **_counts(ids, timetabled, ran, arrived, delivered)})
    return {**_counts({v.id for v in county.villages}, timetabled, ran, arrived, delivered),
            "by_township": rows}


def _counts(ids: set[str], timetabled: set[str], ran: set[str], arrived: set[str],
            delivered: set[str]) -> dict[str, Any]:
    covered = len(ids & ran)
    return {"villages": len(ids), "on_timetable": len(ids & timetabled), "run_covered": covered,
            "run_arrived": len(ids & arrived), "parcels_reached": len(ids & delivered),
            "coverage_permille": covered * 1000 // len(ids) if ids else None}


async def on_time(conn: asyncpg.Connection, county: County, month: Month,
                  now: datetime) -> dict[str, Any]:
    """The SLA API's per-day figures (sla_queries.rates) for the month, summed per leg; and the
    fixed runs' punctuality (sla_queries.runs) summed over the month's days."""
    days = await sla_queries.rates(conn, month.first, month.last, now)
    legs = [{"leg": leg.id, "name": leg.name, "direction": leg.direction,
             **_sum(d for d in days if d["leg"] == leg.id)} for leg in county.sla.legs]
    known = {leg.id for leg in county.sla.legs}
    legs += [{"leg": leg, "name": UPWARD_LEGS.get(leg, leg),
              "direction": "up" if leg in UPWARD_LEGS else "down",
              **_sum(d for d in days if d["leg"] == leg)}
             for leg in sorted({d["leg"] for d in days} - known)]
    tolerance = county.sla.run_tolerance_minutes
    moves = punctual = 0
    for day in month.days():
        runs = await sla_queries.runs(conn, day, tolerance)
        moves, punctual = moves + runs["moves"], punctual + runs["punctual"]
    return {"legs": legs, "runs": {"moves": moves, "punctual": punctual,
                                   "rate_permille": punctual * 1000 // moves if moves else None,
                                   "tolerance_minutes": tolerance}}


async def upward(conn: asyncpg.Connection, county: County, month: Month,
                 now: datetime) -> dict[str, Any]:
    """Upward produce (农产品上行) in the month: parcels handed in (county day of the hand-in) and
    their weight, per perishable class and brand; the perishable clocks' figures as the SLA API
    counts them (cold store, cold chain, air cut-off: made on time, or missed)."""
    query = ("SELECT {key} AS key, count(*)::int AS parcels, sum(weight_g)::bigint AS weight_g"
             " FROM sla_handins WHERE day BETWEEN $1 AND $2 GROUP BY {key}")
    by_brand = {r["key"]: r for r in await conn.fetch(query.format(key="brand"), month.first,
                                                         month.last)}
    by_class = await conn.fetch(query.format(key="perishable"), month.first, month.last)
    days = [d for d in await sla_queries.rates(conn, month.first, month.last, now)
            if d["leg"] in UPWARD_LEGS]
    air = _sum(d for d in days if d["leg"] == AIR_CUTOFF)
    weight = sum(int(r["weight_g"]) for r in by_class)
    return {
        "parcels": sum(r["parcels"] for r in by_class), "weight_g": weight,
        "kg": round(weight / 1000, 1),
        "perishable": sum(r["parcels"] for r in by_class if r["key"] is not None),
        "by_class": [{"class": r["key"],
                      "name": (county.perishables[r["key"]].name
                               if r["key"] in county.perishables else None),
                      "parcels": r["parcels"], "weight_g": int(r["weight_g"])}
                     for r in sorted(by_class, key=lambda r: (r["key"] is None, r["key"] or ""))],
        "by_brand": [{"brand": b, "parcels": by_brand[b]["parcels"],
                      "weight_g": int(by_brand[b]["weight_g"])}
                     for b in [*county.brands, *sorted(set(by_brand) - set(county.brands))]
                     if b in by_brand],
        "cold_store": _sum(d for d in days if d["leg"] == UP_COLD_STORE),
        "cold_chain": _sum(d for d in days if d["leg"] == COLD_CHAIN),
        "air_cutoff": {"made": air["on_time"], "missed": air["late"],
                       "overdue_open": air["overdue_open"], "rate_permille": air["rate_permille"]},
    }


def _sum(days: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    on, late, overdue = 0, 0, 0
    for d in days:
        on, late, overdue = on + d["on_time"], late + d["late"], overdue + d["overdue_open"]
    return {"on_time": on, "late": late, "overdue_open": overdue,
            "rate_permille": on * 1000 // (on + late) if on + late else None}


async def trip_lines(conn: asyncpg.Connection, period: str) -> list[asyncpg.Record]:
    """The period's ledger lines: the same rows the settlement API reads."""
    return await ledger_queries.period_lines(conn, period)


def co_delivery_saving(lines: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """What the period's shared runs cost against each brand running its own vehicle on every run
    it rode, at that run's booked cost (pure). Adjustments for earlier periods are kept apart."""
    cost: dict[str, int] = defaultdict(int)
    shares: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    unallocated: dict[str, int] = defaultdict(int)
    adjustments = 0
    for ln in lines:
        if ln["kind"] != "trip_cost":
            continue
        if ln["adjusts_period"] is not None:
            adjustments += ln["amount_fen"] if ln["account"].startswith("brand:") else 0
            continue
        if ln["account"].startswith("carrier:"):
            cost[ln["unit"]] -= ln["amount_fen"]
        elif ln["account"].startswith("brand:"):
            shares[ln["unit"]][ln["account"].split(":", 1)[1]] += ln["amount_fen"]
        else:
            unallocated[ln["unit"]] += ln["amount_fen"]
    brands: dict[str, dict[str, int]] = defaultdict(lambda: {"trips": 0, "shares_fen": 0,
                                                             "own_vehicle_fen": 0})
    for unit, by_brand in shares.items():
        for brand, fen in by_brand.items():
            row = brands[brand]
            row["trips"] += 1
            row["shares_fen"] += fen
            row["own_vehicle_fen"] += cost[unit]
    shared = sum(cost.values())
    counterfactual = sum(cost[u] * len(shares.get(u, {})) for u in cost)
    saving = counterfactual - shared
    return {
        "trips": len(cost), "shared_trips": sum(len(shares.get(u, {})) >= 2 for u in cost),
        "empty_trips": sum(not shares.get(u) for u in cost),
        "shared_cost_fen": shared, "own_vehicles_fen": counterfactual, "saving_fen": saving,
        "saving_permille": saving * 1000 // counterfactual if counterfactual else None,
        "unallocated_fen": sum(unallocated.values()), "adjustments_fen": adjustments,
        "by_brand": [{"brand": b, **v, "saving_fen": v["own_vehicle_fen"] - v["shares_fen"]}
                     for b, v in sorted(brands.items())],
    }
