"""`gongpei topics apply`: make a cluster's topics what the registry declares, showing the diff
first. Creates missing topics, adds partitions, sets configs; never removes a topic, never
reduces partitions, never moves replicas (a reassignment is an operator's decision).

The diff is pure (`diff`); the broker is read and written by `observe` and `apply`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType
from aiokafka.errors import IncompatibleBrokerVersion, KafkaError, TopicAlreadyExistsError

from infra.settings import Settings
from streams.topics import ALL_TOPICS, DeclaredTopic, Profile, TopicSpec, declared, profile_for

# Kafka's config_source for a value set on the topic itself (DescribeConfigs v1+).
DYNAMIC_TOPIC_CONFIG = 1


def settings_profile(settings: Settings, tiered: bool = False) -> Profile:
    """The topic profile these settings run with (embedded: one replica; else the cluster's)."""
    return profile_for(settings.profile, settings.topic_partitions, settings.topic_replication,
                       tiered=tiered)


@dataclass(frozen=True)
class ActualTopic:
    """A topic as the broker reports it. `configs` is None when the broker does not say."""

    name: str
    partitions: int
    replication: int
    configs: dict[str, str] | None
    own_configs: dict[str, str] = field(default_factory=dict)  # set on the topic itself


class Action(Enum):
    CREATE = "create"
    ADD_PARTITIONS = "add partitions"
    SET_CONFIGS = "set configs"
    KEEP = "keep"  # a difference apply does not change: reported only


@dataclass(frozen=True)
class Change:
    topic: str
    action: Action
    detail: str
    want: DeclaredTopic
    configs: dict[str, str] = field(default_factory=dict)  # for SET_CONFIGS: the new values

    def line(self) -> str:
        mark = {Action.CREATE: "+", Action.ADD_PARTITIONS: "~", Action.SET_CONFIGS: "~",
                Action.KEEP: "!"}[self.action]
        return f"{mark} {self.topic}: {self.detail}"


def diff(wanted: list[DeclaredTopic], actual: dict[str, ActualTopic]) -> list[Change]:
    """What it takes to make `actual` what is `wanted`, topic by topic (empty: nothing)."""
    changes: list[Change] = []
    for want in wanted:
        have = actual.get(want.name)
        if have is None:
            configs = ", ".join(f"{k}={v}" for k, v in sorted(want.configs.items()))
            changes.append(Change(want.name, Action.CREATE, f"create with {want.partitions}"
                                  f" partitions, replication {want.replication}, {configs}", want))
            continue
        if have.partitions < want.partitions:
            changes.append(Change(want.name, Action.ADD_PARTITIONS,
                                  f"partitions {have.partitions} -> {want.partitions}", want))
        elif have.partitions > want.partitions:
            changes.append(Change(want.name, Action.KEEP, f"has {have.partitions} partitions,"
                                  f" {want.partitions} declared: kept (never reduced: keys would"
                                  " move to other partitions)", want))
        if have.replication != want.replication:
            changes.append(Change(want.name, Action.KEEP, f"replication {have.replication},"
                                  f" {want.replication} declared: not changed by apply (a"
                                  " partition reassignment, kafka-reassign-partitions.sh)", want))
        current = have.configs or {}
        different = {k: v for k, v in sorted(want.configs.items()) if current.get(k) != v}
        if different:
            what = ", ".join(f"{k} {current.get(k, '(unset)')} -> {v}"
                             for k, v in different.items())
            changes.append(Change(want.name, Action.SET_CONFIGS, what, want, different))
    return changes


class ApplyError(RuntimeError):
    """A change the broker refused or cannot make."""


async def observe(admin: AIOKafkaAdminClient, names: list[str]) -> dict[str, ActualTopic]:
    """The registry's topics as the broker has them (absent ones left out)."""
    existing = set(await admin.list_topics())
    present = [n for n in names if n in existing]
    if not present:
        return {}
    out: dict[str, ActualTopic] = {}
    for t in await admin.describe_topics(present):
        parts = t["partitions"]
        out[t["topic"]] = ActualTopic(t["topic"], len(parts),
                                      len(parts[0]["replicas"]) if parts else 0, None)
    try:
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, n) for n in present])
    except (IncompatibleBrokerVersion, KafkaError):
        return out  # configs unknown: every declared one shows in the diff
    for response in responses:
        for res in response.resources:
            error_code, _msg, _type, name, entries = res[:5]
            if error_code or name not in out:
                continue
            values = {e[0]: e[1] for e in entries if e[1] is not None}
            # v0 has is_default where v1+ has config_source: read the source only where it is one.
            own = {e[0]: e[1] for e in entries if e[1] is not None
                   and getattr(response, "API_VERSION", 0) >= 1 and e[3] == DYNAMIC_TOPIC_CONFIG}
            old = out[name]
            out[name] = ActualTopic(name, old.partitions, old.replication, values, own)
    return out


