"""Settlement on the embedded stack: a scripted month through the ingest API gives the statements
computed by hand (tests/fixtures/settlement/october.py); closing freezes the month in PostgreSQL;
a late scan becomes exactly the expected adjustment; exports match; tenancy holds in SQL."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import asyncpg
import httpx
import pytest
from openpyxl import load_workbook

from domain.county import County
from entrypoints.platform import Platform
from tests.conftest import bearer, wait_for
from tests.fixtures.settlement import october
from tests.integration.test_spine import _post


def statement(client: httpx.Client, token: str, brand: str, period: str = "2026-10") -> dict[str, Any]:
    r = client.get(f"/v1/statements/{period}/{brand}", headers=bearer(token))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def october_booked(platform: Platform, client: httpx.Client, tokens: dict[str, str]) -> None:
    regs, scans = october.month()
    for brand, events in regs.items():
        assert _post(client, tokens[f"{brand}-system"], events)["rejected"] == 0
    assert _post(client, tokens["scanner"], scans)["rejected"] == 0
    wait_for(lambda: statement(client, tokens["finance"], "JD")["net"]["fen"] == october.EXPECTED_NET["JD"]
             and statement(client, tokens["finance"], "ZTO")["net"]["fen"] == october.EXPECTED_NET["ZTO"],
             15.0, "the ledger to book October")


def test_given_the_scripted_month_then_each_statement_is_the_hand_computed_figure(
        october_booked: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    for brand, net in october.EXPECTED_NET.items():
        st = statement(client, tokens["finance"], brand)
        assert st["net"]["fen"] == net, brand
        assert st["parcels_by_tier"] == october.EXPECTED_TIERS[brand], brand
        assert st["totals"]["trip_cost"]["fen"] == october.EXPECTED_TRIPS[brand], brand
        assert all(line["event_ids"] for line in st["lines"])  # every charge names its scans


def test_reconciliation_shows_every_trip_fully_shared_and_a_zero_trial_balance(
        october_booked: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    rec = client.get("/v1/reconciliation/2026-10", headers=bearer(tokens["finance"])).json()
    assert rec["ok"] and rec["trips"] == 2 and rec["trial_balance_fen"] == 0
    assert rec["trips_mismatched"] == [] and rec["entries_unbalanced"] == []


def test_a_trip_drills_down_to_its_scans_and_a_brand_sees_only_its_share(
        october_booked: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    whole = client.get("/v1/trips/T-1009-TENGAO", headers=bearer(tokens["finance"])).json()
    shares = {ln["brand"]: ln["fen"] for ln in whole["lines"] if ln["account"].startswith("brand:")}
    assert shares == {"ZTO": 4087, "SF": 2044, "JD": 2044}
    assert {s["action"] for s in whole["scans"]} >= {"loaded"}
    sf = client.get("/v1/trips/T-1009-TENGAO", headers=bearer(tokens["SF-finance"])).json()
    assert {ln["brand"] for ln in sf["lines"]} == {"SF"}
    assert {s["brand"] for s in sf["scans"]} == {"SF"}


def test_what_if_reshares_the_period_without_touching_the_books(
        october_booked: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    before = statement(client, tokens["finance"], "SF")
    wi = client.get("/v1/what-if/2026-10?basis=actual_weight", headers=bearer(tokens["finance"])).json()
    assert wi["total_what_if_fen"] == wi["total_booked_fen"] == 7500 + 8175
    sf = next(b for b in wi["brands"] if b["brand"] == "SF")
    assert sf["booked_fen"] == 3919 and sf["what_if_fen"] > sf["booked_fen"]  # C weighs 12 kg
    assert statement(client, tokens["finance"], "SF") == before


def test_a_brands_finance_token_sees_only_its_own_books(
        october_booked: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    assert statement(client, tokens["SF-finance"], "SF")["net"]["fen"] == october.EXPECTED_NET["SF"]
    r = client.get("/v1/statements/2026-10/ZTO", headers=bearer(tokens["SF-finance"]))
    assert r.status_code == 404
    assert client.get("/v1/reconciliation/2026-10",
                      headers=bearer(tokens["SF-finance"])).status_code == 403
    assert client.get("/v1/trips/T-1008-XILIU", headers=bearer(tokens["JD-finance"])).status_code == 404


def test_the_xlsx_export_opens_and_matches_the_json_to_the_fen(
        october_booked: None, client: httpx.Client, tokens: dict[str, str]) -> None:
    st = statement(client, tokens["finance"], "ZTO")
    r = client.get("/v1/statements/2026-10/ZTO?format=xlsx", headers=bearer(tokens["finance"]))
    wb = load_workbook(io.BytesIO(r.content))
    rows = list(wb["Statement"].iter_rows(values_only=True))
    net = next(row for row in rows if row[0] == "net")
    assert net[3] == st["net"]["fen"] and net[4] == st["net"]["yuan"]
    totals = {row[1]: row[3] for row in rows if row[0] == "total"}
    assert totals == {k: v["fen"] for k, v in st["totals"].items()}
    lines = list(wb["Lines"].iter_rows(values_only=True))[1:]
    assert sum(row[4] for row in lines) == st["net"]["fen"]
    csv = client.get("/v1/statements/2026-10/ZTO?format=csv", headers=bearer(tokens["finance"]))
    assert f"net,owed to the operator,,{st['net']['fen']}," in csv.text


def _try_sql(platform: Platform, sql: str, *, owner: bool) -> str:
    async def go() -> str:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url if owner
                                     else platform.settings.database_url_for("ledger"))
        try:
            async with conn.transaction():
                await conn.execute("SELECT set_config('gongpei.brand_scope', '*', true)")
                await conn.execute(sql)
            return "allowed"
        except asyncpg.PostgresError as exc:
            return str(exc)
        finally:
            await conn.close()

    return asyncio.run(go())


def test_closing_freezes_the_month_in_postgres_and_a_late_scan_becomes_an_adjustment(
        october_booked: None, platform: Platform, client: httpx.Client, tokens: dict[str, str],
        county: County) -> None:
    assert client.post("/v1/periods/2026-10/close",
                       headers=bearer(tokens["finance"])).status_code == 403  # not finance-admin
    closed = client.post("/v1/periods/2026-10/close", headers=bearer(tokens["finance-admin"]))
    assert closed.status_code == 200 and closed.json()["status"] == "closed", closed.text
    assert client.post("/v1/periods/2026-10/close",
                       headers=bearer(tokens["finance-admin"])).status_code == 409
    assert statement(client, tokens["finance"], "SF")["status"] == "closed"

    # PostgreSQL itself refuses any change to a closed period: the ledger's own role, and even the
    # schema owner (a superuser, which bypasses grants and row-level security but not triggers)
    for sql in ("UPDATE ledger_lines SET amount_fen = 0 WHERE period = '2026-10'",
                "DELETE FROM ledger_lines WHERE period = '2026-10'",
                ("INSERT INTO ledger_lines (entry_id, line_no, period, posting_date, unit, kind,"
                " account, amount_fen, event_ids) VALUES ('x', 0, '2026-10', '2026-10-31', 'u',"
                " 'k', 'a', 1, '{}')"),
                "UPDATE ledger_periods SET closed_seq = NULL WHERE period = '2026-10'"):
        assert "closed" in _try_sql(platform, sql, owner=True), sql
        assert _try_sql(platform, sql, owner=False) != "allowed", sql

    _post(client, tokens["scanner"], [october.late_pickup()])
    adj = october.LATE_ADJUSTMENT

    def adjusted() -> dict[str, Any] | None:
        st = statement(client, tokens["finance"], str(adj["brand"]), str(adj["period"]))
        return st if st["adjustments"] else None

    nov = wait_for(adjusted, 15.0, "the adjustment in the open period")
    assert [(a["adjusts_period"], a["kind"], a["fen"]) for a in nov["adjustments"]] == [
        (adj["adjusts"], adj["kind"], adj["fen"])]
    assert statement(client, tokens["finance"], "SF")["net"]["fen"] == october.EXPECTED_NET["SF"]


def test_replaying_the_journal_reproduces_the_ledger_byte_for_byte(
        october_booked: None, platform: Platform, county: County) -> None:
    from streams.rebuild import rebuild_ledger_check

    assert platform.settings is not None
    found = asyncio.run(rebuild_ledger_check(platform.settings, county))
    assert found["differing"] == 0 and found["live"] == found["rebuilt"] > 0, found
