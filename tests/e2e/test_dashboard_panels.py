"""The manager's dashboard at 7 a.m., in a real headless Chromium, with something in every panel:
the hand-made day of tests/integration/test_sla_panels.py (misrouted, stuck and late parcels, a
late run) and, today, a small wave of arrival SMS with one number that fails and one recipient
who never consented. Screenshots go to test-artifacts/."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from domain.county import County
from entrypoints.platform import Platform
from loadtest.traffic import county_time
from tests.conftest import bearer, wait_for
from tests.e2e.test_dashboard import ARTIFACTS, browser  # noqa: F401  (the Chromium fixture)
from tests.integration import test_sla_panels as day
from tests.integration.test_sms import consent, phone, post, register, sms_of, stored, waybill
from tests.integration.test_spine import _post


def _the_hand_made_day(client: httpx.Client, tokens: dict[str, str]) -> None:
    regs, scans = day.the_day()  # idempotent: a second upload is all duplicates
    assert _post(client, tokens["ZTO-system"], regs)["rejected"] == 0
    assert _post(client, tokens["scanner"], scans)["rejected"] == 0
    wait_for(lambda: day.legs_of(day.dashboard(client, tokens["manager"])) == day.EXPECTED_LEGS,
             30.0, "the hand-made day in the read models")


def _a_wave_of_sms_today(client: httpx.Client, tokens: dict[str, str],
                         county: County) -> dict[str, Any]:
    """Three parcels stored at 西柳村 now: one SMS delivered, one to a recipient who has not
    consented to station delivery, one to a number the provider reports failed (a call for the
    keeper)."""
    now = county_time(county, datetime.now(UTC)) - timedelta(minutes=1)
    ok, no_consent, bad = phone(), phone(), phone()[:7] + "4444"
    wave = {"ok": (waybill("ZTO"), ok, True), "no_consent": (waybill("ZTO"), no_consent, False),
            "bad": (waybill("ZTO"), bad, True)}
    for wb, mobile, given in wave.values():
        post(client, tokens["ZTO-system"], [register(county, wb, "ZTO", mobile, now),
                                            consent(wb, "ZTO", now, given)])
    post(client, tokens["scanner"], [stored(wb, "ZTO", now + timedelta(seconds=i), f"8-1-{i:04d}")
                                     for i, (wb, _, _) in enumerate(wave.values())])

    def settled() -> bool:
        return all((s := sms_of(client, tokens["manager"], wb)["sms"])
                   and s[-1]["state"] in ("delivered", "failed") for wb, _, _ in wave.values())

    wait_for(settled, 60, "the wave's SMS delivered or failed")
    calls = client.get("/v1/sms/call-list", headers=bearer(tokens["manager"])).json()["parcels"]
    assert wave["bad"][0] in {p["waybill"] for p in calls}
    return {k: {"waybill": wb, "phone": mobile} for k, (wb, mobile, _) in wave.items()}


def _open(browser: Any, url: str) -> Any:  # noqa: F811
    page = browser.new_page(viewport={"width": 1366, "height": 900})
    page.goto(url)
    page.wait_for_selector("body[data-loaded=true]", timeout=15000)
    return page


def _shot(page: Any, name: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"dashboard-{name}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000


def test_at_7_am_every_panel_shows_the_days_figures_and_they_add_up(
        browser: Any, platform: Platform, client: httpx.Client, tokens: dict[str, str],  # noqa: F811
        county: County) -> None:
    _the_hand_made_day(client, tokens)
    wave = _a_wave_of_sms_today(client, tokens, county)

    def settled_sms() -> dict[str, Any] | None:  # nothing of today's (or the day's) still on its way
        s = client.get("/v1/sms/summary", headers=bearer(tokens["manager"])).json()
        return s if s["counts"]["requested"] == s["counts"]["submitted"] == 0 else None

    sms = wait_for(settled_sms, 60.0, "every SMS of today delivered or failed")
    nc = client.get("/v1/sms/no-consent", headers=bearer(tokens["manager"])).json()["parcels"]
    now = day.NOW.replace("+", "%2B")
    page = _open(browser, f"{platform.api_url}/dashboard?token={tokens['manager']}&day={day.D}"
                          f"&now={now}")

    # The headline, and the causes adding up to its late legs (overdue ones included).
    c2t = page.locator("[data-leg=county_to_township]")
    assert (c2t.locator("[data-on-time]").inner_text(), c2t.locator("[data-late]").inner_text()) == ("5", "5")
    causes = {c.get_attribute("data-cause"): int(c.locator("b").inner_text())
              for c in page.locator("[data-cause]").all()}
    assert causes == {"misrouted": 3, "not_arrived": 2, "unknown": 1}
    late = sum(int(x.inner_text()) for x in page.locator("[data-late]").all())
    assert sum(causes.values()) == late == 6
    assert "超时未到" in page.locator("#causes").inner_text()

    # Townships: 牛庄 with its five late legs, as in the headline.
    tile = page.locator("#townships .tile")
    assert tile.count() == 1 and "5/10" in tile.inner_text() and "牛庄镇站" in tile.inner_text()

    # Villages: the one needing attention as a tile; the rest in one line.
    assert [t.get_attribute("data-area") for t in page.locator("#villages .tile").all()] == [
        "VIL-NIUZHUANG-03"]
    assert page.locator("[data-villages-fine]").inner_text() == "2"
    assert page.locator("[data-villages-idle]").inner_text() == "150"

    # Runs: all 52 runs of the day by name, the late one first, unseen ones marked.
    rows = page.locator("[data-run]")
    assert rows.count() == 52
    first = rows.nth(0)
    assert first.get_attribute("data-run-status") == "late"
    assert "县中心—牛庄镇线" in first.inner_text() and "14:30" in first.inner_text()
    assert "R-NIUZHUANG" not in page.locator("#runs").inner_text()  # names, not codes
    assert page.locator("[data-run-status=not_recorded]").count() == 50
    assert page.locator("[data-runs-late]").inner_text() == "1"

    # At risk when "now" was 23 Sep 09:00: the two legs due at 10:00.
    assert page.locator("[data-at-risk]").count() == 2
    assert "09-23 10:00" in page.locator("#atrisk").inner_text()

    # Today's SMS: counts, the keeper's call list and the no-consent list, with the wave in them.
    assert sms["counts"]["delivered"] >= 2 and sms["counts"]["failed"] >= 1
    for state in ("delivered", "failed"):
        assert page.locator(f"[data-sms-count={state}]").inner_text() == str(sms["counts"][state])
    # The panel shows the first ten the keepers should call (by point, oldest first).
    assert page.locator("[data-call]").count() == len(sms["call_list"]) > 0
    assert page.locator("[data-sms-calls]").inner_text() == str(sms["call_list_total"])
    bad = wave["bad"]["waybill"]
    assert bad in {p["waybill"] for p in sms["call_list"]} or sms["call_list_total"] > 10
    if bad in {p["waybill"] for p in sms["call_list"]}:
        assert "短信未送达" in page.locator(f"[data-call='{bad}']").inner_text()
    assert page.locator("[data-no-consent-total]").inner_text() == str(len(nc))
    if len(nc) <= 10 or wave["no_consent"]["waybill"] in {p["waybill"] for p in nc[:10]}:
        assert page.locator(f"[data-no-consent='{wave['no_consent']['waybill']}']").count() == 1
    assert page.locator("[data-no-consent]").count() == min(10, len(nc)) > 0
    content = page.content()
    for p in wave.values():
        assert p["phone"] not in content  # masked, never whole
    assert page.locator("#scope").is_hidden()  # the county's own view: no brand banner
    _shot(page, "7am-manager")
    page.close()


def test_a_brands_view_says_plainly_that_it_is_filtered(
        browser: Any, platform: Platform, client: httpx.Client, tokens: dict[str, str]) -> None:  # noqa: F811
    _the_hand_made_day(client, tokens)
    now = day.NOW.replace("+", "%2B")
    own = _open(browser, f"{platform.api_url}/dashboard?token={tokens['SF-brand']}&day={day.D}"
                         f"&now={now}")
    banner = own.locator("#scope")
    assert banner.is_visible() and "SF" in banner.inner_text() and "不是全县合计" in banner.inner_text()
    assert own.locator("[data-leg=county_to_township] [data-late]").inner_text() == "0"  # all ZTO
    assert own.locator("[data-no-consent]").count() == 0  # the list is for the county's staff
    _shot(own, "brand-SF")
    own.close()

    narrowed = _open(browser, f"{platform.api_url}/dashboard?token={tokens['manager']}&day={day.D}"
                              f"&now={now}&brand=ZTO")
    assert narrowed.locator("#scope").get_attribute("data-scope") == "ZTO"
    assert narrowed.locator("[data-leg=county_to_township] [data-late]").inner_text() == "5"
    narrowed.close()
