"""The fault harness's oracle: what the platform must answer, computed from what the driver sent
and had acknowledged, and the comparison with what it answers.

Independent of the platform's code on purpose: nothing here imports domain/, projections/ or a
reducer. The status table is docs/events.md's, the tariff is read from the county's TOML file
itself, and the rules are the few the checks need (docs/settlement.md, docs/sms.md). Narrow and
exact: lost (acknowledged, absent), doubled (counted twice anywhere), and each read model equal to
what was sent.

- journal: every acknowledged event exactly once;
- tracking: per waybill the status of its latest scan and one timeline entry per acknowledged
  event of it (entries the platform adds itself, such as an assigned pickup code, are not ours);
- ledger: each (parcel, kind, account) line at most once, and each parcel's fee lines, hence each
  brand's totals, what the county's tariff gives for what was sent;
- SMS: at most one per (parcel, arrival), exactly one for a parcel left waiting at its point
  (each parcel has a number of its own, so a household is a parcel and its digest names it alone);
- nothing set aside by any projection."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadtest.countyfile import Tariff
from loadtest.countyfile import read as read_county

# docs/events.md, "Status": the latest scan's action → the parcel's status.
STATUS_OF_ACTION = {"received": "picked_up", "sorted": "in_transit", "loaded": "in_transit",
                    "arrived": "in_transit", "unloaded": "in_transit",
                    "out_for_delivery": "out_for_delivery", "stored": "stored_at_point",
                    "delivered": "delivered", "problem": "problem", "returned": "returned"}
ONLY_MANIFEST = "info_received"
# The fee kinds a parcel's lines carry (docs/settlement.md), on the brand's account.
PARCEL_KINDS = ("delivery_fee", "weight_surcharge", "commission_stored", "commission_picked_up")


def tariff_of(county_file: Path) -> Tariff:
    """The county's delivery tariff as its TOML file says (read by loadtest/countyfile.py, not
    the platform); the harness's traffic is all inside one version."""
    versions = read_county(county_file).tariffs
    if len(versions) != 1:
        raise ValueError("the fault harness's oracle reads a county with one tariff version")
    return versions[0]


@dataclass
class SentParcel:
    """One parcel as the driver sent it: its events in the order they happened."""

    waybill: str
    brand: str
    phone: str
    weight_g: int
    registration: str = ""                                   # its manifest's event id
    scans: list[tuple[str, str]] = field(default_factory=list)   # (event id, action) in order


@dataclass
class Record:
    """The driver's record: what it sent, and which event ids got a 2xx (accepted or duplicate)."""

    parcels: dict[str, SentParcel] = field(default_factory=dict)
    acked: set[str] = field(default_factory=set)

    def acked_scans(self, p: SentParcel) -> list[tuple[str, str]]:
        return [(e, a) for e, a in p.scans if e in self.acked]

    def known(self, p: SentParcel) -> bool:
        """The parcel exists for the platform: one of its events was acknowledged."""
        return p.registration in self.acked or bool(self.acked_scans(p))


@dataclass(frozen=True)
class Expected:
    status: dict[str, str]                       # waybill → status
    timeline: dict[str, set[str]]                # waybill → acknowledged event ids
    ledger: dict[tuple[str, str], int]           # (waybill, kind) → fen on the brand's account
    brand_totals: dict[str, int]                 # brand → fen, the parcel kinds only
    sms_exactly_one: set[str]                    # phones that must have had exactly one SMS
    sms_at_most_one: set[str]                    # phones that may have had one (collected since)


def expect(record: Record, tariff: Tariff) -> Expected:
    """The read-model answers the acknowledged events call for."""
    status: dict[str, str] = {}
    timeline: dict[str, set[str]] = {}
    ledger: dict[tuple[str, str], int] = {}
    totals: dict[str, int] = defaultdict(int)
    exactly: set[str] = set()
    at_most: set[str] = set()
    for p in record.parcels.values():
        if not record.known(p):
            continue
        scans = record.acked_scans(p)
        status[p.waybill] = STATUS_OF_ACTION[scans[-1][1]] if scans else ONLY_MANIFEST
        timeline[p.waybill] = {e for e, _ in scans} | (
            {p.registration} if p.registration in record.acked else set())
        actions = [a for _, a in scans]
        if "stored" in actions and p.registration in record.acked:
            # The first storing at the village point is the arrival: the village fee, the
            # surcharge on the manifest's weight, the station's commission; picked up there
            # later: its second commission.
            lines = {"delivery_fee": tariff.delivery_fee(p.brand, "village"),
                     "weight_surcharge": tariff.surcharge(p.weight_g),
                     "commission_stored": tariff.stored_fen}
            if "delivered" in actions[actions.index("stored"):]:
                lines["commission_picked_up"] = tariff.picked_up_fen
            for kind, fen in lines.items():
                if fen:
                    ledger[(p.waybill, kind)] = fen
                    totals[p.brand] += fen
            collected = {"delivered", "returned"} & set(actions[actions.index("stored"):])
            (at_most if collected else exactly).add(p.phone)
    return Expected(status, timeline, ledger, dict(totals), exactly, at_most)


