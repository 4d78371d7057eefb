"""`gongpei topics apply` against the embedded Tansu broker: what the broker supports is applied
and checked; what it does not (AlterConfigs, CreatePartitions) is shown in the diff and refused
by name. The relay creates the platform's topics from the same registry, so they match it."""

from __future__ import annotations

import asyncio
import os
import random
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import pytest
from aiokafka.admin import AIOKafkaAdminClient

from entrypoints.platform import Platform
from streams.topic_admin import Action, ApplyError, apply, plan, settings_profile
from streams.topics import Retention, TopicSpec, profile_for
from tests.conftest import wait_for


@pytest.fixture
async def admin(platform: Platform) -> AsyncIterator[AIOKafkaAdminClient]:
    assert platform.settings is not None
    client = AIOKafkaAdminClient(bootstrap_servers=platform.settings.kafka_bootstrap_servers)
    await client.start()
    try:
        yield client
    finally:
        await client.close()


def _specs(days: int) -> tuple[TopicSpec, ...]:
    """Two topics of this test alone (the platform's own are the relay's)."""
    tag = random.Random(time.time_ns()).randrange(16**8)
    return (TopicSpec(f"test-apply-{tag:08x}-events", (), "waybill"),
            TopicSpec(f"test-apply-{tag:08x}-window", (), "id", retention=Retention.WINDOW,
                      retention_days=days))


async def test_given_the_running_platform_then_its_topics_match_the_registry(
        platform: Platform, admin: AIOKafkaAdminClient) -> None:
    assert platform.settings is not None
    # Another test may have just crashed the broker: the relay re-creates the topics.
    deadline = time.monotonic() + 60
    while True:
        changes, actual = await plan(admin, settings_profile(platform.settings))
        if (actual and not changes) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    assert actual, "the relay created no registry topic"
    assert changes == [], [c.line() for c in changes]


async def test_given_new_topics_when_applied_twice_then_the_second_is_a_no_op(
        admin: AIOKafkaAdminClient) -> None:
    profile = profile_for("embedded", partitions=3, replication=1)
    specs = _specs(days=7)
    changes, actual = await plan(admin, profile, specs)
    assert [c.action for c in changes] == [Action.CREATE, Action.CREATE]
    assert await apply(admin, changes, actual) == changes

    again, actual = await plan(admin, profile, specs)
    assert again == []
    window = actual[specs[1].name]
    assert (window.partitions, window.replication) == (3, 1)
    assert window.configs is not None and window.configs["retention.ms"] == str(7 * 86_400_000)


async def test_given_a_changed_retention_then_the_diff_shows_it_and_tansu_refuses_by_name(
        admin: AIOKafkaAdminClient) -> None:
    profile = profile_for("embedded", partitions=2, replication=1)
    before = _specs(days=7)
    changes, actual = await plan(admin, profile, before)
    await apply(admin, changes, actual)

    after = (before[0], TopicSpec(before[1].name, (), "id", retention=Retention.WINDOW,
                                  retention_days=30))
    changes, actual = await plan(admin, profile, after)
    assert [c.line() for c in changes] == [
        f"~ {before[1].name}: retention.ms 604800000 -> 2592000000"]
    with pytest.raises(ApplyError, match="does not support AlterConfigs"):
        await apply(admin, changes, actual)

    grown = profile_for("embedded", partitions=4, replication=1)
    changes, actual = await plan(admin, grown, before)
    assert {(c.topic, c.action) for c in changes} == {
        (s.name, Action.ADD_PARTITIONS) for s in before}
    with pytest.raises(ApplyError, match="does not support CreatePartitions"):
        await apply(admin, changes, actual)

    fewer = profile_for("embedded", partitions=1, replication=1)
    changes, _ = await plan(admin, fewer, before)
    assert {c.action for c in changes} == {Action.KEEP}


def test_given_the_cli_then_it_shows_the_diff_and_finds_nothing_to_change(
        platform: Platform) -> None:
    assert platform.settings is not None
    env = {**os.environ, **platform.settings.to_env()}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "entrypoints.cli", "topics", "apply", *args],
                              check=False, env=env, capture_output=True, text=True, timeout=60)

    # The topics exist (the relay made them, again if another test just crashed the broker).
    wait_for(lambda: run("--dry-run").stdout.rstrip().endswith("nothing to change"), 60,
             "the platform's topics as declared")
    for args in (["--dry-run"], []):
        done = run(*args)
        assert done.returncode == 0, done.stderr
        assert "profile embedded: 4 partitions, replication 1" in done.stdout
        assert done.stdout.rstrip().endswith("nothing to change"), done.stdout
