"""Arrival alerts: the rules for when a villager gets an SMS and what it says. Pure.

No clock and no I/O: every rule takes the times it needs. The planner's decisions
(domain/sms_planning.py) apply them to the journal and to "now", the sender
(streams/sms_service.py) to each due message; the unit tests apply them to a fake clock."""

from __future__ import annotations

import math
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta, timezone
from typing import Any, Literal

from domain.brands import BRAND_NAMES
from domain.county import CountyConfigError

# The fixed namespace of every id the SMS service derives: the same input gives the same id on
# every run and every rebuild, which is what makes the journal's event_id dedupe them.
_NS = uuid.UUID("6f1c2a4e-4b7d-5c1e-9a0f-3d2b8e7c6a51")

SEGMENT_SINGLE = 70  # characters in a one-part SMS, signature included
SEGMENT_MULTI = 67   # characters per part once it is split


def derived_id(*parts: str) -> str:
    """A stable UUID for a platform decision, from what the decision is about."""
    return str(uuid.uuid5(_NS, "|".join(parts)))


def arrival_id(waybill: str, node_id: str, stored_event_id: str) -> str:
    """One arrival: the first `stored` scan of a parcel at a village point."""
    return derived_id("arrival", waybill, node_id, stored_event_id)


def segments(text: str) -> int:
    """How many parts the provider bills for this text (70 in one, 67 each once split)."""
    n = len(text)
    return 1 if n <= SEGMENT_SINGLE else math.ceil(n / SEGMENT_MULTI)


@dataclass(frozen=True)
class Templates:
    """Service texts as registered with the provider; `${name}` marks a parameter."""

    arrival: str = "您的${parcels}已到${point}，取件码${codes}，${hours}可取。"
    arrival_no_consent: str = ("您的${parcels}已到${point}，取件码${codes}，${hours}可取；"
                               "如需送货上门请联系服务点。")
    reminder: str = "您的${parcels}在${point}已存放${days}天，取件码${codes}，请尽快取件。"


@dataclass(frozen=True)
class SmsPolicy:
    """The county's SMS rules, from its file's [sms] table."""

    sign_name: str = "共配"
    template_codes: dict[str, str] = field(default_factory=lambda: {
        "arrival": "SMS_GP_ARRIVAL", "arrival_no_consent": "SMS_GP_ARRIVAL_NC",
        "reminder": "SMS_GP_REMINDER"})
    # The same templates as registered with Tencent Cloud SMS (numeric ids, positional parameters).
    tencent_template_ids: dict[str, str] = field(default_factory=lambda: {
        "arrival": "2000101", "arrival_no_consent": "2000102", "reminder": "2000103"})
    templates: Templates = Templates()
    digest_seconds: int = 600
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    reminder_hours: tuple[int, ...] = (48, 72)
    daily_budget: int = 10          # SMS per number per county day
    pickup_hours: str = "8:00-19:00"
    max_segments: int = 2
    shelves: int = 20               # pickup code shelf-layer-sequence: shelves × layers
    layers: int = 5


