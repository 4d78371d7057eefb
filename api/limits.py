"""Rate limits for writers and readers, in this process's memory: token buckets per token and per
client address, checked before any body is read or any database call is made.

Every API process keeps its own buckets: with N replicas behind a load balancer a token may get
up to N times the configured rate. The numbers are sized so that a real backlog never trips them
even on one replica; see docs/security/writers.md."""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from infra.settings import IPNetwork

Clock = Callable[[], float]


class KeyedBuckets:
    """One token bucket per key: `burst` tokens, refilled at `per_minute`. Keys whose bucket is
    full again carry no information and are dropped when the map grows past `max_keys`."""

    def __init__(self, burst: float, per_minute: float, *, clock: Clock = time.monotonic,
                 max_keys: int = 100_000) -> None:
        if burst <= 0 or per_minute <= 0:
            raise ValueError("a bucket needs a positive burst and refill rate")
        self.burst, self.rate = float(burst), per_minute / 60.0
        self._clock, self._max_keys = clock, max_keys
        self._levels: dict[object, tuple[float, float]] = {}  # key -> (level, as of when)

    def level(self, key: object) -> float:
        """Tokens in `key`'s bucket now (may be negative after a debit)."""
        now = self._clock()
        level, stamp = self._levels.get(key, (self.burst, now))
        return min(self.burst, level + (now - stamp) * self.rate)

    def _set(self, key: object, level: float) -> None:
        self._levels.pop(key, None)  # re-insert: dict order then approximates least recently used
        self._levels[key] = (level, self._clock())
        if len(self._levels) > self._max_keys:
            self._evict()

    def wait(self, key: object, cost: float = 1.0) -> float:
        """Seconds until `cost` tokens are there (0.0: they are now); takes nothing."""
        missing = cost - self.level(key)
        return 0.0 if missing <= 0 else missing / self.rate

    def take(self, key: object, cost: float = 1.0) -> float:
        """Take `cost` tokens if they are there (returns 0.0); else take nothing and return the
        seconds to wait."""
        level = self.level(key)
        if level < cost:
            return (cost - level) / self.rate
        self._set(key, level - cost)
        return 0.0

    def debit(self, key: object, cost: float) -> None:
        """Take `cost` tokens even if that leaves the bucket in debt (for costs known only after
        the request was let in, like the number of events in a batch)."""
        self._set(key, self.level(key) - cost)

    def refund(self, key: object, cost: float = 1.0) -> None:
        self._set(key, self.level(key) + cost)

    def __len__(self) -> int:
        return len(self._levels)

    def _evict(self) -> None:
        now = self._clock()
        for key, (level, stamp) in list(self._levels.items()):
            if level + (now - stamp) * self.rate >= self.burst:
                del self._levels[key]
        # Still too many partly empty buckets (a flood of distinct keys): forget the oldest half.
        # Forgetting gives a key a full bucket again, so this errs on the side of letting in.
        excess = len(self._levels) - self._max_keys // 2
        if excess > 0 and len(self._levels) > self._max_keys:
            for key in list(self._levels)[:excess]:
                del self._levels[key]


