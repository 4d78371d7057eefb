"""The topic registry declares every topic's layout per profile, and the diff `gongpei topics
apply` shows is exactly what differs (pure: no broker)."""

from __future__ import annotations

from streams.topic_admin import Action, ActualTopic, diff
from streams.topics import (
    ALL_TOPICS,
    CLUSTER,
    DAY_MS,
    DEAD_LETTER,
    EMBEDDED,
    PARCEL_EVENTS,
    Retention,
    TopicSpec,
    declared,
    profile_for,
    topic_configs,
)


def test_given_the_cluster_profile_then_events_are_kept_forever_on_three_replicas() -> None:
    topics = {t.name: t for t in declared(CLUSTER)}
    assert set(topics) == {s.name for s in ALL_TOPICS}
    parcel = topics[PARCEL_EVENTS.name]
    assert (parcel.replication, parcel.configs["min.insync.replicas"]) == (3, "2")
    assert parcel.configs["retention.ms"] == "-1" and parcel.configs["cleanup.policy"] == "delete"
    assert topics[DEAD_LETTER.name].configs["retention.ms"] == str(90 * DAY_MS)


def test_given_the_embedded_profile_then_one_replica_acknowledges_alone() -> None:
    for topic in declared(EMBEDDED):
        assert (topic.replication, topic.configs["min.insync.replicas"]) == (1, "1")


def test_given_tiered_storage_then_only_kept_forever_topics_move_to_the_remote_tier() -> None:
    tiered = profile_for("cluster", 24, 3, tiered=True)
    assert topic_configs(PARCEL_EVENTS, tiered)["remote.storage.enable"] == "true"
    assert topic_configs(PARCEL_EVENTS, tiered)["local.retention.ms"] == str(7 * DAY_MS)
    assert "remote.storage.enable" not in topic_configs(DEAD_LETTER, tiered)
    assert "remote.storage.enable" not in topic_configs(PARCEL_EVENTS, CLUSTER)


def test_given_a_state_topic_then_it_is_compacted() -> None:
    state = TopicSpec("parcel-state", (), "waybill", retention=Retention.COMPACTED)
    assert topic_configs(state, CLUSTER)["cleanup.policy"] == "compact"
    assert "retention.ms" not in topic_configs(state, CLUSTER)


def _as_is(partitions: int = 8, replication: int = 3,
           configs: dict[str, str] | None = None) -> dict[str, ActualTopic]:
    """The cluster as declared, with parcel-events changed as given."""
    out = {t.name: ActualTopic(t.name, t.partitions, t.replication, dict(t.configs))
           for t in declared(CLUSTER)}
    name = PARCEL_EVENTS.name
    out[name] = ActualTopic(name, partitions, replication,
                            {**(out[name].configs or {}), **(configs or {})})
    return out


def test_given_a_cluster_that_matches_then_the_diff_is_empty() -> None:
    assert diff(declared(CLUSTER), _as_is()) == []


def test_given_a_missing_topic_then_it_is_created_with_its_configs() -> None:
    actual = _as_is()
    del actual[DEAD_LETTER.name]
    [change] = diff(declared(CLUSTER), actual)
    assert (change.topic, change.action) == (DEAD_LETTER.name, Action.CREATE)
    assert "8 partitions, replication 3" in change.line() and "retention.ms=" in change.line()


def test_given_a_changed_retention_then_only_that_config_is_set() -> None:
    [change] = diff(declared(CLUSTER), _as_is(configs={"retention.ms": "604800000"}))
    assert change.action is Action.SET_CONFIGS
    assert change.configs == {"retention.ms": "-1"}
    assert change.line() == "~ parcel-events: retention.ms 604800000 -> -1"


def test_given_fewer_partitions_then_they_are_added_and_more_are_never_reduced() -> None:
    [grow] = diff(declared(CLUSTER), _as_is(partitions=4))
    assert (grow.action, grow.detail) == (Action.ADD_PARTITIONS, "partitions 4 -> 8")
    [keep] = diff(declared(CLUSTER), _as_is(partitions=12))
    assert keep.action is Action.KEEP and "never reduced" in keep.detail


def test_given_another_replication_factor_then_it_is_reported_not_changed() -> None:
    [keep] = diff(declared(CLUSTER), _as_is(replication=1))
    assert keep.action is Action.KEEP and "reassignment" in keep.detail


def test_given_a_broker_that_does_not_describe_configs_then_every_declared_one_shows() -> None:
    actual = _as_is()
    p = actual[PARCEL_EVENTS.name]
    actual[p.name] = ActualTopic(p.name, p.partitions, p.replication, None)
    [change] = diff(declared(CLUSTER), actual)
    assert set(change.configs) == set(topic_configs(PARCEL_EVENTS, CLUSTER))
