"""The public lookup's rules: what counts as four digits, and how often a caller may guess wrong.

Wrong guesses are limited by GCRA buckets (a leaky bucket kept as one instant per key, the
"theoretical arrival time"): a bucket of `rate` per `window` with room for `burst` lets `burst`
failures through at once and then one per `window / rate`. Only wrong guesses fill buckets; a
refused try is not a guess (its digits are never compared), so hammering a full bucket does not
make the wait longer. See docs/security/public-lookup.md.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

HOUR, DAY = timedelta(hours=1), timedelta(days=1)
# The instant of a bucket nobody has guessed into (kept for new keys, so "never" is not "now").
NEVER = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Rate:
    """`rate` wrong guesses per `window`, `burst` of them at once."""

    rate: int
    window: timedelta
    burst: int

    @property
    def interval(self) -> timedelta:
        return self.window / self.rate

    def wait(self, tat: datetime, now: datetime) -> timedelta:
        """How long until this bucket takes one more wrong guess (zero: now)."""
        return max(timedelta(0), max(tat, now) - (self.burst - 1) * self.interval - now)

    def fill(self, tat: datetime, now: datetime) -> datetime:
        """The bucket's instant after one more wrong guess."""
        return max(tat, now) + self.interval


@dataclass(frozen=True)
class LookupPolicy:
    per_address: Rate           # all wrong guesses from one client address
    per_address_waybill: Rate   # wrong guesses on one waybill from one address
    new_waybills: Rate          # waybills one address starts guessing on
    per_waybill: Rate           # wrong guesses on one waybill from everywhere
    # A waybill stays known to an address (not new again) this long after its bucket drained.
    known_for: timedelta = DAY

    def keys(self, address: str, waybill: str) -> dict[str, str]:
        """The bucket keys one lookup touches, by bucket name."""
        return {"per_address": f"a:{address}", "per_address_waybill": f"aw:{address}|{waybill}",
                "new_waybills": f"an:{address}", "per_waybill": f"w:{waybill}"}


# One address: 10 wrong guesses at once, then one every 2 minutes (30 an hour); on any one
# waybill 5, then one every 12 minutes; guessing on at most 10 waybills a day. One waybill, from
# everywhere: 10, then one every 3 minutes (20 an hour), so one address (5 an hour on it) can
# never fill the waybill's bucket and lock its recipient out.
POLICY = LookupPolicy(
    per_address=Rate(30, HOUR, burst=10),
    per_address_waybill=Rate(5, HOUR, burst=5),
    new_waybills=Rate(10, DAY, burst=10),
    per_waybill=Rate(20, HOUR, burst=10),
)


@dataclass(frozen=True)
class Decision:
    """Whether a lookup may compare digits now; if not, after how many whole seconds."""

    retry_after: int                 # 0: go ahead
    refused_by: tuple[str, ...]      # bucket names that are full
    new_waybill: bool                # a wrong guess would start a new waybill for this address


def decide(policy: LookupPolicy, tats: dict[str, datetime], now: datetime) -> Decision:
    """Check every bucket a lookup touches (`tats` by bucket name; absent: never filled)."""
    def tat(name: str) -> datetime:
        return tats.get(name, NEVER)

    new_waybill = tat("per_address_waybill") <= now - policy.known_for
    waits = {name: getattr(policy, name).wait(tat(name), now)
             for name in ("per_address", "per_address_waybill", "per_waybill")}
    if new_waybill:
        waits["new_waybills"] = policy.new_waybills.wait(tat("new_waybills"), now)
    refused = tuple(sorted(n for n, w in waits.items() if w > timedelta(0)))
    longest = max(waits.values())
    seconds = int(longest.total_seconds()) + (longest.total_seconds() % 1 > 0)
    return Decision(retry_after=seconds if refused else 0, refused_by=refused,
                    new_waybill=new_waybill)


def after_failure(policy: LookupPolicy, tats: dict[str, datetime], now: datetime,
                  new_waybill: bool) -> dict[str, datetime]:
    """Each bucket's instant after a wrong guess (by bucket name)."""
    names = ["per_address", "per_address_waybill", "per_waybill"]
    if new_waybill:
        names.append("new_waybills")
    return {n: getattr(policy, n).fill(tats.get(n, NEVER), now) for n in names}


def normalise_last4(value: str) -> str | None:
    """Four decimal digits in any script (fullwidth `１２３４`, Arabic-Indic `١٢٣٤`, …) as ASCII,
    surrounding spaces ignored; None when the value is anything else."""
    value = value.strip()
    if len(value) != 4 or not all(c.isdecimal() for c in value):
        return None
    return "".join(str(unicodedata.decimal(c)) for c in value)


def address_key(host: str | None) -> str:
    """The address limits are kept by: an IPv4 address, an IPv6 address's /64 (one subscriber's
    network hands out a whole /64, so finer keys would be free to rotate), else the literal."""
    if not host:
        return "unknown"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return host[:64]
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return str(ip)
