"""The ledger's per-unit state (011_ledger_state.sql) on the embedded stack: a ledger kept before
the state tables existed folds the journal up to its cursor, posting nothing, and then goes on
exactly as the live ledger does; settlement_events holds what the API reads, not every event."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from domain.county import County
from entrypoints.platform import Platform
from infra.db import _init_connection
from loadtest.traffic import CountyTraffic, county_time
from projections import ledger_store
from tests.conftest import db_fetch, wait_for
from tests.integration.test_spine import _post

OLD = "ledger_before_state"
LINES = ("entry_id, line_no, period, posting_date, unit, kind, account, brand, ref, amount_fen,"
         " event_ids, adjusts_period, late_event_id")


def _level(platform: Platform) -> bool:
    return bool(db_fetch(platform, "SELECT (SELECT next_offset - 1 FROM consumer_offsets"
                                   " WHERE consumer = 'ledger' AND topic = 'journal') >="
                                   " (SELECT max(seq) FROM journal WHERE type = ANY($1))",
                         list(ledger_store.LEDGER_TYPES))[0][0])


def _walk(traffic: CountyTraffic, client: httpx.Client, tokens: dict[str, str], t0: datetime,
          steps: range) -> None:
    for step in steps:
        at = t0 + timedelta(hours=step + 1)
        scans = [e for p in traffic.parcels if (e := traffic.advance(p, at))]
        assert _post(client, tokens["scanner"], traffic.departures(scans, at) + scans)["rejected"] == 0


def test_given_books_kept_before_the_state_tables_then_the_ledger_folds_up_to_them_and_goes_on(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    assert platform.settings is not None
    # Given parcels of every brand registered, loaded on their runs (which departed) and booked …
    traffic = CountyTraffic(county, seed=4242)
    t0 = county_time(county, datetime(2026, 11, 20, 0, 0, tzinfo=UTC))
    regs: dict[str, list[dict[str, object]]] = {}
    for _ in range(24):
        parcel, event = traffic.register(t0)
        regs.setdefault(parcel.brand, []).append(event)
    for brand, events in regs.items():
        assert _post(client, tokens[f"{brand}-system"], events)["rejected"] == 0
    _walk(traffic, client, tokens, t0, range(3))
    wait_for(lambda: _level(platform), 30.0, "the ledger level with the journal")

    async def copy_books() -> None:
        # … and a copy of those books as a ledger from before the state tables kept them:
        # lines, periods and cursor, no state, state_seq 0.
        conn = await asyncpg.connect(platform.settings.database_url_for("owner"))  # type: ignore[union-attr]
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {OLD} CASCADE; CREATE SCHEMA {OLD}")
            for table in ledger_store_tables():
                await conn.execute(f"CREATE TABLE {OLD}.{table} (LIKE public.{table} INCLUDING ALL)")
            for table in ("ledger_cursor", "ledger_periods", "ledger_lines", "settlement_events",
                          "consumer_offsets"):  # the last: where the ledger had got to
                await conn.execute(f"INSERT INTO {OLD}.{table} SELECT * FROM public.{table}")
            # Books from before 011 had their cursor in ledger_cursor (seq); 014 keeps that row
            # as how far the one-off fold of such books must go.
            await conn.execute(f"DELETE FROM {OLD}.ledger_cursor")
            await conn.execute(f"INSERT INTO {OLD}.ledger_cursor (name, seq, state_seq)"
                               " SELECT 'ledger', next_offset - 1, 0 FROM public.consumer_offsets"
                               " WHERE consumer = 'ledger' AND topic = 'journal'")
        finally:
            await conn.close()

    asyncio.run(copy_books())
    # When the parcels go on to their points and are picked up (fees, commissions; more loads) …
    _walk(traffic, client, tokens, t0, range(3, 7))
    wait_for(lambda: _level(platform), 30.0, "the ledger level with the journal")

    async def catch_up_old() -> tuple[int, int, int, int]:
        conn = await asyncpg.connect(platform.settings.database_url_for("owner"))  # type: ignore[union-attr]
        try:
            await _init_connection(conn)
            await conn.execute(f"SET search_path TO {OLD}, public")
            await ledger_store.catch_up(conn, county, page=50,
                                        lock=ledger_store.LEDGER_REBUILD_LOCK)
            differing = await conn.fetchval(
                f"SELECT count(*) FROM ((SELECT {LINES} FROM public.ledger_lines EXCEPT ALL"
                f" SELECT {LINES} FROM {OLD}.ledger_lines) UNION ALL (SELECT {LINES} FROM"
                f" {OLD}.ledger_lines EXCEPT ALL SELECT {LINES} FROM public.ledger_lines)) d")
            states = await conn.fetchval(
                f"SELECT count(*) FROM ((SELECT * FROM public.ledger_parcels EXCEPT"
                f" SELECT * FROM {OLD}.ledger_parcels) UNION ALL (SELECT * FROM public.ledger_trips"
                f" EXCEPT SELECT * FROM {OLD}.ledger_trips)) d")
            lines = await conn.fetchval(f"SELECT count(*) FROM {OLD}.ledger_lines")
            fees = await conn.fetchval(f"SELECT count(*) FROM {OLD}.ledger_lines"
                                       " WHERE kind = 'commission_picked_up'")
            return differing, states, lines, fees
        finally:
            await conn.execute(f"RESET search_path; DROP SCHEMA IF EXISTS {OLD} CASCADE")
            await conn.close()

    # … then the old books, brought forward by the ledger, equal the live ones line for line,
    # and their state is the live state, parcel by parcel and trip by trip.
    differing, states, lines, picked_up = asyncio.run(catch_up_old())
    assert lines > 0 and picked_up > 0, "nothing was booked after the copy: nothing is proven"
    assert differing == 0
    assert states == 0


def ledger_store_tables() -> tuple[str, ...]:
    from streams.rebuild import LEDGER_TABLES

    return LEDGER_TABLES


def test_given_the_ledger_then_settlement_events_holds_trip_events_and_their_riders_manifests(
        platform: Platform) -> None:
    # The API's drill-down and what-if read trip events and the manifests of parcels that rode
    # a run; nothing else is copied there (every other event is read once, from the journal).
    stray = db_fetch(platform, "SELECT count(*) FROM settlement_events s WHERE trip_id IS NULL AND"
                               " NOT EXISTS (SELECT 1 FROM settlement_events t WHERE t.trip_id IS"
                               " NOT NULL AND t.waybill = s.waybill)")[0][0]
    riders = db_fetch(platform, "SELECT count(DISTINCT waybill) FROM settlement_events WHERE"
                                " trip_id IS NOT NULL AND body->'payload'->>'action' = 'loaded'")[0][0]
    manifests = db_fetch(platform, "SELECT count(DISTINCT s.waybill) FROM settlement_events s"
                                   " JOIN journal j ON j.event_id = s.event_id"
                                   " WHERE s.type = 'parcel.registered'")[0][0]
    assert riders > 0
    assert stray == 0
    assert manifests == riders
