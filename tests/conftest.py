"""The integration and e2e tiers run against the real embedded broker and PostgreSQL, started here once per
session on free ports, with the relay, the worker and the API as real child processes."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from api import auth
from domain.county import County
from entrypoints.platform import Platform
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY

# Test machines' disks are shared and often tight: the supervisor's low-disk warning (1 GiB free by
# default) would turn every `/healthz` into "degraded" there. Tests of the warning set their own.
os.environ.setdefault("GONGPEI_DISK_WARN_FREE_MB", "32")


@pytest.fixture(scope="session")
def county_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo county, with SMS rules a test can wait for: a 3-second digest window and no
    quiet hours (CI runs at any hour)."""
    text = DEMO_COUNTY.read_text(encoding="utf-8")
    for old, new in (("digest_minutes = 10", "digest_seconds = 3"),
                     ('quiet_start = "21:00"', 'quiet_start = "00:00"'),
                     ('quiet_end = "08:00"', 'quiet_end = "00:00"')):
        assert old in text, old
        text = text.replace(old, new)
    # The hand-made fixtures' waybills (golden events, the SLA day, the settlement October) predate
    # the brands' formats: only YUNDA's pattern stays, a brand they never use, for the checks.
    kept = 'YUNDA = "43[0-9]{13}"'
    text, n = re.subn(r'^(EMS|ZTO|YTO|STO|JT|SF|JD) = ".*"\n', "", text, flags=re.MULTILINE)
    assert n == 7 and kept in text, n
    path = tmp_path_factory.mktemp("county") / "haicheng-test.toml"
    path.write_text(text, encoding="utf-8")
    return path


# The fixtures are dated days (the scale-out days in July 2026, the report's August, an SLA day in
# September, a settlement October, a lifecycle on 2026-11-11): the test platform's horizon reaches
# back to them with a month to spare, however long after they were written the suite runs. The rule itself stays on (test_ingest_edges).
FIXTURES_SINCE = date(2026, 7, 1)


def fixture_horizon_days() -> int:
    return (datetime.now(UTC).date() - FIXTURES_SINCE).days + 30


TEST_SETTINGS: dict[str, object] = {"max_event_age_days": fixture_horizon_days()}
# The suite is a county's traffic through a handful of shared tokens, far beyond one device's
# limits; the limits themselves are tried on a platform of their own (test_writers.py).
UNLIMITED_WRITERS: dict[str, object] = {"upload_burst": 10**6, "upload_events_burst": 10**9,
                                        "upload_concurrency": 64, "read_burst": 10**6}


@pytest.fixture(scope="session")
def platform(tmp_path_factory: pytest.TempPathFactory, county_file: Path) -> Iterator[Platform]:
    # Gateway calls take 20–150 ms, so a SIGKILL of the sender often lands mid-call.
    p = Platform(tmp_path_factory.mktemp("gongpei-state"), county_file=county_file,
                 topic_partitions=4, gateway_args=("--latency", "0.02,0.15", "--receipt-delay", "1,6",
                                "--seed", "7"),
                 # Numbers starting 1990 always fail at the primary: the failover test's.
                 primary_gateway_args=("--fail-prefix", "1990"),
                 # A small account's SendSms rate: the sender has many calls in progress, yet
                 # a wave's calls spread over seconds, so the SMS crash test's kills land mid-call.
                 settings_changes={**TEST_SETTINGS, **UNLIMITED_WRITERS,
                                   "sms_qps": "aliyun=20,tencent=20"})
    try:
        p.start(timeout=90)
        yield p
    finally:
        p.stop()


@pytest.fixture(scope="session")
def county(county_file: Path) -> County:
    return load_county(county_file)


def issue(platform: Platform, role: str, name: str, brands: list[str],
          node_id: str | None = None) -> str:
    async def go() -> str:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url)
        try:
            return (await auth.create(conn, role=role, name=name, brands=brands,
                                      node_id=node_id))[1]
        finally:
            await conn.close()

    return asyncio.run(go())


@pytest.fixture(scope="session")
def tokens(platform: Platform, county: County) -> dict[str, str]:
    out = {
        "scanner": issue(platform, "scanner", "pda-test", list(county.brands)),
        "scanner-zto": issue(platform, "scanner", "pda-zto", ["ZTO"]),
        "manager": issue(platform, "manager", "manager", []),
        "finance": issue(platform, "finance", "operator-finance", []),
        "finance-admin": issue(platform, "finance-admin", "finance-admin", []),
    }
    for brand in county.brands:
        out[f"{brand}-system"] = issue(platform, "brand-system", f"{brand}-sys", [brand])
        out[f"{brand}-brand"] = issue(platform, "brand", f"{brand}-brand", [brand])
        out[f"{brand}-finance"] = issue(platform, "finance", f"{brand}-finance", [brand])
    return out


@pytest.fixture(scope="session")
def client(platform: Platform) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=platform.api_url, timeout=15) as c:
        yield c


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll until `predicate` returns something truthy; fail naming `what`."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


def db_fetch(platform: Platform, sql: str, *args: Any) -> list[asyncpg.Record]:
    """Run a query as the schema owner (superuser): for checks of what is stored, not tenancy."""
    async def go() -> list[asyncpg.Record]:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url)
        try:
            return await conn.fetch(sql, *args)
        finally:
            await conn.close()

    return asyncio.run(go())


__all__ = ["Path", "bearer", "db_fetch", "issue", "wait_for"]
