"""The manager's dashboard in a real headless Chromium: it loads, shows the same numbers as the
API for the scripted day, and leaves a screenshot in test-artifacts/."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import httpx
import pytest

from entrypoints.platform import Platform
from tests.conftest import bearer, wait_for
from tests.fixtures.sla import day as script
from tests.integration.test_sla import ingest_day, rates

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            pytest.fail("Chromium is required in CI (.ci/run installs Debian's chromium)")
        pytest.skip("Debian's chromium is not installed here (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield b
        b.close()


@pytest.mark.parametrize("viewport", [(1366, 900), (820, 1180)], ids=["laptop", "tablet"])
def test_the_dashboard_shows_the_apis_numbers_for_the_scripted_day(
        browser, platform: Platform, client: httpx.Client, tokens: dict[str, str],
        viewport: tuple[int, int]) -> None:
    ingest_day(client, tokens)  # idempotent: a second upload is all duplicates
    wait_for(lambda: rates(client, tokens["manager"]) == script.EXPECTED_RATES, 30.0, "the day")
    api = client.get("/v1/sla/dashboard", headers=bearer(tokens["manager"]),
                     params={"day": script.DAY, "now": script.NOW}).json()

    # The day's parcels stored at village points got their SMS; wait until none is still on its way.
    def settled_sms() -> dict | None:
        s = client.get("/v1/sms/summary", headers=bearer(tokens["manager"])).json()
        c = s["counts"]
        return s if c["delivered"] + c["failed"] > 0 and c["requested"] == c["submitted"] == 0 else None

    sms = wait_for(settled_sms, 60.0, "the scripted day's SMS delivered or failed")
    _a_competitor_tries_a_scripted_parcel(client, tokens)
    conflicts = client.get("/v1/conflicts", headers=bearer(tokens["manager"])).json()

    page = browser.new_page(viewport={"width": viewport[0], "height": viewport[1]})
    page.goto(f"{platform.api_url}/dashboard?token={tokens['manager']}&day={script.DAY}"
              f"&now={script.NOW.replace('+', '%2B')}")
    page.wait_for_selector("body[data-loaded=true]", timeout=15000)

    for leg in api["legs"]:
        card = page.locator(f"[data-leg={leg['id']}]")
        assert card.locator("[data-on-time]").inner_text() == str(leg["on_time"])
        assert card.locator("[data-late]").inner_text() == str(leg["late"])
        shown = card.locator(".rate").inner_text()
        expected = "—" if leg["rate_permille"] is None else f"{leg['rate_permille'] / 10:.1f}%"
        assert shown == expected, (leg["id"], shown)
    assert page.locator("[data-leg=county_to_township] .rate").inner_text() == "87.0%"
    causes = {c.get_attribute("data-cause"): c.locator("b").inner_text()
              for c in page.locator("[data-cause]").all()}
    assert causes == {k: str(v) for k, v in script.EXPECTED_CAUSES.items()}
    assert page.locator("#townships .tile").count() == len(api["townships"]) > 0
    assert page.locator("[data-runs-rate]").inner_text() == "66.6%"
    for state, n in sms["counts"].items():
        if state in ("requested", "submitted", "delivered", "failed", "cancelled"):
            assert page.locator(f"[data-sms-count={state}]").inner_text() == str(n), state
    assert page.locator("[data-sms-calls]").inner_text() == str(sms["call_list_total"])
    assert page.locator("[data-sms-overdue]").inner_text() == "0"
    assert "13700002222" not in page.content()  # the recipient's number, shown nowhere
    assert page.locator("[data-conflicts-open]").inner_text() == str(conflicts["open_total"])
    assert page.locator("[data-conflict]").count() == min(10, conflicts["open_total"]) > 0

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / f"dashboard-{viewport[0]}x{viewport[1]}.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    page.close()


def _a_competitor_tries_a_scripted_parcel(client: httpx.Client, tokens: dict[str, str]) -> None:
    """Another brand's manifest for one of the day's parcels: a conflict for the manager."""
    from datetime import UTC, datetime

    from loadtest.traffic import envelope

    regs, _ = script.day()
    reg = regs["ZTO"][0]
    event = envelope("parcel.registered", 2, datetime.now(UTC), "YTO", "manifest",
                     {**reg["payload"], "recipient_phone": "13900000001"})
    r = client.post("/v1/scan-batches", json={"events": [event]},
                    headers=bearer(tokens["YTO-system"]))
    assert r.json()["results"][0]["reason"] == "waybill_owned_by_other_brand"