@dataclass(frozen=True)
class Observed:
    """What the platform holds for the harness's waybills (read by plain SQL and from the local
    SMS gateways' own logs)."""

    journal: Counter[str]                            # event id → rows in the journal
    parcels: dict[str, tuple[str, list[str]]]        # waybill → (status, timeline event ids)
    tracking_inbox: Counter[str]                     # event id → rows in tracking_events
    ledger_lines: list[tuple[str, str, str, int]]    # (unit, kind, account, fen)
    sms_phones: Counter[str]                         # phone → SMS the gateways sent it
    set_aside: list[tuple[str, str]]                 # (projection, reason)


@dataclass
class Verdict:
    lost: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    doubled: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    wrong: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    examples: list[str] = field(default_factory=list)

    def add(self, bucket: dict[str, int], where: str, example: str) -> None:
        bucket[where] += 1
        if len(self.examples) < 12:
            self.examples.append(f"{where}: {example}")

    @property
    def lost_total(self) -> int:
        return sum(self.lost.values())

    @property
    def doubled_total(self) -> int:
        return sum(self.doubled.values())

    @property
    def clean(self) -> bool:
        return not (self.lost_total or self.doubled_total or sum(self.wrong.values()))


def compare(record: Record, exp: Expected, seen: Observed) -> Verdict:
    v = Verdict()
    for event_id in sorted(record.acked):
        n = seen.journal.get(event_id, 0)
        if n == 0:
            v.add(v.lost, "journal", event_id)
        elif n > 1:
            v.add(v.doubled, "journal", event_id)
    for waybill, ids in exp.timeline.items():
        row = seen.parcels.get(waybill)
        if row is None:
            for event_id in sorted(ids):
                v.add(v.lost, "tracking", f"{waybill} {event_id}")
            continue
        status, timeline = row
        counts = Counter(e for e in timeline if e in ids)
        for event_id in sorted(ids - set(counts)):
            v.add(v.lost, "tracking", f"{waybill} {event_id}")
        for event_id, n in counts.items():
            if n > 1:
                v.add(v.doubled, "tracking", f"{waybill} {event_id} ×{n}")
        if status != exp.status[waybill]:
            v.add(v.wrong, "tracking status", f"{waybill} {status} ≠ {exp.status[waybill]}")
        for event_id in ids:
            if seen.tracking_inbox.get(event_id, 0) > 1:
                v.add(v.doubled, "tracking inbox", event_id)
    _compare_ledger(v, record, exp, seen)
    for phone in exp.sms_exactly_one:
        if seen.sms_phones.get(phone, 0) == 0:
            v.add(v.lost, "sms", f"no SMS for a parcel waiting at its point ({phone[-4:]})")
    allowed = exp.sms_exactly_one | exp.sms_at_most_one
    for phone, n in seen.sms_phones.items():
        if n > 1:
            v.add(v.doubled, "sms", f"{n} SMS to one parcel's number (…{phone[-4:]})")
        elif phone not in allowed:
            v.add(v.wrong, "sms", f"an SMS for a parcel not at its point (…{phone[-4:]})")
    for projection, reason in seen.set_aside:
        v.add(v.wrong, f"set aside by {projection}", reason[:120])
    return v


def _compare_ledger(v: Verdict, record: Record, exp: Expected, seen: Observed) -> None:
    brands = {p.waybill: p.brand for p in record.parcels.values()}
    by_line = Counter((unit, kind, account) for unit, kind, account, _ in seen.ledger_lines)
    for (unit, kind, account), n in by_line.items():
        if n > 1:
            v.add(v.doubled, "ledger", f"{unit} {kind} {account} ×{n}")
    got: dict[tuple[str, str], int] = defaultdict(int)
    totals: dict[str, int] = defaultdict(int)
    for unit, kind, account, fen in seen.ledger_lines:
        if not unit.startswith("parcel:") or kind not in PARCEL_KINDS:
            continue
        waybill = unit.removeprefix("parcel:")
        if account == f"brand:{brands.get(waybill)}":
            got[(waybill, kind)] += fen
            totals[brands[waybill]] += fen
    for key in sorted(set(exp.ledger) | set(got)):
        want, have = exp.ledger.get(key, 0), got.get(key, 0)
        if have == want:
            continue
        if have == 0:
            v.add(v.lost, "ledger", f"{key[0]} {key[1]}: no line, want {want} fen")
        elif have == 2 * want:
            v.add(v.doubled, "ledger", f"{key[0]} {key[1]}: {have} fen, want {want}")
        else:
            v.add(v.wrong, "ledger", f"{key[0]} {key[1]}: {have} fen, want {want}")
    for brand in sorted(set(exp.brand_totals) | set(totals)):
        if exp.brand_totals.get(brand, 0) != totals.get(brand, 0):
            v.add(v.wrong, "ledger brand total",
                  f"{brand}: {totals.get(brand, 0)} fen, want {exp.brand_totals.get(brand, 0)}")


def gateway_phones(logs: Iterable[Path], mine: set[str]) -> Counter[str]:
    """How many SMS each of our numbers got, from the local gateways' JSON-lines logs."""
    import json

    out: Counter[str] = Counter()
    for path in logs:
        if not path.exists():
            continue
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.strip():
                continue
            entry: dict[str, Any] = json.loads(line)
            phone = str(entry.get("phone", ""))
            if phone in mine:
                out[phone] += 1
    return out