async def plan(admin: AIOKafkaAdminClient, profile: Profile,
               specs: tuple[TopicSpec, ...] = ALL_TOPICS,
               namespace: str = "") -> tuple[list[Change], dict[str, ActualTopic]]:
    wanted = declared(profile, specs, namespace)
    actual = await observe(admin, [w.name for w in wanted])
    return diff(wanted, actual), actual


async def apply(admin: AIOKafkaAdminClient, changes: list[Change],
                actual: dict[str, ActualTopic]) -> list[Change]:
    """Make the changes (KEEP ones are only reported); returns those made. Raises ApplyError
    naming each change the broker refused or does not support, after making the others."""
    made: list[Change] = []
    failed: list[str] = []
    for change in changes:
        want = change.want
        try:
            if change.action is Action.CREATE:
                await _create(admin, want)
            elif change.action is Action.ADD_PARTITIONS:
                await admin.create_partitions({want.name: NewPartitions(want.partitions)})
            elif change.action is Action.SET_CONFIGS:
                # AlterConfigs replaces the topic's whole set: keep what an operator set beside ours.
                have = actual.get(want.name)
                merged = {**(have.own_configs if have else {}), **want.configs}
                _raise_for(await admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, want.name, configs=merged)]))
            else:
                continue
        except IncompatibleBrokerVersion:
            call = {Action.ADD_PARTITIONS: "CreatePartitions", Action.SET_CONFIGS: "AlterConfigs"}
            failed.append(f"{change.topic}: {change.action.value}: the broker does not support"
                          f" {call.get(change.action, 'CreateTopics')} (Tansu, the embedded"
                          " broker, has neither AlterConfigs nor CreatePartitions)")
            continue
        except (KafkaError, ApplyError) as exc:
            failed.append(f"{change.topic}: {change.action.value}: {exc}")
            continue
        made.append(change)
    if failed:
        raise ApplyError("\n".join(failed))
    return made


async def _create(admin: AIOKafkaAdminClient, want: DeclaredTopic) -> None:
    try:
        response = await admin.create_topics([NewTopic(
            want.name, num_partitions=want.partitions, replication_factor=want.replication,
            topic_configs=dict(want.configs))])
    except TopicAlreadyExistsError:
        return  # another relay or operator got there first: the next diff says if it differs
    for error in getattr(response, "topic_errors", []):
        code = error[1]
        if code and code != TopicAlreadyExistsError.errno:
            raise ApplyError(f"create refused (Kafka error {code}: {error[2] if len(error) > 2 else ''})")


def _raise_for(responses: list[Any]) -> None:
    for response in responses:
        for res in response.resources:
            if res[0]:
                raise ApplyError(f"refused (Kafka error {res[0]}: {res[1]})")


async def ensure_topics(settings: Settings) -> None:
    """Create every registry topic that is missing, as declared (the relay, at each start).
    Existing topics are left as they are: changing them is `gongpei topics apply`'s job."""
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        for want in declared(settings_profile(settings), namespace=settings.kafka_namespace):
            if want.name not in existing:
                await _create(admin, want)
    finally:
        await admin.close()


async def topics_apply(settings: Settings, dry_run: bool, tiered: bool,
                       out: Callable[[str], object]) -> int:
    """`gongpei topics apply`: print the diff, then apply it unless `dry_run`. Returns the exit
    code: 0 when the cluster matches (or would, dry), 1 when the broker refused a change."""
    profile = settings_profile(settings, tiered=tiered)
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap_servers,
                                request_timeout_ms=15000)
    await admin.start()
    try:
        changes, actual = await plan(admin, profile, namespace=settings.kafka_namespace)
        out(f"profile {profile.name}: {profile.partitions} partitions, replication"
            f" {profile.replication}, min.insync.replicas {profile.min_insync}"
            f"{', tiered' if profile.tiered else ''}; {len(ALL_TOPICS)} topics declared")
        for change in changes:
            out(change.line())
        todo = [c for c in changes if c.action is not Action.KEEP]
        if not todo:
            out("nothing to change")
            return 0
        if dry_run:
            out(f"{len(todo)} changes (dry run: nothing applied)")
            return 0
        try:
            made = await apply(admin, changes, actual)
        except ApplyError as exc:
            out(f"not applied:\n{exc}")
            return 1
        out(f"applied {len(made)} changes")
        return 0
    finally:
        await admin.close()
