"""Pacing the SMS sender: a token bucket per provider account, so concurrent calls stay within the
account's API rate (a provider answers beyond it with a throttling error, which would only be
retried), and a bounded runner that keeps a number of messages in progress, never two for one
number (so a message's daily-budget check counts every call before it for that number)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Hashable
from typing import Any, TypeVar

T = TypeVar("T")


class TokenBucket:
    """At most `burst + rate × t` takes in any span of t seconds; waiters are served in the order
    they came (asyncio.Lock is fair). `clock` and `sleep` are the real ones unless a test fakes
    them."""

    def __init__(self, rate: float, burst: float = 1.0, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("a token bucket needs a rate above 0 and a burst of at least 1")
        self.rate, self.burst = float(rate), float(burst)
        self._clock, self._sleep = clock, sleep
        self._tokens = self.burst
        self._at = clock()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
        self._at = now

    async def take(self) -> float:
        """Wait for a token and spend it; returns how long it waited, in seconds."""
        async with self._lock:
            self._refill()
            waited = 0.0
            if self._tokens < 1.0:
                waited = (1.0 - self._tokens) / self.rate
                await self._sleep(waited)
                self._refill()
                # The sleep was exactly long enough; rounding must not make it look short.
                self._tokens = max(self._tokens, 1.0)
            self._tokens -= 1.0
            return waited


async def work_through(fetch: Callable[[list[T]], Awaitable[list[T]]],
                       work: Callable[[T], Coroutine[Any, Any, int]], *, key: Callable[[T], Hashable],
                       concurrency: int, batch: int, seconds: float) -> int:
    """Run `work` on what `fetch` gives, up to `concurrency` at once and never two items with
    the same `key` at once (the second waits for the first to finish), starting new ones for
    `seconds`, then waiting for those in progress. `fetch(in_progress)` returns up to `batch`
    items due now, none of those in progress; it is asked again whenever what it gave has been
    started, until it gives fewer than `batch`. The first error stops new starts and is raised
    once the rest have finished. Returns the sum of what `work` returned."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    queue: deque[T] = deque()
    running: dict[asyncio.Task[int], T] = {}
    keys: set[Hashable] = set()
    total, drained = 0, False
    failure: BaseException | None = None
    try:
        while True:
            starting = failure is None and loop.time() < deadline
            if starting and not queue and not drained:
                fresh = await fetch(list(running.values()))
                queue.extend(fresh)
                drained = len(fresh) < batch
            held: list[T] = []
            while starting and queue and len(running) < concurrency:
                item = queue.popleft()
                if key(item) in keys:
                    held.append(item)  # after the one in progress with its key
                    continue
                keys.add(key(item))
                running[asyncio.create_task(work(item))] = item
            queue.extendleft(reversed(held))
            if not running:
                break
            done, _ = await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                keys.discard(key(running.pop(task)))
                if (exc := task.exception()) is not None:
                    failure = failure or exc
                else:
                    total += task.result()
    finally:
        for task in running:  # only when this itself is cancelled (the service stops)
            task.cancel()
    if failure is not None:
        raise failure
    return total
