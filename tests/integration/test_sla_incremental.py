"""The SLA store folds events incrementally (compact facts, legs written only when they change,
daily slices moved by differences): what it holds must still be what the pure rule gives for the
whole history, and the daily counts what a recount of the legs gives, whatever order events came in.
And the migration that made the inboxes lean brings an existing database's rows along."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

import asyncpg
import httpx

from domain.county import County
from domain.envelope import Envelope
from domain.sla import evaluate_parcel
from entrypoints.platform import Platform
from infra.db import SCHEMA_DIR
from tests.conftest import db_fetch, wait_for
from tests.integration.test_spine import _lifecycle, _post

LEG_COLUMNS = ("waybill, leg, brand, route_id, township, village, start_at, due_at, at_risk_at,"
               " end_at, outcome, minutes_over, cause, day, start_event, end_event")
RECOUNT = ("SELECT day, leg, route_id, township, village, brand,"
           " count(*) FILTER (WHERE outcome = 'on_time') AS on_time,"
           " count(*) FILTER (WHERE outcome = 'late') AS late"
           " FROM sla_legs WHERE outcome <> 'open' GROUP BY 1, 2, 3, 4, 5, 6")


def _expected_legs(platform: Platform, county: County, waybills: list[str],
                   trips: list[str]) -> set[tuple[Any, ...]]:
    """The legs the pure rule gives from the whole journal history of these parcels."""
    rows = db_fetch(platform, "SELECT body FROM journal WHERE partition_key = ANY($1)"
                              " OR partition_key = ANY($2)", waybills, trips)
    by_waybill: dict[str, list[Envelope]] = defaultdict(list)
    moves: dict[str, list[Envelope]] = defaultdict(list)
    for r in rows:
        e = Envelope.from_wire(asyncpg_json(r["body"]))
        if e.type.startswith("vehicle."):
            moves[e.payload.trip_id].append(e)  # type: ignore[attr-defined]
        elif e.type in ("parcel.registered", "parcel.scanned"):
            by_waybill[e.payload.waybill].append(e)  # type: ignore[attr-defined]
    return {(o.waybill, o.leg, o.brand, o.route_id or "", o.township or "", o.village or "",
             o.start_at, o.due_at, o.at_risk_at, o.end_at, o.outcome, o.minutes_over, o.cause,
             o.day, o.start_event, o.end_event)
            for w, evs in by_waybill.items()
            for o in evaluate_parcel(w, evs, moves, county, county.sla)}


def asyncpg_json(value: Any) -> dict[str, Any]:
    """A jsonb column as read by a plain connection (text) or a pooled one (decoded)."""
    return json.loads(value) if isinstance(value, str) else value  # type: ignore[no-any-return]


def _three_hours_in(scans: list[dict[str, Any]]) -> datetime:
    """When the runs leave: three hours after the first scan (most parcels loaded by then)."""
    return datetime.fromisoformat(min(s["occurred_at"] for s in scans)) + timedelta(hours=3)


def test_given_scans_in_reverse_order_and_late_runs_then_legs_match_the_rule_and_daily_a_recount(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=77, parcels=40, steps=7)
    departures = traffic.departures(scans, _three_hours_in(scans))
    by_step: dict[int, list[dict[str, Any]]] = defaultdict(list)
    seen: dict[str, int] = defaultdict(int)
    for s in scans:
        seen[s["payload"]["waybill"]] += 1
        by_step[seen[s["payload"]["waybill"]]].append(s)
    # Given: the last scans first (a leg ends before it starts), the manifests in between, then
    # the runs that carried them (which re-judges every parcel loaded on them) …
    for step in sorted(by_step, reverse=True)[:3]:
        assert _post(client, tokens["scanner"], by_step[step])["rejected"] == 0
    for brand, events in regs.items():
        assert _post(client, tokens[f"{brand}-system"], events)["rejected"] == 0
    for step in sorted(by_step, reverse=True)[3:]:
        assert _post(client, tokens["scanner"], by_step[step])["rejected"] == 0
    assert departures and _post(client, tokens["scanner"], departures)["rejected"] == 0
    # … and everything once more (a redelivery changes nothing).
    _post(client, tokens["scanner"], scans + departures)

    waybills = [p.waybill for p in traffic.parcels]
    trips = sorted({d["payload"]["trip_id"] for d in departures})
    expected_events = sum(map(len, regs.values())) + len(scans) + len(departures)
    wait_for(lambda: db_fetch(platform, "SELECT count(*) AS n FROM sla_events WHERE"
                                        " waybill = ANY($1) OR trip_id = ANY($2) AND waybill IS NULL",
                              waybills, trips)[0]["n"] == expected_events,
             30.0, "the SLA inbox to hold every event")

    # Then: the legs are exactly what the rule gives from the whole history …
    stored = {tuple(r) for r in db_fetch(
        platform, f"SELECT {LEG_COLUMNS} FROM sla_legs WHERE waybill = ANY($1)", waybills)}
    expected = _expected_legs(platform, county, waybills, trips)
    assert expected and {o[10] for o in expected} >= {"on_time"}
    assert stored == expected
    # … and the daily slices hold what a recount of all legs gives (none left at zero).
    daily = {tuple(r) for r in db_fetch(platform, "SELECT day, leg, route_id, township, village,"
                                                  " brand, on_time, late FROM sla_daily")}
    assert daily == {tuple(r) for r in db_fetch(platform, RECOUNT)}


OLD_INBOXES = """
CREATE TABLE tracking_events (event_id text PRIMARY KEY, waybill text NOT NULL,
    brand text NOT NULL, occurred_at timestamptz NOT NULL, body jsonb NOT NULL);
