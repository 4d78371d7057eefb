"""The one registry of Kafka topics: names, which events go where, how they are keyed, and how
each is laid out on a cluster (partitions, replication, retention, min.insync.replicas).

`gongpei topics apply` (streams/topic_admin.py) makes any cluster match what is declared here,
and the relay creates missing topics from the same declarations."""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

DAY_MS = 24 * 3600 * 1000


class Retention(Enum):
    """How long a topic keeps its messages."""

    FOREVER = "forever"      # events: the stream is replayable from the start (tiered if asked)
    COMPACTED = "compacted"  # state: the last message per key is kept
    WINDOW = "window"        # kept `retention_days`, then deleted (dead letters: evidence, not record)


@dataclass(frozen=True)
class TopicSpec:
    name: str
    families: tuple[str, ...]  # event type prefixes routed here
    key: str                   # what the message key is, for readers of this registry
    retention: Retention = Retention.FOREVER
    retention_days: int = 0    # for Retention.WINDOW


@dataclass(frozen=True)
class Profile:
    """Where the topics live: the embedded Tansu broker (one node) or a Kafka cluster."""

    name: str
    partitions: int
    replication: int
    min_insync: int
    # Kafka ≥ 3.6 tiered storage: events older than `local_days` move to the remote tier
    # (the broker must have remote.log.storage.system.enable=true). Off: events stay on disk.
    tiered: bool = False
    local_days: int = 7


def profile_for(name: str, partitions: int, replication: int, tiered: bool = False) -> Profile:
    """The profile with these partitions and replicas: a write is acknowledged once it is on
    `replication - 1` replicas (2 of 3 on a cluster, so one broker may be down), 1 when alone."""
    return Profile(name=name, partitions=partitions, replication=replication,
                   min_insync=max(1, min(replication - 1, 2)), tiered=tiered)


EMBEDDED = profile_for("embedded", partitions=8, replication=1)
CLUSTER = profile_for("cluster", partitions=8, replication=3)


@dataclass(frozen=True)
class DeclaredTopic:
    """A registry topic as it should be on one cluster."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str]


PARCEL_EVENTS = TopicSpec("parcel-events", ("parcel.", "consent."), "waybill")
VEHICLE_EVENTS = TopicSpec("vehicle-events", ("vehicle.",), "trip_id")
SMS_EVENTS = TopicSpec("sms-events", ("sms.",), "sms_id")
LEDGER_EVENTS = TopicSpec("ledger-events", ("period.",), "period")
# Undecodable messages also sit in projection_set_aside (PostgreSQL) with their reason and
# position; the topic keeps the raw bodies for three months of investigation.
DEAD_LETTER = TopicSpec("dead-letter", (), "original key", retention=Retention.WINDOW,
                        retention_days=90)

ALL_TOPICS: tuple[TopicSpec, ...] = (PARCEL_EVENTS, VEHICLE_EVENTS, SMS_EVENTS, LEDGER_EVENTS,
                                     DEAD_LETTER)


def topic_configs(spec: TopicSpec, profile: Profile) -> dict[str, str]:
    """The topic-level configuration `spec` has on `profile`'s cluster (Kafka config names)."""
    configs = {"min.insync.replicas": str(profile.min_insync)}
    if spec.retention is Retention.COMPACTED:
        configs["cleanup.policy"] = "compact"
    elif spec.retention is Retention.WINDOW:
        configs |= {"cleanup.policy": "delete", "retention.ms": str(spec.retention_days * DAY_MS)}
    else:
        configs |= {"cleanup.policy": "delete", "retention.ms": "-1", "retention.bytes": "-1"}
        if profile.tiered:
            configs |= {"remote.storage.enable": "true",
                        "local.retention.ms": str(profile.local_days * DAY_MS)}
    return configs


def declared(profile: Profile, specs: tuple[TopicSpec, ...] = ALL_TOPICS,
             namespace: str = "") -> list[DeclaredTopic]:
    """Every registry topic as `profile`'s cluster should have it, named in `namespace`."""
    return [DeclaredTopic(name=namespaced(s.name, namespace),
                          partitions=profile.partitions,
                          replication=profile.replication,
                          configs=topic_configs(s, profile))
            for s in specs]


class UnroutableEvent(ValueError):
    """An event type no topic carries."""


def topic_for(event_type: str) -> str:
    """The topic an event of this type is published to."""
    for spec in ALL_TOPICS:
        if any(event_type.startswith(prefix) for prefix in spec.families):
            return spec.name
    raise UnroutableEvent(f"no topic carries events of type {event_type!r}")


def namespaced(name: str, namespace: str = "") -> str:
    """A topic's (or consumer group's) name in a deployment's Kafka namespace: several counties
    share one cluster, each under its own prefix ("haicheng.parcel-events"); "" keeps the name."""
    return f"{namespace}.{name}" if namespace else name
