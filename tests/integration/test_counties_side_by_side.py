"""Two counties side by side on one Kafka cluster and one PostgreSQL server, each a deployment of
its own: its Kafka namespace (topics and consumer group), its own database (journal, read models,
ledger; the advisory locks that keep its journal, ledger and SMS planner in one total order are
per database). Each county's answers are those of the same traffic on a county running alone
(the session platform: its own broker and server), and the provincial roll-up reads both.

The second county (XIUYAN) is the test county under another code and name: what a waybill's
answers are does not depend on either, so the lone platform is the reference for both counties'
traffic (each on days of its own, so that no run is shared)."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from domain.county import County
from entrypoints.platform import Platform
from infra.county_file import load_county
from loadtest.traffic import county_time
from projections.ledger_store import LEDGER_TYPES
from projections.rollup import rollup
from tests.conftest import TEST_SETTINGS, UNLIMITED_WRITERS, db_fetch, wait_for
from tests.integration.test_scale_out import county_days, post_all, tokens_for

WAIT_S = 240.0
SERVICES = ("relay", "worker", "ledger", "api")


@pytest.fixture(scope="module")
def counties(tmp_path_factory: pytest.TempPathFactory,
             county_file: Path) -> Iterator[tuple[Platform, Platform]]:
    text = county_file.read_text(encoding="utf-8")
    assert 'code = "HAICHENG"' in text and 'name = "海城市"' in text
    other = tmp_path_factory.mktemp("xiuyan") / "xiuyan-test.toml"
    other.write_text(text.replace('code = "HAICHENG"', 'code = "XIUYAN"')
                     .replace('name = "海城市"', 'name = "岫岩县"'), encoding="utf-8")
    changes = {**TEST_SETTINGS, **UNLIMITED_WRITERS}
    first = Platform(tmp_path_factory.mktemp("haicheng"), county_file=county_file,
                     topic_partitions=4, services=SERVICES,
                     settings_changes={**changes, "kafka_namespace": "haicheng"})
    second = Platform(tmp_path_factory.mktemp("xiuyan-state"), county_file=other,
                      topic_partitions=4, services=SERVICES, share_with=first,
                      database="gongpei_xiuyan",
                      settings_changes={**changes, "kafka_namespace": "xiuyan"})
    try:
        first.start(timeout=180)
        second.start(timeout=180)
        yield first, second
    finally:
        second.stop()
        first.stop()


def events_of(batches: list[tuple[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    return [e for _, events in batches for e in events]


def caught_up(p: Platform, sent: list[dict[str, Any]]) -> bool:
    """Tracking, SLA and the ledger hold every one of `sent`."""
    ids = [e["event_id"] for e in sent]
    parcel = sum(e["type"].startswith("parcel.") for e in sent)
    row = db_fetch(
        p, "SELECT (SELECT count(*) FROM tracking_events WHERE event_id = ANY($1)) AS t,"
        " (SELECT count(*) FROM sla_events WHERE event_id = ANY($1)) AS s,"
        " (SELECT max(seq) FROM journal WHERE event_id = ANY($1) AND type = ANY($2)) AS last,"
        " (SELECT max(next_offset) FROM consumer_offsets WHERE consumer = 'ledger') AS ledger",
        ids, list(LEDGER_TYPES))[0]
    return (row["t"] == parcel and row["s"] == len(sent) and row["last"] is not None
            and row["ledger"] is not None and row["ledger"] > row["last"])


def answers(p: Platform, sent: list[dict[str, Any]]) -> dict[str, Any]:
    """What the county says about these waybills and their runs: tracking (status, where, the
    timeline without the server's receipt stamps), SLA legs, and the ledger's lines."""
    waybills = sorted({e["payload"]["waybill"] for e in sent if "waybill" in e["payload"]})
    trips = sorted({e["payload"]["trip_id"] for e in sent if "trip_id" in e["payload"]})
    parcels = {}
    for r in db_fetch(p, "SELECT waybill, brand, status, public_code, destination_village,"
                      " current_node, misrouted, view FROM parcels WHERE waybill = ANY($1)", waybills):
        view = json.loads(r["view"]) if isinstance(r["view"], str) else r["view"]
        parcels[r["waybill"]] = (
            r["brand"], r["status"], r["public_code"], r["destination_village"], r["current_node"],
            r["misrouted"], [(t["event_id"], t["type"], t["occurred_at"], t["action"], t["node_id"])
                             for t in view["timeline"]])
    legs = sorted(tuple(r) for r in db_fetch(
        p, "SELECT * FROM sla_legs WHERE waybill = ANY($1)", waybills))
    units = [f"parcel:{w}" for w in waybills] + [f"trip:{t}" for t in trips]
    lines = sorted((r["unit"], r["kind"], r["account"], r["brand"], r["ref"], r["amount_fen"],
                    r["posting_date"], r["period"], tuple(sorted(r["event_ids"])))
                   for r in db_fetch(p, "SELECT * FROM ledger_lines WHERE unit = ANY($1)", units))
    return {"parcels": parcels, "legs": legs, "ledger_lines": lines}


def test_given_two_counties_on_one_cluster_then_each_answers_as_if_it_ran_alone(
        counties: tuple[Platform, Platform], platform: Platform, tokens: dict[str, str],
        county: County) -> None:
    haicheng, xiuyan = counties
    rng = random.Random(time.time_ns())
    days = county_days(county, rng, chunks=3, parcels=40)
    traffic = {"haicheng": days[0], "xiuyan": days[2]}
    sent = {name: events_of(batches) for name, batches in traffic.items()}

    # When both counties take their day at the same time, on the shared cluster and server,
    both = [threading.Thread(target=post_all, args=(p, tokens_for(p, county), traffic[name]))
            for name, p in (("haicheng", haicheng), ("xiuyan", xiuyan))]
    for t in both:
        t.start()
    # and the county alone (the session platform) takes the same two days.
    post_all(platform, tokens, traffic["haicheng"] + traffic["xiuyan"])
    for t in both:
        t.join()
    for name, p in (("haicheng", haicheng), ("xiuyan", xiuyan)):
        wait_for(lambda p=p, name=name: caught_up(p, sent[name]), WAIT_S, f"{name} to catch up")
    wait_for(lambda: caught_up(platform, sent["haicheng"] + sent["xiuyan"]), WAIT_S,
             "the lone county to catch up")

    # Then each county's answers are the lone county's, and neither saw the other's events.
    for name, p in (("haicheng", haicheng), ("xiuyan", xiuyan)):
        mine = answers(p, sent[name])
        assert len(mine["parcels"]) == 40 and mine["legs"] and mine["ledger_lines"], name
        assert mine == answers(platform, sent[name]), name
        theirs = sent["xiuyan" if name == "haicheng" else "haicheng"]
        assert db_fetch(p, "SELECT count(*) AS n FROM journal WHERE event_id = ANY($1)",
                        [e["event_id"] for e in theirs])[0]["n"] == 0, name
        assert answers(p, theirs) == {"parcels": {}, "legs": [], "ledger_lines": []}, name
    # Each county's topics carry its own name.
    assert haicheng.settings is not None and xiuyan.settings is not None
    topics = {r["topic"] for r in db_fetch(haicheng, "SELECT topic FROM consumer_offsets"
                                           " WHERE consumer = 'tracking'")}
    assert topics and all(t.startswith("haicheng.") for t in topics), topics

    # The provincial roll-up: each county's day from its own database, side by side.
    day_a = county_time(county, _first_at(sent["haicheng"])).date()
    day_b = county_time(county, _first_at(sent["xiuyan"])).date()
    # It reads with the grants docs/scaling.md gives a provincial reader, and no more.
    db_fetch(haicheng, "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles"
             " WHERE rolname = 'province_reader') THEN CREATE ROLE province_reader LOGIN; END IF; END $$")
    for p in (haicheng, xiuyan):
        db_fetch(p, "GRANT SELECT (type, occurred_at, partition_key) ON journal TO province_reader")
        db_fetch(p, "GRANT SELECT ON sla_daily TO province_reader")
    other = load_county(xiuyan.county_file)
    reader = {code: p.settings.database_url.replace("postgres@", "province_reader@")  # type: ignore[union-attr]
              for code, p in (("HAICHENG", haicheng), ("XIUYAN", xiuyan))}
    assert all("province_reader@" in dsn for dsn in reader.values())
    rows = asyncio.run(rollup({"HAICHENG": (county, reader["HAICHENG"]),
                               "XIUYAN": (other, reader["XIUYAN"])}, [day_a, day_b]))
    got = {(r.county, r.day): r for r in rows}
    assert got[("HAICHENG", day_a)].parcels == 40 and got[("HAICHENG", day_b)].parcels == 0
    assert got[("XIUYAN", day_b)].parcels == 40 and got[("XIUYAN", day_a)].parcels == 0
    assert got[("HAICHENG", day_a)].events == len(sent["haicheng"])
    assert got[("XIUYAN", day_b)].events == len(sent["xiuyan"])
    for code, p, day in (("HAICHENG", haicheng, day_a), ("XIUYAN", xiuyan, day_b)):
        finished = db_fetch(p, "SELECT count(*) FILTER (WHERE outcome = 'on_time') AS on_time,"
                            " count(*) FILTER (WHERE outcome = 'late') AS late FROM sla_legs"
                            " WHERE day = $1", day)[0]
        assert (got[(code, day)].on_time, got[(code, day)].late) == (
            finished["on_time"], finished["late"]), code
        assert got[(code, day)].on_time + got[(code, day)].late > 0, code


def _first_at(events: list[dict[str, Any]]) -> Any:
    from datetime import datetime

    return min(datetime.fromisoformat(e["occurred_at"]) for e in events)

