"""Pacing the sender, without a database: the token bucket keeps a provider account within its
rate on a fake clock; the runner keeps a bounded number of messages in progress, never two for
one number, so a daily budget checked inside a concurrent batch is exact."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections import Counter
from dataclasses import dataclass

import pytest

from domain import sms
from domain.sms import SmsPolicy
from streams.sms_pacing import TokenBucket, work_through


class FakeTime:
    """A clock that moves only when someone sleeps on it."""

    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


def test_a_bucket_lets_a_burst_through_then_paces_to_its_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(50, burst=5, clock=t.clock, sleep=t.sleep)

    async def go() -> list[float]:
        stamps = []
        for _ in range(105):
            await bucket.take()
            stamps.append(t.now)
        return stamps

    stamps = asyncio.run(go())
    assert stamps[:5] == [0.0] * 5                      # the burst, at once
    assert stamps[-1] == pytest.approx(100 / 50)        # then 50 a second
    # In any span of s seconds, at most burst + rate × s calls.
    for i, start in enumerate(stamps):
        for j in range(i, len(stamps)):
            assert j - i + 1 <= 5 + 50 * (stamps[j] - start) + 1e-6


def test_concurrent_takers_are_served_in_turn_and_never_faster_than_the_rate() -> None:
    t = FakeTime()
    bucket = TokenBucket(10, clock=t.clock, sleep=t.sleep)
    served: list[tuple[int, float]] = []

    async def taker(i: int) -> None:
        await bucket.take()
        served.append((i, t.now))

    async def go() -> None:
        await asyncio.gather(*(taker(i) for i in range(30)))

    asyncio.run(go())
    assert [i for i, _ in served] == list(range(30))    # first come, first served
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(served)]
    assert min(gaps) == pytest.approx(0.1)              # one every 1/10 s
    assert served[-1][1] == pytest.approx(2.9)


def test_a_bucket_refuses_a_rate_it_cannot_keep() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)
    with pytest.raises(ValueError):
        TokenBucket(5, burst=0.5)


@dataclass(frozen=True)
class Msg:
    sms_id: str
    phone: str


class Queue:
    """The sender's queue as the runner sees it: due messages, those in progress left out; a
    message stays due until its work is done (as a row stays 'requested' until recorded)."""

    def __init__(self, messages: list[Msg], batch: int) -> None:
        self.due = list(messages)
        self.batch = batch
        self.fetches = 0

    async def fetch(self, in_progress: list[Msg]) -> list[Msg]:
        self.fetches += 1
        return [m for m in self.due if m not in in_progress][: self.batch]


def run_wave(messages: list[Msg], *, concurrency: int, batch: int = 20, budget: int = 10,
             seed: int = 1) -> tuple[int, int, Counter[str], list[str], bool]:
    """Work through a wave the way the sender does: check the number's budget from what was
    accepted (committed) so far, 'call' for a random while, record. Returns calls made, the most
    in progress at once, accepted per number, the failures, and whether a number ever had two
    messages in progress."""
    rng = random.Random(seed)
    policy = SmsPolicy(daily_budget=budget)
    queue = Queue(messages, batch)
    accepted: Counter[str] = Counter()
    failed: list[str] = []
    busy: Counter[str] = Counter()
    state = {"now": 0, "most": 0, "overlap": False}

    async def work(m: Msg) -> int:
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        busy[m.phone] += 1
        state["overlap"] = state["overlap"] or busy[m.phone] > 1
        try:
            if sms.over_budget(accepted[m.phone], policy):   # read before the call …
                failed.append(m.sms_id)
                return 0
            await asyncio.sleep(rng.uniform(0, 0.004))         # … the call …
            accepted[m.phone] += 1                             # … its answer committed
            return 1
        finally:
            queue.due.remove(m)
            busy[m.phone] -= 1
            state["now"] -= 1

    calls = asyncio.run(work_through(queue.fetch, work, key=lambda m: m.phone,
                                     concurrency=concurrency, batch=batch, seconds=60))
    assert not queue.due
    return calls, int(state["most"]), accepted, failed, bool(state["overlap"])


def wave(rng: random.Random) -> list[Msg]:
    """Eighty households with one SMS each and one number with sixteen (sixteen points)."""
    out = [Msg(f"m{i}", f"1370000{i:04d}") for i in range(80)]
    out += [Msg(f"busy{i}", "13999999999") for i in range(16)]
    rng.shuffle(out)
    return out


def test_the_runner_keeps_at_most_its_bound_in_progress_and_uses_it() -> None:
    calls, most, _, failed, _ = run_wave(wave(random.Random(3)), concurrency=8)
    assert most == 8
    assert calls == 80 + 10 and len(failed) == 6


def test_two_messages_for_one_number_are_never_in_progress_at_once() -> None:
    for seed in range(5):
        *_, overlap = run_wave(wave(random.Random(seed)), concurrency=16, seed=seed)
        assert not overlap


def test_the_daily_budget_is_exact_within_a_concurrent_batch() -> None:
    for seed in range(5):
        _, _, accepted, failed, _ = run_wave(wave(random.Random(seed)), concurrency=32,
                                             batch=200, seed=seed)
        assert accepted["13999999999"] == 10                     # never 11, never 9
        assert sorted(failed) == sorted(f for f in failed if f.startswith("busy"))
        assert len(failed) == 6
        assert all(accepted[f"1370000{i:04d}"] == 1 for i in range(80))


def test_one_at_a_time_is_the_old_sequential_sender() -> None:
    calls, most, *_ = run_wave(wave(random.Random(9)), concurrency=1)
    assert most == 1 and calls == 90


def test_the_runner_starts_nothing_after_its_slice_and_finishes_what_it_started() -> None:
    started: list[str] = []
    finished: list[str] = []

    async def work(m: Msg) -> int:
        started.append(m.sms_id)
        await asyncio.sleep(0.2)  # longer than the slice
        finished.append(m.sms_id)
        return 1

    async def fetch(in_progress: list[Msg]) -> list[Msg]:
        return [Msg(f"x{len(started) + i}", f"1{len(started) + i:010d}") for i in range(4)]

    async def go() -> int:
        return await work_through(fetch, work, key=lambda m: m.phone, concurrency=4, batch=4,
                                  seconds=0.1)

    assert asyncio.run(go()) == 4
    assert started == finished == ["x0", "x1", "x2", "x3"]


def test_an_error_stops_new_starts_and_is_raised_after_the_rest_finish() -> None:
    finished: list[str] = []

    async def work(m: Msg) -> int:
        await asyncio.sleep(0.01 if m.sms_id != "bad" else 0)
        if m.sms_id == "bad":
            raise ConnectionError("database gone")
        finished.append(m.sms_id)
        return 1

    messages = [Msg("bad", "1"), *(Msg(f"ok{i}", f"2{i}") for i in range(3))]
    later = [Msg(f"later{i}", f"3{i}") for i in range(5)]

    async def fetch(in_progress: list[Msg]) -> list[Msg]:
        return messages if not finished else later

    async def go() -> None:
        await work_through(fetch, work, key=lambda m: m.phone, concurrency=4, batch=4,
                           seconds=60)

    with pytest.raises(ConnectionError):
        asyncio.run(go())
    assert sorted(finished) == ["ok0", "ok1", "ok2"]  # the calls already made were recorded


def test_each_provider_gets_its_rate_from_settings_else_the_default() -> None:
    from infra.settings import SMS_DEFAULT_QPS, Settings, SettingsError

    base = Settings(database_url="postgresql://h/db", app_password="x" * 16,
                    kafka_bootstrap_servers="k:9092",
                    sms_providers="aliyun=https://a.example,tencent=https://t.example")
    assert base.sms_qps_by_provider() == {"aliyun": SMS_DEFAULT_QPS, "tencent": SMS_DEFAULT_QPS}
    assert base.with_(sms_qps="aliyun=80").sms_qps_by_provider() == {
        "aliyun": 80.0, "tencent": SMS_DEFAULT_QPS}
    for bad in ("aliyun=0", "aliyun=fast", "=5", "huawei=10", "aliyun=inf"):
        with pytest.raises(SettingsError):
            base.with_(sms_qps=bad).sms_qps_by_provider()


def test_the_local_gateway_refuses_calls_beyond_the_accounts_rate() -> None:
    from entrypoints.sms_gateway import AccountRate

    rate = AccountRate(20, at=0.0)
    assert sum(rate.allow(0.0) for _ in range(50)) == 20     # one second's worth at once
    assert sum(rate.allow(0.5) for _ in range(50)) == 10     # then 20 a second
    paced = [rate.allow(1.0 + i / 20) for i in range(100)]   # a sender keeping to the rate
    assert all(paced)