def retry_after(seconds: float) -> str:
    """The Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))


@dataclass(frozen=True)
class LimitSettings:
    upload_burst: int = 60
    upload_per_minute: float = 60.0
    upload_events_burst: int = 30_000
    upload_events_per_minute: float = 6_000.0
    read_burst: int = 600
    read_per_minute: float = 1_200.0
    auth_failure_burst: int = 20
    auth_failures_per_minute: float = 2.0
    upload_concurrency: int = 1


UPLOAD = "upload"
READ = "read"
# The routes whose requests count against the upload buckets (method, route template).
UPLOAD_ROUTES = frozenset({("POST", "/v1/scan-batches")})


# The 429 in the OpenAPI document of every route behind a token.
RATE_LIMITED_RESPONSE: dict[int | str, dict[str, Any]] = {429: {
    "description": "Over a rate limit (`rate_limited`, `too_many_concurrent_uploads`,"
                   " `too_many_failed_authentications`); retry after `Retry-After` seconds",
    "headers": {"Retry-After": {"description": "Seconds to wait, at least 1",
                                "schema": {"type": "integer", "minimum": 1}}},
}}


@dataclass(frozen=True)
class Refusal:
    code: str
    message: str
    seconds: float


class Limits:
    """The limiter of one API process: per-token request buckets for uploads and reads, a
    per-token event bucket for uploads, and a per-address bucket of failed authentications."""

    def __init__(self, cfg: LimitSettings, *, clock: Clock = time.monotonic) -> None:
        self.cfg = cfg
        self.requests = {
            UPLOAD: KeyedBuckets(cfg.upload_burst, cfg.upload_per_minute, clock=clock),
            READ: KeyedBuckets(cfg.read_burst, cfg.read_per_minute, clock=clock),
        }
        self.events = KeyedBuckets(cfg.upload_events_burst, cfg.upload_events_per_minute,
                                   clock=clock)
        self.auth_failures = KeyedBuckets(cfg.auth_failure_burst, cfg.auth_failures_per_minute,
                                          clock=clock)
        self.uploading: dict[int, int] = {}  # token id -> uploads in progress in this process
        # Token hashes that were valid here recently -> who they were. A known token skips the
        # failed-authentication block of its address (a station's handhelds behind one NAT keep
        # working while something there guesses tokens) and is limited before the database.
        # Only for limiting and for naming a refused caller in the access log: whether a token
        # is still valid is always asked of the database.
        self._known: dict[bytes, Any] = {}
        self._max_known = 100_000

    def known(self, token_hash: bytes) -> Any | None:
        return self._known.get(token_hash)

    def remember(self, token_hash: bytes, principal: Any) -> None:
        if len(self._known) >= self._max_known:
            self._known.clear()  # rare: lose the memory, not the limits (buckets are by id)
        self._known[token_hash] = principal

    def forget(self, token_hash: bytes) -> None:
        self._known.pop(token_hash, None)

    def check_address(self, address: str) -> Refusal | None:
        """Refuse an unknown token from an address that has used up its failed attempts."""
        wait = self.auth_failures.wait(address_key(address))
        if wait:
            return Refusal("too_many_failed_authentications",
                           "too many requests with unknown or expired tokens from this address",
                           wait)
        return None

    def failed(self, address: str) -> None:
        """Count one failed authentication against `address`."""
        self.auth_failures.debit(address_key(address), 1.0)

    def take(self, token_id: int, kind: str) -> Refusal | None:
        """Take one request of `kind` for a token. An upload also needs the token's events
        bucket out of debt and a free upload slot, which it holds until `release`."""
        if kind == UPLOAD:
            wait = self.events.wait(token_id, 0.0)
            if wait:
                return Refusal("rate_limited", "this token uploaded more events than its limit;"
                               " send the rest later", wait)
            if self.uploading.get(token_id, 0) >= self.cfg.upload_concurrency:
                # One batch at a time per token: a backlog still goes through back to back, but
                # a device cannot have many batches validated at once while others wait.
                return Refusal("too_many_concurrent_uploads",
                               f"this token already has {self.cfg.upload_concurrency} upload(s)"
                               " in progress; send one batch after the other", 1.0)
        wait = self.requests[kind].take(token_id)
        if wait:
            return Refusal("rate_limited", f"this token sent more {kind} requests than its limit",
                           wait)
        if kind == UPLOAD:
            self.uploading[token_id] = self.uploading.get(token_id, 0) + 1
        return None

    def precheck(self, token_hash: bytes, address: str, kind: str) -> Refusal | None:
        """What `take` or `check_address` would refuse, without taking anything: lets a caller
        turn a flood away before routing. Letting through here decides nothing."""
        known = self._known.get(token_hash)
        if known is None:
            return self.check_address(address)
        token_id = known.token_id
        if kind == UPLOAD and (self.events.wait(token_id, 0.0)
                               or self.uploading.get(token_id, 0) >= self.cfg.upload_concurrency):
            return self.take(token_id, kind)  # refuses, and takes nothing when it refuses
        wait = self.requests[kind].wait(token_id)
        if wait:
            return Refusal("rate_limited", f"this token sent more {kind} requests than its limit",
                           wait)
        return None

    def release(self, token_id: int, kind: str) -> None:
        """The request `take` let in has ended."""
        if kind == UPLOAD:
            left = self.uploading.get(token_id, 0) - 1
            if left > 0:
                self.uploading[token_id] = left
            else:
                self.uploading.pop(token_id, None)

    def refund(self, token_id: int, kind: str) -> None:
        """Give a request back (the server failed it: a device is not charged for our outage)."""
        self.requests[kind].refund(token_id)

    def charge_events(self, token_id: int, events: int) -> None:
        """Charge an upload's events once they are counted; the debt refuses the next upload."""
        self.events.debit(token_id, float(events))


def address_key(address: str) -> str:
    """IPv4 addresses count alone; IPv6 by /64, since one subscriber gets a whole /64."""
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)


def _trusted(address: str, trusted: frozenset[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in trusted)


def client_address(peer: str | None, forwarded_for: str | None,
                   trusted: frozenset[IPNetwork]) -> str:
    """The calling client: the peer, unless the peer is a trusted proxy; then the right-most
    X-Forwarded-For entry that is not itself a trusted proxy (entries left of it are whatever
    the client wrote and cannot be believed)."""
    address = peer or "unknown"
    if not forwarded_for or not _trusted(address, trusted):
        return address
    for hop in reversed([h.strip() for h in forwarded_for.split(",")]):
        try:
            hop = str(ipaddress.ip_address(hop))
        except ValueError:
            return address  # garbage from the proxy chain: fall back to the peer
        if not _trusted(hop, trusted):
            return hop
    return address
