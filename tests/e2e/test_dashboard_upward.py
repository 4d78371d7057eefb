"""The dashboard's upward panel (农产品上行) in a real headless Chromium: the upward traffic of
tests/integration/test_upward.py, on days of its own, shows the API's own figures; a day without
upward traffic outside the harvest season has no panel. Screenshot in test-artifacts/."""

from __future__ import annotations

from typing import Any

import httpx

from entrypoints.platform import Platform
from tests.conftest import bearer, wait_for
from tests.e2e.test_dashboard import ARTIFACTS, browser  # noqa: F401  (the Chromium fixture)
from tests.integration import test_upward as up
from tests.integration.test_sms import post


def _dashboard(client: httpx.Client, token: str, day: str, now: str) -> dict[str, Any]:
    r = client.get("/v1/sla/dashboard", headers=bearer(token), params={"day": day, "now": now})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def _open(browser: Any, platform: Platform, token: str, day: str, now: str) -> Any:  # noqa: F811
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(f"{platform.api_url}/dashboard?token={token}&day={day}&now={now.replace('+', '%2B')}")
    page.wait_for_selector("body[data-loaded=true]", timeout=15000)
    return page


# Days of its own: test_upward.py's dashboard figures for its days are exact, on the same platform.
FIRST = 13
DAY, NEXT, NOW = "2026-09-13", "2026-09-14", "2026-09-16T00:00:00+08:00"


def test_the_upward_panel_shows_the_apis_figures_and_hides_without_upward_traffic(
        browser: Any, platform: Platform, client: httpx.Client,  # noqa: F811
        tokens: dict[str, str]) -> None:
    wb, system, scanner = up.upward_days(FIRST)
    assert post(client, tokens["SF-system"], system)["accepted"] == 1
    assert post(client, tokens["scanner"], scanner)["accepted"] == len(scanner)
    mine = set(wb.values())

    # (No db_fetch here: Playwright's loop runs in this thread.) Judged once both days' breaches
    # of these parcels are in and the panel reads the same twice in a row.
    late = {p: {leg for leg, outcome, *_ in legs if outcome == "late"} for p, legs in up.EXPECTED.items()}

    def breaches(day: str) -> set[str]:
        r = client.get("/v1/sla/breaches", headers=bearer(tokens["manager"]),
                       params={"day": day, "now": NOW})
        return {x["waybill"] + x["leg"] for x in r.json()["breaches"] if x["waybill"] in mine}

    expected = {wb[p] + leg for p, legs in late.items() for leg in legs}
    wait_for(lambda: breaches(DAY) | breaches(NEXT) == expected, 60.0, "the breaches")
    seen: list[dict[str, Any]] = []

    def steady() -> dict[str, Any] | None:
        seen.append(_dashboard(client, tokens["manager"], DAY, NOW))
        return seen[-1] if len(seen) > 1 and seen[-1]["upward"] == seen[-2]["upward"] else None

    api = wait_for(steady, 60.0, "the panel to settle")
    t = api["upward"]["today"]
    page = _open(browser, platform, tokens["manager"], DAY, NOW)
    assert page.locator("#upward-section").is_visible()
    shown = {k: page.locator(f"[data-upward-{k}]").inner_text()
             for k in ("parcels", "kg", "perishable", "chain-ok", "chain-late", "air-made",
                       "air-missed", "cold-chain")}
    assert shown == {
        "parcels": str(t["parcels"]), "kg": f"{t['weight_g'] / 1000:.1f}",
        "perishable": str(t["perishable"]), "chain-ok": str(t["cold_chain"]["on_time"]),
        "chain-late": str(t["cold_chain"]["late"]), "air-made": str(t["air_cutoff"]["made"]),
        "air-missed": str(t["air_cutoff"]["missed"]),
        "cold-chain": f"{t['cold_chain']['rate_permille'] / 10:.1f}%"}
    assert page.locator(f"[data-upward-day='{DAY}']").count() == 1
    # The perishable legs have their cards in the headline on a day they have figures.
    assert page.locator("[data-leg=cold_chain] [data-late]").inner_text() == str(
        next(x["late"] for x in api["legs"] if x["id"] == "cold_chain"))
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "dashboard-upward.png"), full_page=True)
    page.close()

    quiet_day, quiet_now = "2026-06-10", "2026-06-11T00:00:00+08:00"   # June: no harvest
    assert not _dashboard(client, tokens["manager"], quiet_day, quiet_now)["upward"]["shown"]
    page = _open(browser, platform, tokens["manager"], quiet_day, quiet_now)
    assert not page.locator("#upward-section").is_visible()
    page.close()