def parse_sms(doc: dict[str, Any], source: str) -> SmsPolicy:
    """The [sms] table of a county file (every key optional; defaults as in SmsPolicy)."""
    raw = doc.get("sms")
    if not isinstance(raw, dict):
        raise CountyConfigError(f"{source}: [sms]: must be a table")
    where = f"{source}: [sms]"
    d = SmsPolicy()

    def integer(key: str, default: int, low: int, high: int) -> int:
        v = raw.get(key, default)
        if type(v) is not int or not low <= v <= high:
            raise CountyConfigError(f"{where}: '{key}' must be an integer from {low} to {high}")
        return v

    def clock(key: str, default: time) -> time:
        v = raw.get(key)
        if v is None:
            return default
        try:
            return time.fromisoformat(str(v))
        except ValueError:
            raise CountyConfigError(f"{where}: '{key}' must be a time like \"21:00\"") from None

    hours = raw.get("reminder_hours", list(d.reminder_hours))
    if (not isinstance(hours, list) or any(type(h) is not int or h <= 0 for h in hours)
            or hours != sorted(set(hours))):
        raise CountyConfigError(f"{where}: 'reminder_hours' must be increasing positive integers")
    if "digest_seconds" in raw:  # for tests and drills; counties write minutes
        digest = integer("digest_seconds", 600, 0, 4 * 3600)
    else:
        digest = integer("digest_minutes", 10, 0, 240) * 60
    sign = raw.get("sign_name", d.sign_name)
    if not isinstance(sign, str) or not 2 <= len(sign) <= 12:
        raise CountyConfigError(f"{where}: 'sign_name' must be 2 to 12 characters")
    codes = {**d.template_codes, **raw.get("template_codes", {})}
    if set(codes) != set(d.template_codes) or not all(isinstance(v, str) and v for v in codes.values()):
        raise CountyConfigError(f"{where}: 'template_codes' has the keys "
                                f"{', '.join(sorted(d.template_codes))}, each a non-empty string")
    tencent = {**d.tencent_template_ids, **raw.get("tencent_template_ids", {})}
    if set(tencent) != set(d.tencent_template_ids) or not all(
            isinstance(v, str) and v.isdigit() for v in tencent.values()):
        raise CountyConfigError(f"{where}: 'tencent_template_ids' has the keys "
                                f"{', '.join(sorted(d.tencent_template_ids))}, each a string of digits")
    return SmsPolicy(
        sign_name=sign, template_codes=codes, tencent_template_ids=tencent, digest_seconds=digest,
        quiet_start=clock("quiet_start", d.quiet_start), quiet_end=clock("quiet_end", d.quiet_end),
        reminder_hours=tuple(hours), daily_budget=integer("daily_budget", 10, 1, 1000),
        pickup_hours=str(raw.get("pickup_hours", d.pickup_hours)),
        max_segments=integer("max_segments", 2, 1, 6), shelves=integer("shelves", 20, 1, 999),
        layers=integer("layers", 5, 1, 99))


# ---------------------------------------------------------------------------------------- time


def release_at(t: datetime, policy: SmsPolicy, utc_offset_minutes: int) -> datetime:
    """`t`, or the end of the quiet period `t` falls in (county time; may span midnight)."""
    tz = timezone(timedelta(minutes=utc_offset_minutes))
    local = t.astimezone(tz)
    start, end = policy.quiet_start, policy.quiet_end
    clock = local.time()
    if start == end:
        return t  # no quiet period
    if start > end:  # e.g. 21:00–08:00
        if clock >= start:
            return datetime.combine(local.date() + timedelta(days=1), end, tz)
        if clock < end:
            return datetime.combine(local.date(), end, tz)
        return t
    if start <= clock < end:  # e.g. 12:00–14:00
        return datetime.combine(local.date(), end, tz)
    return t


def digest_closes_at(opened_at: datetime, policy: SmsPolicy, utc_offset_minutes: int) -> datetime:
    """When a digest opened at `opened_at` stops taking parcels and is sent."""
    return release_at(opened_at + timedelta(seconds=policy.digest_seconds), policy,
                      utc_offset_minutes)


def joins_digest(closes_at: datetime, known_at: datetime) -> bool:
    """An arrival the platform learned of at `known_at` joins a still-unsent digest closing then."""
    return known_at < closes_at


# However late a scan was uploaded, a reminder never follows the SMS before it sooner than this.
REMINDER_MIN_GAP = timedelta(hours=12)


def reminder_due(stored_at: datetime, stage: int, policy: SmsPolicy, utc_offset_minutes: int,
                 last_sms_at: datetime | None = None) -> datetime | None:
    """When reminder `stage` (0-based) of a parcel stored at `stored_at` is due: its hours after
    the storing, at least REMINDER_MIN_GAP after the last SMS about it, never in quiet hours.
    None past the last reminder."""
    if stage >= len(policy.reminder_hours):
        return None
    due = stored_at + timedelta(hours=policy.reminder_hours[stage])
    if last_sms_at is not None:
        due = max(due, last_sms_at + REMINDER_MIN_GAP)
    return release_at(due, policy, utc_offset_minutes)