CREATE TABLE sla_events (event_id text PRIMARY KEY, brand text NOT NULL, waybill text,
    trip_id text, body jsonb NOT NULL);
CREATE INDEX tracking_events_waybill ON tracking_events (waybill);
CREATE INDEX sla_events_waybill ON sla_events (waybill);
CREATE INDEX sla_events_trip ON sla_events (trip_id);
"""


def test_given_inboxes_with_bodies_when_the_lean_migration_runs_then_facts_are_kept_and_bodies_go(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    """013 on an existing database, in a scratch schema holding the inboxes as 001/003 made them."""
    traffic, regs, scans = _lifecycle(county, seed=78, parcels=3, steps=7)
    departures = traffic.departures(scans, _three_hours_in(scans))
    assert _post(client, tokens["scanner"], departures)["rejected"] == 0
    for brand, events in regs.items():
        assert _post(client, tokens[f"{brand}-system"], events)["rejected"] == 0
    assert _post(client, tokens["scanner"], scans)["rejected"] == 0
    waybills = [p.waybill for p in traffic.parcels]
    trips = sorted({d["payload"]["trip_id"] for d in departures})

    async def go() -> tuple[list[Any], list[Any]]:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url)
        try:
            await conn.execute("DROP SCHEMA IF EXISTS lean_check CASCADE; CREATE SCHEMA lean_check;"
                               " SET search_path TO lean_check;" + OLD_INBOXES)
            await conn.execute(
                "INSERT INTO sla_events SELECT event_id, brand,"
                " CASE WHEN type LIKE 'parcel.%' THEN partition_key END,"
                " body->'payload'->>'trip_id', body FROM public.journal"
                " WHERE (partition_key = ANY($1) OR partition_key = ANY($2))"
                " AND type IN ('parcel.registered', 'parcel.scanned', 'vehicle.departed')",
                waybills, trips)
            await conn.execute(
                "INSERT INTO tracking_events SELECT event_id, partition_key, brand, occurred_at,"
                " body FROM public.journal WHERE partition_key = ANY($1)", waybills)
            await conn.execute((SCHEMA_DIR / "013_lean_projections.sql").read_text())
            migrated = await conn.fetch(
                "SELECT event_id, type, occurred_at, node_id, action, destination_village,"
                " scheduled_at, trip_id, body FROM sla_events")
            bodies = await conn.fetch("SELECT body FROM tracking_events")
            return migrated, bodies
        finally:
            await conn.execute("RESET search_path; DROP SCHEMA IF EXISTS lean_check CASCADE")
            await conn.close()

    migrated, bodies = asyncio.run(go())
    assert bodies and all(r["body"] is None for r in bodies)
    journal = {r["event_id"]: Envelope.from_wire(asyncpg_json(r["body"])) for r in db_fetch(
        platform, "SELECT event_id, body FROM journal WHERE partition_key = ANY($1)"
                  " OR partition_key = ANY($2)", waybills, trips)}
    assert {r["type"] for r in migrated} == {"parcel.registered", "parcel.scanned",
                                             "vehicle.departed"}
    for r in migrated:
        e = journal[r["event_id"]]
        p: Any = e.payload
        assert r["body"] is None
        assert (r["type"], r["occurred_at"], r["node_id"], r["destination_village"],
                r["scheduled_at"], r["trip_id"]) == (
            e.type, e.occurred_at, getattr(p, "node_id", None),
            getattr(p, "destination_village", None), getattr(p, "scheduled_at", None),
            getattr(p, "trip_id", None))
        assert r["action"] == (str(p.action) if e.type == "parcel.scanned" else None)

