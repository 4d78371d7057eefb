"""Two stream workers share a county's partitions: they split them, a stopped one's partitions
move to the other (SIGTERM and kill -9, while events flow), and what the read models hold is what
one worker would have made of the same traffic: nothing lost, nothing applied twice.

"What one worker makes of it" is the projection's own rebuild: one process replaying the journal
in order into scratch tables (projections/runtime.py), compared row by row with the live model the
two workers kept. Besides, every waybill's timeline holds exactly the event ids sent for it."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from domain.county import County
from entrypoints.platform import Child, Platform
from infra.db import _init_connection
from loadtest.traffic import CountyTraffic, county_time
from projections import runtime
from projections.runtime import Stored
from projections.tracking_store import TrackingProjection
from streams.rebuild import rebuild_projection
from tests.conftest import TEST_SETTINGS, UNLIMITED_WRITERS, bearer, db_fetch, issue, wait_for

TOPICS = ("parcel-events", "vehicle-events")
PARTITIONS = 4
# A stopped worker's partitions must be held by the other within this long: a SIGTERMed worker
# leaves the group at once, a killed one is noticed after the session timeout (4 s embedded),
# then the group rejoins; generous, for a loaded 2-core CI box.
MOVE_BOUND_S = 60.0
WAIT_S = 240.0


@pytest.fixture(scope="module")
def two_workers(tmp_path_factory: pytest.TempPathFactory, county_file: Path) -> Iterator[Platform]:
    p = Platform(tmp_path_factory.mktemp("scale-out"), county_file=county_file,
                 topic_partitions=PARTITIONS, services=("relay", "worker", "api"), workers=2,
                 settings_changes={**TEST_SETTINGS, **UNLIMITED_WRITERS})
    try:
        p.start(timeout=180)
        yield p
    finally:
        p.stop()


def county_days(county: County, rng: random.Random, chunks: int,
                parcels: int) -> list[list[tuple[str, list[dict[str, Any]]]]]:
    """`chunks` independent slices of traffic, each a day of its own (so no run is shared between
    slices): per slice, the manifests per brand then seven scan rounds with the runs' departures.
    Each item is (token name, events)."""
    # Days in July 2026: inside the test horizon, in a month no test reads whole (the side-by-side
    # test posts these to the session platform too, where test_reports owns August).
    first = datetime(2026, 7, 3, 6, 0, tzinfo=UTC) + timedelta(days=rng.randrange(0, 10))
    out = []
    for k in range(chunks):
        traffic = CountyTraffic(county, seed=rng.randrange(2**62))
        t0 = county_time(county, first + timedelta(days=k))
        regs: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for _ in range(parcels):
            parcel, event = traffic.register(t0)
            regs[parcel.brand].append(event)
        batches: list[tuple[str, list[dict[str, Any]]]] = [
            (f"{brand}-system", events) for brand, events in regs.items()]
        for step in range(7):
            at = t0 + timedelta(hours=step + 1)
            scans = [s for p in traffic.parcels if (s := traffic.advance(p, at))]
            batches.append(("scanner", traffic.departures(scans, at) + scans))
        out.append(batches)
    return out


def tokens_for(platform: Platform, county: County) -> dict[str, str]:
    out = {"scanner": issue(platform, "scanner", "pda-scale", list(county.brands))}
    for brand in county.brands:
        out[f"{brand}-system"] = issue(platform, "brand-system", f"{brand}-scale", [brand])
    return out


def post_all(platform: Platform, tokens: dict[str, str],
             batches: list[tuple[str, list[dict[str, Any]]]],
             halfway: threading.Event | None = None) -> None:
    """Upload the batches in order (all accepted); `halfway` is set once half of them are in."""
    with httpx.Client(base_url=platform.api_url, timeout=60) as client:
        for i, (name, events) in enumerate(batches):
            if halfway is not None and i == len(batches) // 2:
                halfway.set()
            r = client.post("/v1/scan-batches", json={"events": events},
                            headers=bearer(tokens[name]))
            assert r.status_code == 200, r.text
            results = [x["status"] for x in r.json()["results"]]
            assert set(results) == {"accepted"}, r.text


def halfway_through(platform: Platform, tokens: dict[str, str],
                    batches: list[tuple[str, list[dict[str, Any]]]],
                    fault: Callable[[], object]) -> tuple[threading.Thread, float]:
    """Start uploading `batches` and, once half are in, strike with `fault`: the upload thread
    (join it) and when the fault struck."""
    halfway = threading.Event()
    flowing = threading.Thread(target=post_all, args=(platform, tokens, batches, halfway))
    flowing.start()
    assert halfway.wait(120)
    struck = time.monotonic()
    fault()
    return flowing, struck

def held(platform: Platform, ids: list[str]) -> tuple[int, int]:
    """How many of `ids` the tracking and the SLA inboxes hold."""
    row = db_fetch(platform, "SELECT (SELECT count(*) FROM tracking_events WHERE event_id = ANY($1))"
                   " AS t, (SELECT count(*) FROM sla_events WHERE event_id = ANY($1)) AS s", ids)[0]
    return row["t"], row["s"]


def wait_held(platform: Platform, sent: list[dict[str, Any]]) -> None:
    parcel_ids = [e["event_id"] for e in sent if e["type"].startswith("parcel.")]
    all_ids = [e["event_id"] for e in sent]
    sla_ids = [e["event_id"] for e in sent if e["type"] != "consent.recorded"]
    wait_for(lambda: held(platform, all_ids) == (len(parcel_ids), len(sla_ids)) or None, WAIT_S,
             f"both projections to hold {len(all_ids)} events (held: {held(platform, all_ids)})")


def assert_delivered_with_exactly(platform: Platform, sent: list[dict[str, Any]]) -> list[str]:
    """Every waybill of `sent` is delivered, and its timeline holds exactly the parcel events sent
    for it, each once. Returns those waybills."""
    by_waybill: dict[str, list[str]] = defaultdict(list)
    for e in sent:
        if e["type"].startswith("parcel."):
            by_waybill[e["payload"]["waybill"]].append(e["event_id"])
    rows = db_fetch(platform, "SELECT waybill, status, view FROM parcels WHERE waybill = ANY($1)",
                    list(by_waybill))
    assert len(rows) == len(by_waybill)
    for row in rows:
        timeline = [t["event_id"] for t in _json(row["view"])["timeline"]]
        assert sorted(timeline) == sorted(by_waybill[row["waybill"]]), row["waybill"]
        assert row["status"] == "delivered", row["waybill"]
    return list(by_waybill)


def split_evenly(platform: Platform) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    every = {(t, p) for t in TOPICS for p in range(PARTITIONS)}
    a, b = platform.assignment("worker") or [], platform.assignment("worker-2") or []
    if a and b and not set(a) & set(b) and set(a) | set(b) == every:
        return a, b
    return [], []


def held_alone(platform: Platform, worker: str) -> bool:
    every = {(t, p) for t in TOPICS for p in range(PARTITIONS)}
    return set(platform.assignment(worker) or []) == every


def moved_within(platform: Platform, survivor: str, since: float) -> float:
    wait_for(lambda: held_alone(platform, survivor), MOVE_BOUND_S,
             f"{survivor} to hold every partition")
    return time.monotonic() - since


def test_given_two_workers_when_one_stops_mid_stream_then_its_partitions_move_and_the_models_equal_one_workers(
        two_workers: Platform, county: County) -> None:
    p = two_workers
    tokens = tokens_for(p, county)
    rng = random.Random(time.time_ns())
    days = county_days(county, rng, chunks=4, parcels=60)
    sent: list[dict[str, Any]] = []

    # Given two workers: the group split the partitions between them, each holds some.
    a, b = wait_for(lambda: split_evenly(p) if split_evenly(p)[0] else None, 60,
                    "the two workers to split the partitions")
    print(f"split: worker {a}, worker-2 {b}")
    # and the operator sees it: `gongpei status` says what each worker holds.
    status = subprocess.run([sys.executable, "-m", "entrypoints.cli", "status", "--state-dir",
                             str(p.state_dir)], capture_output=True, text=True, timeout=60,
                            check=False)
    for name, held in (("worker", a), ("worker-2", b)):
        assert f"  {name} holds " + ", ".join(f"{t}/{n}" for t, n in held) in status.stdout, (
            status.stdout + status.stderr)
    post_all(p, tokens, days[0])
    sent += [e for _, events in days[0] for e in events]
    wait_held(p, sent)

    # When worker-2 is stopped (SIGTERM) halfway through a day's traffic,
    flowing, stopped = halfway_through(p, tokens, days[1], p.children["worker-2"].stop)
    # then the first worker holds every partition within the bound, and nothing goes missing.
    print(f"SIGTERM: partitions moved in {moved_within(p, 'worker', stopped):.1f} s")
    flowing.join()
    sent += [e for _, events in days[1] for e in events]
    wait_held(p, sent)

    # worker-2 comes back: the group splits again, while traffic flows.
    flowing = threading.Thread(target=post_all, args=(p, tokens, days[2]))
    flowing.start()
    p.restart_service("worker-2")
    wait_for(lambda: split_evenly(p)[0] or None, MOVE_BOUND_S, "the group to split again")
    flowing.join()
    sent += [e for _, events in days[2] for e in events]

    # When the first worker is killed outright (kill -9) halfway through a day's traffic,
    flowing, killed = halfway_through(p, tokens, days[3], p.children["worker"].kill)
    print(f"kill -9: partitions moved in {moved_within(p, 'worker-2', killed):.1f} s")
    flowing.join()
    sent += [e for _, events in days[3] for e in events]
    wait_held(p, sent)

    # Then every waybill's timeline holds exactly the events sent for it, once each,
    waybills = assert_delivered_with_exactly(p, sent)
    # and the tracking and SLA models are, row for row, what one process replaying the journal
    # in order makes of the same traffic.
    assert p.settings is not None
    for name in ("tracking", "sla"):
        report = asyncio.run(rebuild_projection(p.settings, county, name, swap=False))
        assert report.differing == 0, (name, report.tables)
        assert report.set_aside == 0, name
    legs = db_fetch(p, "SELECT count(*) AS n FROM sla_legs WHERE waybill = ANY($1)",
                    waybills)[0]["n"]
    assert legs >= len(waybills)  # the SLA saw these parcels (not an empty comparison)
    # and the lag the platform reports is the surviving worker's, with nothing left of the stopped
    # ones (their last figures would otherwise stay in the sum across workers).
    wait_for(lambda: lags(p) == {"tracking": 0.0, "sla": 0.0} or None, 60,
             f"the reported lag to be 0 (it is {lags(p)})")


def lags(platform: Platform) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{platform.api_url}/metrics", timeout=10).text
    return {s.labels["projection"]: s.value for fam in text_string_to_metric_families(text)
            for s in fam.samples if s.name == "gongpei_projection_lag_events"
            and s.labels.get("projection") in ("tracking", "sla")}


def _json(value: Any) -> Any:
    import json

    return json.loads(value) if isinstance(value, str) else value


def test_given_two_workers_applying_one_partition_at_once_then_the_second_waits_and_counts_duplicates(
        two_workers: Platform, county: County) -> None:
    """The moment a partition changes hands: the old holder's batch is still open when the new
    holder re-reads from the stored offset. The new holder's insert of the same event ids waits
    for the old holder's commit, then counts them as duplicates and folds only what is new onto
    the committed view: every waybill ends with each of its events once, as if applied once."""
    p = two_workers
    assert p.settings is not None
    rng = random.Random(time.time_ns())
    traffic = CountyTraffic(county, seed=rng.randrange(2**62))
    t0 = county_time(county, datetime(2026, 8, 20, 6, 0, tzinfo=UTC) + timedelta(days=rng.randrange(5)))
    for _ in range(6):
        traffic.register(t0)
    scans = [s for step in range(7) for parcel in traffic.parcels
             if (s := traffic.advance(parcel, t0 + timedelta(hours=step + 1)))]
    projection = TrackingProjection(county)
    topic = f"overlap-{rng.randrange(10**9)}"  # a partition of its own in consumer_offsets
    items = [(Stored(topic, 0, i, e["event_id"], b""), projection.decode(
        i, {**e, "recorded_at": e["occurred_at"], "device_id": "test"})) for i, e in enumerate(scans)]
    old, new = items[:30], items[10:]  # the new holder starts below where the old one got to

    async def handover() -> bool:
        first = await asyncpg.connect(p.settings.database_url)  # type: ignore[union-attr]
        second = await asyncpg.connect(p.settings.database_url)  # type: ignore[union-attr]
        await _init_connection(first)
        await _init_connection(second)
        try:
            open_batch = first.transaction()
            await open_batch.start()  # the old holder's batch, applied but not yet committed
            await runtime.apply_decoded(first, projection, old, [], {(topic, 0): 30})
            late = asyncio.ensure_future(runtime.apply_decoded(
                second, projection, new, [], {(topic, 0): len(items)}))
            await asyncio.sleep(1.0)
            waited = not late.done()  # blocked on the old holder's uncommitted inbox rows
            await open_batch.commit()
            outcome = await asyncio.wait_for(late, 60)
            assert outcome.applied.new == len(items) - 30, outcome.applied
            assert outcome.applied.duplicate == 20, outcome.applied
            return waited
        finally:
            await first.close()
            await second.close()

    assert asyncio.run(handover()), "the new holder did not wait for the old holder's commit"
    assert_delivered_with_exactly(p, scans)
    assert db_fetch(p, "SELECT next_offset FROM consumer_offsets WHERE consumer = 'tracking'"
                    " AND topic = $1", topic)[0]["next_offset"] == len(items)


def test_given_a_worker_that_kept_a_live_gauge_when_it_is_stopped_then_its_figure_is_dropped(
        tmp_path: Path) -> None:
    """A stopped or killed worker's last lag must not stay in the sum across live workers:
    prometheus_client keeps a process's live gauges until told the process is dead."""
    code = ("from prometheus_client import Gauge; import time;"
            " Gauge('scale_test_lag', 'x', multiprocess_mode='livesum').set(5); time.sleep(60)")
    for stop in ("stop", "kill"):
        child = Child(stop, [sys.executable, "-c", code],
                      {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}, tmp_path / "w.log")
        child.start()
        wait_for(lambda: list(tmp_path.glob("gauge_livesum_*.db")), 30, "the child's gauge file")
        getattr(child, stop)()
        assert list(tmp_path.glob("gauge_livesum_*.db")) == [], stop