@dataclass(frozen=True)
class Waiting:
    """A parcel waiting at a point, as reminders see it."""

    arrival_id: str
    phone_ref: str                 # who it is for: a reference, never the number
    node_id: str
    stored_at: datetime
    reminders: int                 # reminders already requested
    last_sms_at: datetime | None   # when the last SMS about it reached the provider
    collected: bool = False        # picked up, delivered home or returned


def due_reminders(waiting: list[Waiting], now: datetime, policy: SmsPolicy,
                  utc_offset_minutes: int) -> dict[tuple[str, str, int], list[Waiting]]:
    """Reminders due at `now`, one SMS per (phone, point, stage). A collected parcel gets none;
    a parcel whose last SMS has not reached the provider waits for it."""
    out: dict[tuple[str, str, int], list[Waiting]] = {}
    for w in waiting:
        if w.collected or w.last_sms_at is None:
            continue
        due = reminder_due(w.stored_at, w.reminders, policy, utc_offset_minutes, w.last_sms_at)
        if due is not None and due <= now:
            out.setdefault((w.phone_ref, w.node_id, w.reminders), []).append(w)
    return out


def county_day(t: datetime, utc_offset_minutes: int) -> str:
    """The county-local date of `t`, as the per-number budget counts days."""
    return t.astimezone(timezone(timedelta(minutes=utc_offset_minutes))).date().isoformat()


# ------------------------------------------------------------------------------------- sending


# How long a message a provider already accepted is left before it is looked at again: its
# `sms.submitted` is in the journal, on its way back into the sender's queue.
ACCEPTED_RECHECK = timedelta(seconds=5)
SendGate = Literal["go", "wait", "cancel"]


def send_gate(*, accepted: bool, waiting: bool, now: datetime, policy: SmsPolicy,
              utc_offset_minutes: int) -> tuple[SendGate, datetime]:
    """Whether a due message may go out at `now`: `wait` (until the time returned) when a
    provider already accepted it, or quiet hours began while it waited; `cancel` when every
    parcel it names was picked up, delivered home or returned meanwhile; else `go`."""
    if accepted:
        return "wait", now + ACCEPTED_RECHECK
    if not waiting:
        return "cancel", now
    release = release_at(now, policy, utc_offset_minutes)
    return ("wait", release) if release > now else ("go", now)


def county_day_start(t: datetime, utc_offset_minutes: int) -> datetime:
    """Midnight county time of the day `t` falls in: the daily budget counts from it."""
    tz = timezone(timedelta(minutes=utc_offset_minutes))
    return datetime.combine(t.astimezone(tz).date(), time.min, tz)


def over_budget(sent_today: int, policy: SmsPolicy) -> bool:
    """A number that providers accepted `sent_today` SMS for today gets no more."""
    return sent_today >= policy.daily_budget


def pick_provider(order: Sequence[str], transient: Mapping[str, int], limit: int) -> str:
    """The first provider (in order of preference) this message has failed on fewer than
    `limit` times; once all have, the last keeps being tried (per-number limits pass)."""
    return next((n for n in order if transient.get(n, 0) < limit), order[-1])


def retry_delay(transient: Mapping[str, int]) -> timedelta:
    """Backoff after a transient failure: 2, 4, 8 … s over all providers, at most 5 min."""
    return timedelta(seconds=min(300.0, 2.0 ** (sum(transient.values()) + 1)))


# ---------------------------------------------------------------------------------- pickup codes


def pickup_code(n: int, policy: SmsPolicy) -> str:
    """The code of running number `n` (1-based): shelf-layer-sequence, ten parcels a layer."""
    slot = (n - 1) // 10
    return f"{slot // policy.layers % policy.shelves + 1}-{slot % policy.layers + 1}-{n:04d}"


