"""Invariant 1: an event acknowledged to a scanner is never lost — not by a crash of the worker
(SIGKILL mid-stream) nor of PostgreSQL; and the read model counts each event once."""

from __future__ import annotations

import httpx

from domain.county import County
from entrypoints.platform import Platform
from tests.conftest import bearer, db_fetch, wait_for
from tests.integration.test_spine import _ingest, _lifecycle, _post, _wait_timeline


def _projected_exactly_once(platform: Platform, waybills: list[str]) -> None:
    rows = db_fetch(platform, "SELECT count(*) AS n, count(DISTINCT event_id) AS d FROM"
                              " tracking_events WHERE waybill = ANY($1)", waybills)
    assert rows[0]["n"] == rows[0]["d"]
    journal = db_fetch(platform, "SELECT count(*) AS n FROM journal WHERE partition_key = ANY($1)",
                       waybills)
    assert rows[0]["n"] == journal[0]["n"]


def test_given_a_worker_killed_mid_stream_when_restarted_then_every_event_is_applied_once(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=31, parcels=70, steps=7)
    _ingest(client, tokens, regs, scans[:250])
    platform.restart_service("worker", kill=True)  # SIGKILL, whatever it was doing
    _post(client, tokens["scanner"], scans[250:])
    platform.wait_ready(60)
    for p in traffic.parcels[:: 10]:
        _wait_timeline(client, tokens["manager"], p.waybill, 8, 30.0)
    waybills = [p.waybill for p in traffic.parcels]
    wait_for(lambda: db_fetch(platform, "SELECT count(*) AS n FROM tracking_events WHERE"
                                        " waybill = ANY($1)", waybills)[0]["n"] == 70 * 8,
             30.0, "all events projected")
    _projected_exactly_once(platform, waybills)


def test_given_postgres_crashes_then_acknowledged_events_survive_and_uploads_resume(
        platform: Platform, client: httpx.Client, tokens: dict[str, str], county: County) -> None:
    traffic, regs, scans = _lifecycle(county, seed=32, parcels=5, steps=7)
    _ingest(client, tokens, regs, scans[:10])
    acknowledged = [e["event_id"] for evs in regs.values() for e in evs] + \
        [e["event_id"] for e in scans[:10]]

    platform.restart_postgres()  # SIGKILL: no checkpoint, no clean shutdown

    stored = db_fetch(platform, "SELECT count(*) AS n FROM journal WHERE event_id = ANY($1)",
                      acknowledged)
    assert stored[0]["n"] == len(acknowledged)
    # The API's pool reconnects by itself; while it cannot, it answers 503, never 500.
    def upload() -> bool:
        r = client.post("/v1/scan-batches", json={"events": scans[10:]},
                        headers=bearer(tokens["scanner"]))
        assert r.status_code in (200, 503), r.text
        return r.status_code == 200
    wait_for(upload, 30.0, "uploads to succeed after the database came back")
    for p in traffic.parcels:
        _wait_timeline(client, tokens["manager"], p.waybill, 8, 60.0)
    _projected_exactly_once(platform, [p.waybill for p in traffic.parcels])
    # Every service rode out the outage by itself: none died and needed restarting.
    assert {n: c.alive() for n, c in platform.children.items()} == {
        n: True for n in platform.children}
