"""Scaling out without a broker: a county's Kafka namespace, the workers' names, and the file in
which a worker says which partitions it holds."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from entrypoints.cli import _worker_name, _workers
from entrypoints.platform import Platform
from infra.settings import Settings, SettingsError
from streams.assignment import read_assignment, write_assignment
from streams.topics import ALL_TOPICS, namespaced

ENV = {"DATABASE_URL": "postgresql://owner:owner-secret@db.example:5433/gongpei_haicheng",
       "KAFKA_BOOTSTRAP_SERVERS": "k:9092", "GONGPEI_APP_PASSWORD": "one-secret-of-24-chars!!"}


def test_given_no_namespace_then_topics_and_the_group_keep_their_plain_names() -> None:
    s = Settings.from_env(ENV)
    assert s.kafka_namespace == ""
    assert [namespaced(t.name, s.kafka_namespace) for t in ALL_TOPICS] == [t.name for t in ALL_TOPICS]


def test_given_a_county_namespace_then_every_topic_and_the_group_carry_it() -> None:
    s = Settings.from_env({**ENV, "GONGPEI_KAFKA_NAMESPACE": "haicheng"})
    assert namespaced("parcel-events", s.kafka_namespace) == "haicheng.parcel-events"
    assert namespaced("gongpei-tracking", s.kafka_namespace) == "haicheng.gongpei-tracking"
    # a child process rebuilds the same namespace from the environment it is given
    assert Settings.from_env({**s.to_env(), "GONGPEI_APP_PASSWORD": "one-secret-of-24-chars!!"}
                             ).kafka_namespace == "haicheng"


@pytest.mark.parametrize("bad", ["Haicheng", "hai.cheng", "-x", "a" * 41, "海城", "x/y"])
def test_given_a_namespace_that_would_not_make_plain_topic_names_then_settings_refuse_it(
        bad: str) -> None:
    with pytest.raises(SettingsError, match="GONGPEI_KAFKA_NAMESPACE"):
        Settings.from_env({**ENV, "GONGPEI_KAFKA_NAMESPACE": bad})


def test_given_n_workers_then_the_platform_names_them_worker_then_worker_2_to_n(tmp_path: Path) -> None:
    assert Platform(tmp_path, workers=3).worker_names == ["worker", "worker-2", "worker-3"]
    assert Platform(tmp_path).worker_names == ["worker"]
    assert Platform(tmp_path, services=("relay", "api"), workers=2).worker_names == []


def test_given_a_worker_assignment_then_it_is_read_back_and_replaced_whole(tmp_path: Path) -> None:
    path = tmp_path / "worker-2.ready"
    assert read_assignment(path) is None
    write_assignment(path, [("parcel-events", 0), ("vehicle-events", 2)])
    assert read_assignment(path) == [("parcel-events", 0), ("vehicle-events", 2)]
    write_assignment(path, [])  # a rebalance that left it nothing
    assert read_assignment(path) == []
    path.write_text("")  # an older worker only touched the file
    assert read_assignment(path) == []
    assert [p.name for p in tmp_path.iterdir()] == ["worker-2.ready"]  # no temporary left


@pytest.mark.parametrize("text", ["0", "65", "two", "-1", ""])
def test_given_a_number_of_workers_out_of_range_then_the_cli_refuses_it(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        _workers(text)


def test_given_worker_names_then_only_worker_and_worker_n_are_taken() -> None:
    assert _worker_name("worker") == "worker" and _worker_name("worker-12") == "worker-12"
    for bad in ("../worker", "worker-", "api", "worker-1x"):
        with pytest.raises(argparse.ArgumentTypeError):
            _worker_name(bad)


def test_given_partitions_moved_away_then_a_worker_stops_reporting_their_lag() -> None:
    from prometheus_client import REGISTRY

    from streams.app import _forget_lag

    lags = {"scale-test": {("parcel-events", 0): 40, ("parcel-events", 1): 2}}
    _forget_lag(lags, {("parcel-events", 1), ("parcel-events", 2)})
    assert lags == {"scale-test": {("parcel-events", 1): 2}}
    assert REGISTRY.get_sample_value("gongpei_projection_lag_events",
                                     {"projection": "scale-test"}) == 2
    assert REGISTRY.get_sample_value("gongpei_consumer_lag_messages", {
        "consumer": "scale-test", "topic": "parcel-events", "partition": "0"}) == 0
