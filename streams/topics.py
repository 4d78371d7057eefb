"""The one registry of Kafka topics: names, which events go where, and how they are keyed."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TopicSpec:
    name: str
    families: tuple[str, ...]  # event type prefixes routed here
    key: str                   # what the message key is, for readers of this registry


PARCEL_EVENTS = TopicSpec("parcel-events", ("parcel.", "consent."), "waybill")
VEHICLE_EVENTS = TopicSpec("vehicle-events", ("vehicle.",), "trip_id")
SMS_EVENTS = TopicSpec("sms-events", ("sms.",), "sms_id")
LEDGER_EVENTS = TopicSpec("ledger-events", ("period.",), "period")
DEAD_LETTER = TopicSpec("dead-letter", (), "original key")

ALL_TOPICS: tuple[TopicSpec, ...] = (PARCEL_EVENTS, VEHICLE_EVENTS, SMS_EVENTS, LEDGER_EVENTS,
                                     DEAD_LETTER)


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