def allocate_code(next_n: int, in_use: set[str], policy: SmsPolicy) -> tuple[str, int]:
    """The next free code at a point from running number `next_n`, and the number after it.
    Numbers wrap at 9999; a code held by a parcel still waiting is skipped."""
    n = next_n
    for _ in range(9999):
        code = pickup_code(n, policy)
        n = n % 9999 + 1
        if code not in in_use:
            return code, n
    raise ValueError("every pickup code at this point is in use")


# ----------------------------------------------------------------------------------------- text


@dataclass(frozen=True)
class Parcel:
    """A parcel as an SMS names it."""

    waybill: str
    brand: str
    pickup_code: str


@dataclass(frozen=True)
class Message:
    """A composed SMS: the template and its parameters (what the provider is sent), and the
    text the recipient reads (what is measured)."""

    template: str
    params: dict[str, str]
    text: str

    @property
    def segments(self) -> int:
        return segments(self.text)


def template_text(policy: SmsPolicy, template_code: str) -> str | None:
    """The text of the template registered under `template_code` (None: no such template)."""
    for key, code in policy.template_codes.items():
        if code == template_code:
            return str(getattr(policy.templates, key))
    return None


def template_keys(template: str) -> list[str]:
    """The template's parameter names in the order they appear (providers with positional
    parameters take them in this order)."""
    return re.findall(r"\$\{(\w+)\}", template)


def render(template: str, params: dict[str, str]) -> str:
    out = template
    for key, value in params.items():
        out = out.replace("${" + key + "}", value)
    return out


def _parcels_phrase(parcels: list[Parcel]) -> str:
    brands = list(dict.fromkeys(p.brand for p in parcels))
    if len(parcels) == 1:
        return f"{BRAND_NAMES.get(brands[0], brands[0])}包裹"
    if len(brands) == 1:
        return f"{len(parcels)}件{BRAND_NAMES.get(brands[0], brands[0])}包裹"
    return f"{len(parcels)}件包裹"


def compose(kind: str, parcels: list[Parcel], point_name: str, policy: SmsPolicy, *,
            consented: bool = True, days: int = 0, phone_last4: str = "") -> Message:
    """The SMS for these parcels at this point. All pickup codes are listed when they fit in
    `max_segments`; otherwise as many as fit, then how many in all and that the rest are picked
    up with the phone's last four digits, so a wave of twenty parcels is still one short SMS."""
    if not parcels:
        raise ValueError("an SMS names at least one parcel")
    parcels = sorted(parcels, key=lambda p: (p.pickup_code, p.waybill))
    template_key = kind if kind == "reminder" or consented else "arrival_no_consent"
    template = getattr(policy.templates, template_key)
    limit = SEGMENT_SINGLE if policy.max_segments == 1 else SEGMENT_MULTI * policy.max_segments
    base = {"parcels": _parcels_phrase(parcels), "point": point_name, "hours": policy.pickup_hours,
            "days": str(days)}

    def text_for(codes: str) -> tuple[dict[str, str], str]:
        params = {k: v for k, v in {**base, "codes": codes}.items() if "${" + k + "}" in template}
        return params, f"【{policy.sign_name}】" + render(template, params)

    codes = [p.pickup_code for p in parcels]
    params, text = text_for("、".join(codes))
    if len(text) <= limit:
        return Message(policy.template_codes[template_key], params, text)
    tail = f"等{len(codes)}件，凭尾号{phone_last4}取件" if phone_last4 else f"等{len(codes)}件"
    for k in range(len(codes) - 1, 0, -1):
        params, text = text_for("、".join(codes[:k]) + tail)
        if len(text) <= limit:
            return Message(policy.template_codes[template_key], params, text)
    params, text = text_for(codes[0] + tail)
    return Message(policy.template_codes[template_key], params, text)
