"""The oracle: what the platform must show for the events the harness sent, worked out from those
events and the county file alone (loadtest/countyfile.py reads the TOML itself; nothing here
imports domain/ or projections/), then compared with what the platform's API answers.

It follows the documents, not the code: docs/sla.md (legs, outcomes, the day a leg counts on, the
causes in their order), docs/settlement.md (fees, surcharges, commissions, shared runs by parcel
count with the largest remainder) and docs/sms.md (one arrival SMS per phone, point and digest)."""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from itertools import pairwise
from typing import Any

import httpx

from loadtest.countyfile import CountyFile, Leg

COLLECTED = ("delivered", "out_for_delivery", "returned")
UPWARD_CAUSES = {"up_cold_store": "late_to_cold_store", "cold_chain": "cold_chain_broken",
                 "air_cutoff": "missed_air_cutoff"}
SUBMITTED = ("submitted", "delivered")


@dataclass(frozen=True)
class Fact:
    """One accepted event as the oracle reads it: when, and the first upload that carried it
    (`acked`: wall seconds after the run's start when the platform acknowledged it)."""

    event_id: str
    type: str
    at: datetime
    brand: str
    payload: Mapping[str, Any]
    acked: float


def facts(events: Iterable[tuple[dict[str, Any], float]]) -> list[Fact]:
    """The accepted events once each (an id uploaded twice is one event), earliest upload first."""
    seen: dict[str, Fact] = {}
    for e, acked in events:
        f = Fact(e["event_id"], e["type"], datetime.fromisoformat(e["occurred_at"]), e["brand"],
                 e["payload"], acked)
        if f.event_id not in seen or acked < seen[f.event_id].acked:
            seen[f.event_id] = f
    return list(seen.values())


def _order(fs: Iterable[Fact]) -> list[Fact]:
    return sorted(fs, key=lambda f: (f.at, f.event_id))


@dataclass
class Expected:
    rates: dict[tuple[str, str], list[int]] = field(default_factory=dict)   # (day, leg) -> [on, late]
    causes: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # (day, leg, cause)
    owed: dict[tuple[str, str], int] = field(default_factory=dict)          # (period, brand) -> fen
    sms: dict[str, tuple[int, int]] = field(default_factory=dict)           # phone -> (min, max)
    waybills_of: dict[str, list[str]] = field(default_factory=dict)         # phone -> waybills
    days: tuple[date, date] | None = None
    handed_in: dict[str, Fact] = field(default_factory=dict)                # waybill -> first hand-in


# -- SLA (docs/sla.md) ---------------------------------------------------------------------------

def _due(leg: Leg, start: datetime, cf: CountyFile) -> datetime:
    if leg.budget_minutes is not None:
        return start + timedelta(minutes=leg.budget_minutes)
    assert leg.cutoff is not None
    local = start.astimezone(cf.tz)
    day = local.date() if local.time() < leg.cutoff else local.date() + timedelta(days=1)
    return datetime.combine(day + timedelta(days=1), time(0), cf.tz)  # by that day's midnight


def _first_run(cf: CountyFile, village: str | None, after: datetime) -> datetime | None:
    if village is None or village not in cf.tier:
        return None
    routes = [r for r in cf.routes if village in r.stops]
    if not routes:
        return None
    local = after.astimezone(cf.tz)
    times = sorted(datetime.combine(local.date() + timedelta(days=d), r.departs, cf.tz)
                   for d in (0, 1) for r in routes[0].runs)
    return next((t for t in times if t >= local), None)


def sla_legs(cf: CountyFile, scans: list[Fact], regs: list[Fact],
             moves: Mapping[str, list[Fact]], now: datetime,
             hands: list[Fact] | None = None) -> list[tuple[str, str, str | None]]:
    """(day, leg, outcome-or-None, cause) of every leg this parcel counts in at `now`: ("on_time"
    or "late"); open legs within their time are left out, as the rates leave them out."""
    scans, regs, hands = _order(scans), _order(regs), _order(hands or [])
    if not scans and not hands:
        return []
    # A hand-in makes the parcel upward and starts its clocks at the village it names; without
    # one, a first scan `received` at a village point does.
    hand = hands[0] if hands else None
    first = Fact(hand.event_id, "parcel.handed_in", hand.at, hand.brand,
                 {"node_id": hand.payload["origin_village"], "action": "handed_in"},
                 hand.acked) if hand else scans[0]
    upward = cf.tier.get(first.payload["node_id"]) == "village" and \
        first.payload["action"] in ("received", "handed_in")
    village = first.payload["node_id"] if upward else \
        (regs[-1].payload["destination_village"] if regs else None)
    own = dict(zip(("county", "township", "village"), cf.chain(village))) \
        if village in cf.parent and not upward else {}

    def ours(s: Fact, tier: str) -> bool:
        node = s.payload["node_id"]
        return cf.tier.get(node) == tier and node == own.get(tier, node)

    out = []
    for leg in cf.legs:
        if (leg.direction == "up") != upward:
            continue
        if hand is not None:
            # The 14:00 leg of a hand-in: from the hand-in to `received` at the centre.
            start = first if leg.from_tier == "village" else None
        else:
            start = next((s for s in scans if ours(s, leg.from_tier)), None)
        if start is None:
            continue
        end = next((s for s in scans if s.at >= start.at and ours(s, leg.to_tier)
                    and s.payload["action"] != "problem"
                    and (hand is None or s.payload["action"] == "received")), None)
        due = _due(leg, start.at, cf)
        if end is not None:
            outcome = "on_time" if end.at <= due else "late"
            day = end.at.astimezone(cf.tz).date()
        elif now > due:
            outcome, day = "late", due.astimezone(cf.tz).date()
        else:
            continue
        cause = _cause(cf, leg, start, end, scans, regs, moves) if outcome == "late" else None
        out.append((str(day), leg.id, outcome, cause))
    if hand is not None:
        out += _perishable_legs(cf, hand, scans, now)
    return out  # type: ignore[return-value]


def _judged(cf: CountyFile, leg: str, due: datetime, end: datetime | None, now: datetime,
            late: bool | None = None) -> tuple[str, str, str, str | None] | None:
    """One upward clock at `now`: (day, leg, outcome, cause), or None while it is open in time."""
    if end is not None:
        late = end > due if late is None else late
        return (str(end.astimezone(cf.tz).date()), leg, "late" if late else "on_time",
                UPWARD_CAUSES[leg] if late else None)
    if now > due:
        return str(due.astimezone(cf.tz).date()), leg, "late", UPWARD_CAUSES[leg]
    return None


def _perishable_legs(cf: CountyFile, hand: Fact, scans: list[Fact], now: datetime
                     ) -> list[tuple[str, str, str, str | None]]:
    """docs/sla.md, "Upward produce": to the cold store, outside the cold chain, the air cut-off."""
    cls = cf.perishables.get(hand.payload.get("perishable") or "")
    if cls is None:
        return []
    act = [s for s in scans if s.at >= hand.at]
    out = []
    cold = next((s for s in act if s.payload["action"] == "cold_in"
                 and s.payload["node_id"] == cf.centre), None)
    out.append(_judged(cf, "up_cold_store", hand.at + timedelta(hours=cls.cold_store_within_hours),
                       cold.at if cold else None, now))
    first = next((s for s in act if s.payload["action"] == "cold_in"), None)
    if first is None:
        return [x for x in out if x]
    # Outside the cold: each cold_out opens a spell, the next cold_in or air_loaded closes it;
    # air_loaded ends the chain.
    budget = timedelta(minutes=cls.max_outside_cold_minutes)
    used, since, closed = timedelta(), None, first.at
    broke: tuple[datetime, datetime] | None = None   # (when the budget ran out, closing scan)
    for s in act:
        if s is first or s.at < first.at:
            continue
        a = s.payload["action"]
        if a == "cold_out" and since is None:
            since = s.at
        elif a in ("cold_in", "air_loaded") and since is not None:
            if broke is None and used + (s.at - since) > budget:
                broke = (since + budget - used, s.at)
            used += s.at - since
            since, closed = None, s.at
        if a == "air_loaded":
            break
    if broke is not None:
        out.append(_judged(cf, "cold_chain", broke[0], broke[1], now, late=True))
    elif since is not None:
        out.append(_judged(cf, "cold_chain", since + budget - used, None, now))
    else:
        out.append(_judged(cf, "cold_chain", closed + budget - used, closed, now, late=False))
    if cls.air and cf.air_cutoff is not None:
        local = first.at.astimezone(cf.tz)
        day = local.date() if local.time() <= cf.air_cutoff else local.date() + timedelta(days=1)
        due = datetime.combine(day, cf.air_cutoff, cf.tz)
        flew = next((s for s in act if s.at >= first.at and s.payload["action"] == "air_loaded"
                     and s.payload["node_id"] == cf.centre), None)
        out.append(_judged(cf, "air_cutoff", due, flew.at if flew else None, now))
    return [x for x in out if x]


def _cause(cf: CountyFile, leg: Leg, start: Fact, end: Fact | None, scans: list[Fact],
           regs: list[Fact], moves: Mapping[str, list[Fact]]) -> str:
    """The first cause of docs/sla.md's table that the parcel's scans (during the leg) and its
    run's events show."""
    during = [s for s in scans if start.at <= s.at and (end is None or s.at <= end.at)]
    if any(s.payload["action"] == "problem" for s in during):
        return "problem"
    dest = regs[-1].payload["destination_village"] if regs else None
    if dest in cf.parent and any(s.payload["node_id"] not in cf.chain(dest) for s in during):
        return "misrouted"
    if end is not None:
        tiers = {cf.tier.get(s.payload["node_id"]) for s in during}
        actions = {s.payload["action"] for s in during}
        skipped = leg.from_tier == "county" and leg.to_tier == "village" and "township" not in tiers
        if skipped or any(a not in actions for a in leg.expect_actions):
            return "missing_scan"
    tolerance = timedelta(minutes=cf.run_tolerance_minutes)
    trip = next((s.payload.get("trip_id") for s in during
                 if s.payload["action"] == "loaded" and s.payload.get("trip_id")), None)
    runs = _order(moves.get(trip, [])) if trip else []
    departed = next((m for m in runs if m.type == "vehicle.departed"), None)

    def sched(m: Fact) -> datetime:
        return datetime.fromisoformat(m.payload["scheduled_at"])

    if departed and departed.at - sched(departed) > tolerance:
        return "run_departed_late"
    if any(m.type == "vehicle.arrived" and m.at - sched(m) > tolerance for m in runs):
        return "run_arrived_late"
    line = cf.bus_line_of(trip)
    if departed is not None and line is not None:
        # A bus line's plan is its timetable from its first stop; elsewhere it has none.
        local = start.at.astimezone(cf.tz)
        plan = sorted(datetime.combine(local.date() + timedelta(days=d), t, cf.tz)
                      for d in (0, 1) for t in line.departures)
        expected = next((t for t in plan if t >= local), None) \
            if start.payload["node_id"] == line.stops[0] else None
        if expected is not None and sched(departed) > expected + tolerance:
            return "missed_run"
    elif departed is not None:
        expected = _first_run(cf, dest, start.at)
        if expected is not None and sched(departed) > expected + tolerance:
            return "missed_run"
    return "unknown" if end is not None else "not_arrived"


# -- settlement (docs/settlement.md) -----------------------------------------------------------

def _period(at: datetime, cf: CountyFile) -> tuple[str, date]:
    day = at.astimezone(cf.tz).date()
    return f"{day:%Y-%m}", day


def allocate(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """Largest remainder: each its exact share rounded down, the fen left over one each to the
    largest remainders, ties by brand code."""
    whole = sum(weights.values())
    shares = {b: total * w // whole for b, w in weights.items()}
    rest = total - sum(shares.values())
    for b in sorted(weights, key=lambda b: (-(total * weights[b] % whole), b))[:rest]:
        shares[b] += 1
    return shares


def settlement(cf: CountyFile, by_parcel: Mapping[str, tuple[list[Fact], list[Fact]]],
               moves: Mapping[str, list[Fact]],
               hands: Mapping[str, list[Fact]] | None = None) -> dict[tuple[str, str], int]:
    owed: dict[tuple[str, str], int] = defaultdict(int)
    up = cf.upward_tariff
    for hs in (hands or {}).values():
        # The upward tariff, once per waybill: the first hand-in prices and dates it.
        h = _order(hs)[0]
        key, _day = _period(h.at, cf)
        owed[key, h.brand] += up.handling_fen + up.per_kg_fen * -(-int(h.payload["weight_g"]) // 1000)
        if h.payload.get("perishable") in cf.perishables:
            owed[key, h.brand] += up.cold_chain_fen
    loads: dict[str, list[Fact]] = defaultdict(list)
    stations = ("township", "village")
    for waybill, (scans, regs) in by_parcel.items():
        scans, regs = _order(scans), _order(regs)
        if not scans and not regs:
            continue
        hs = _order((hands or {}).get(waybill, []))
        brand = regs[-1].brand if regs else hs[0].brand if hs else scans[0].brand
        weight = regs[-1].payload.get("weight_g", 0) if regs else 0
        for s in scans:
            if s.payload["action"] == "loaded" and s.payload.get("trip_id"):
                loads[s.payload["trip_id"]].append(s)
        arrival = next((s for s in scans if s.payload["action"] in ("stored", "delivered")
                        and cf.tier.get(s.payload["node_id"]) in stations), None)
        if arrival is not None:
            key, day = _period(arrival.at, cf)
            t = cf.tariff_on(day)
            tier = cf.tier[arrival.payload["node_id"]]
            owed[key, brand] += t.delivery_fee(brand, tier) + t.surcharge(weight)
        stored = next((s for s in scans if s.payload["action"] == "stored"
                       and cf.tier.get(s.payload["node_id"]) in stations), None)
        if stored is not None:
            key, day = _period(stored.at, cf)
            owed[key, brand] += cf.tariff_on(day).stored_fen
            picked = next((s for s in scans if s.payload["action"] == "delivered"
                           and s.payload["node_id"] == stored.payload["node_id"]), None)
            if picked is not None:
                key, day = _period(picked.at, cf)
                owed[key, brand] += cf.tariff_on(day).picked_up_fen
    routes = {r.id: r for r in cf.routes}
    for trip, ms in moves.items():
        departed = next((m for m in _order(ms) if m.type == "vehicle.departed"), None)
        if departed is None:
            continue
        key, day = _period(departed.at, cf)
        t = cf.tariff_on(day)
        route = routes.get(departed.payload["route_id"])
        line = cf.bus_line_of(trip)
        cost = line.cost_per_trip_fen if line is not None else \
            t.trip_fixed_fen + (t.trip_per_km_fen * (route.distance_m if route else 0) + 500) // 1000
        riders: dict[str, str] = {}
        for s in _order(loads.get(trip, [])):
            riders.setdefault(s.payload["waybill"], s.brand)
        weights = Counter(riders.values())
        if weights:
            for brand, share in allocate(cost, weights).items():
                owed[key, brand] += share
    return dict(owed)


# -- SMS (docs/sms.md) --------------------------------------------------------------------------

def arrival_sms(by_parcel: Mapping[str, tuple[list[Fact], list[Fact]]], cf: CountyFile,
                digest_s: float, margin_s: float = 10.0
                ) -> tuple[dict[str, tuple[int, int]], dict[str, list[str]]]:
    """Per phone, how many arrival SMS (fewest, most): one per point and digest. A digest holds
    what the platform learned of within `digest_s` of its first parcel; arrivals the harness
    uploaded further apart than that plus a margin are surely apart, closer ones may or may not
    share an SMS."""
    arrivals: dict[tuple[str, str], list[tuple[float, bool]]] = defaultdict(list)
    waybills: dict[str, list[str]] = defaultdict(list)
    for waybill, (scans, regs) in by_parcel.items():
        if not regs:
            continue
        phone = _order(regs)[-1].payload["recipient_phone"]
        waybills[phone].append(waybill)
        stored = next((s for s in _order(scans) if s.payload["action"] == "stored"
                       and cf.tier.get(s.payload["node_id"]) == "village"), None)
        if stored is None:
            continue
        # The arrival is known once both the storing and the manifest (the phone) are in.
        known = max(stored.acked, min(r.acked for r in regs))
        collected = [s.acked for s in scans if s.payload["action"] in COLLECTED
                     and s.payload["node_id"] == stored.payload["node_id"]]
        # Learned of after it was collected at the point: nothing to announce. Collected while
        # its digest was still open (a replay fast enough to pick it up within seconds), or
        # uploaded about when the storing was (which committed first?): the platform may or may
        # not announce it.
        if any(c < known - 5 for c in collected):
            continue
        sure = not any(c < known + digest_s + margin_s for c in collected) and known == stored.acked
        arrivals[phone, stored.payload["node_id"]].append((known, sure))
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    for (phone, _node), acks in arrivals.items():
        out[phone][0] += _digests(sorted(a for a, sure in acks if sure), digest_s + 3)
        out[phone][1] += _digests(sorted(a for a, _ in acks), 0.05)
    return {p: (lo, hi) for p, (lo, hi) in out.items()}, dict(waybills)


def _digests(acks: list[float], apart: float) -> int:
    """How many digests arrivals acknowledged at these instants make, if those more than `apart`
    s after the one before start a new one."""
    return (1 + sum(1 for a, b in pairwise(acks) if b - a > apart)) if acks else 0


# -- all of it ----------------------------------------------------------------------------------

def expect(cf: CountyFile, fs: list[Fact], now: datetime, digest_s: float,
           margin_s: float = 10.0) -> Expected:
    """Everything the oracle expects of these accepted events at `now`. An arrival collected
    within `digest_s + margin_s` of being known may or may not get its SMS."""
    by_parcel: dict[str, tuple[list[Fact], list[Fact]]] = defaultdict(lambda: ([], []))
    moves: dict[str, list[Fact]] = defaultdict(list)
    hands: dict[str, list[Fact]] = defaultdict(list)
    for f in fs:
        if f.type == "parcel.handed_in":
            hands[f.payload["waybill"]].append(f)
            by_parcel[f.payload["waybill"]]  # a hand-in alone starts its clocks
        elif f.type == "parcel.scanned":
            by_parcel[f.payload["waybill"]][0].append(f)
        elif f.type == "parcel.registered":
            by_parcel[f.payload["waybill"]][1].append(f)
        elif f.type in ("vehicle.departed", "vehicle.arrived"):
            moves[f.payload["trip_id"]].append(f)
    ex = Expected()
    for waybill, (scans, regs) in by_parcel.items():
        for day, leg, outcome, cause in sla_legs(cf, scans, regs, moves, now,  # type: ignore[misc]
                                                 hands.get(waybill)):
            row = ex.rates.setdefault((day, leg), [0, 0])
            row[0 if outcome == "on_time" else 1] += 1
            if cause:
                ex.causes[day, leg, cause] += 1
    ex.owed = settlement(cf, by_parcel, moves, hands)
    ex.handed_in = {w: _order(hs)[0] for w, hs in hands.items()}
    ex.sms, ex.waybills_of = arrival_sms(by_parcel, cf, digest_s, margin_s)
    days = sorted({date.fromisoformat(d) for d, _ in ex.rates})
    ex.days = (days[0], days[-1]) if days else None
    return ex


async def compare(client: httpx.AsyncClient, ex: Expected, cf: CountyFile, now: datetime,
                  tokens: Mapping[str, str], gateway_sms: Mapping[str, int],
                  parts: tuple[str, ...] = ("sla", "settlement", "sms")) -> list[str]:
    """Every difference between the expectations and what the API answers, as sentences."""
    diffs: list[str] = []
    manager = {"Authorization": f"Bearer {tokens['manager']}"}
    finance = {"Authorization": f"Bearer {tokens['finance']}"}
    at = now.astimezone(cf.tz).isoformat()
    if ex.days and "sla" in parts:
        first, last = ex.days
        r = await client.get("/v1/sla/rates", headers=manager,
                             params={"from": str(first), "to": str(last), "now": at})
        r.raise_for_status()
        got = {(x["day"], x["leg"]): [x["on_time"], x["late"]] for x in r.json()["rates"]}
        for key in sorted(set(got) | set(ex.rates)):
            want = ex.rates.get(key, [0, 0])
            if got.get(key, [0, 0]) != want:
                diffs.append(f"SLA {key[0]} {key[1]}: on time/late expected {want}, API {got.get(key)}")
        legs = [leg.id for leg in cf.legs]
        if cf.perishables:
            legs += ["up_cold_store", "cold_chain"]
            legs += ["air_cutoff"] if any(c.air for c in cf.perishables.values()) else []
        day = first
        while day <= last:
            for leg_id in legs:
                r = await client.get("/v1/sla/breaches", headers=manager,
                                     params={"day": str(day), "leg": leg_id, "now": at})
                r.raise_for_status()
                got_c = {c: int(n) for c, n in r.json()["causes"].items()}
                want_c = {c: n for (d, lg, c), n in ex.causes.items() if d == str(day) and lg == leg_id}
                for cause in sorted(set(got_c) | set(want_c)):
                    if got_c.get(cause, 0) != want_c.get(cause, 0):
                        diffs.append(f"SLA causes {day} {leg_id} {cause}: expected "
                                     f"{want_c.get(cause, 0)}, API {got_c.get(cause, 0)}")
            day += timedelta(days=1)
    if "sla" in parts:
        diffs += await _monthly_upward(client, ex, cf, at, manager)
    if "settlement" in parts:
        diffs += await _settlement(client, ex, finance)
    if "sms" in parts:
        diffs += await _sms(client, ex, gateway_sms, manager)
    return diffs


async def _monthly_upward(client: httpx.AsyncClient, ex: Expected, cf: CountyFile, at: str,
                          manager: dict[str, str]) -> list[str]:
    """The monthly report's `upward` section (docs/reports.md): hand-ins on the county day of a
    parcel's first hand-in, parcels and grams, perishable, per brand; the perishable clocks as the
    rates count them over the month."""
    want: dict[str, dict[str, Any]] = {}
    for h in ex.handed_in.values():
        m = want.setdefault(f"{h.at.astimezone(cf.tz):%Y-%m}", {
            "parcels": 0, "weight_g": 0, "perishable": 0, "brands": Counter(), "grams": Counter()})
        m["parcels"] += 1
        m["weight_g"] += int(h.payload["weight_g"])
        m["perishable"] += h.payload.get("perishable") in cf.perishables
        m["brands"][h.brand] += 1
        m["grams"][h.brand] += int(h.payload["weight_g"])
    for (day, leg), (on, late) in ex.rates.items():
        if leg in UPWARD_CAUSES:
            m = want.setdefault(day[:7], {"parcels": 0, "weight_g": 0, "perishable": 0,
                                          "brands": Counter(), "grams": Counter()})
            m[leg] = [a + b for a, b in zip(m.get(leg, [0, 0]), (on, late), strict=True)]
    diffs = []
    for month, m in sorted(want.items()):
        r = await client.get("/v1/reports/monthly", headers=manager,
                             params={"month": month, "now": at})
        r.raise_for_status()
        up = r.json()["upward"]
        got = {"parcels": up["parcels"], "weight_g": up["weight_g"], "perishable": up["perishable"],
               "by brand": {b["brand"]: (b["parcels"], b["weight_g"]) for b in up["by_brand"]},
               "up_cold_store": [up["cold_store"]["on_time"], up["cold_store"]["late"]],
               "cold_chain": [up["cold_chain"]["on_time"], up["cold_chain"]["late"]],
               "air_cutoff": [up["air_cutoff"]["made"], up["air_cutoff"]["missed"]]}
        exp = {"parcels": m["parcels"], "weight_g": m["weight_g"], "perishable": m["perishable"],
               "by brand": {b: (n, m["grams"][b]) for b, n in m["brands"].items()},
               **{leg: m.get(leg, [0, 0]) for leg in UPWARD_CAUSES}}
        for k, value in exp.items():
            if got[k] != value:
                diffs.append(f"monthly report {month} upward {k}: expected {value}, API {got[k]}")
    return diffs


async def _settlement(client: httpx.AsyncClient, ex: Expected, finance: dict[str, str]) -> list[str]:
    diffs = []
    for (period, brand), fen in sorted(ex.owed.items()):
        r = await client.get(f"/v1/statements/{period}/{brand}", headers=finance)
        r.raise_for_status()
        net = r.json()["net"]["fen"]
        if net != fen:
            diffs.append(f"settlement {period} {brand}: expected {fen} fen, statement net {net} fen")
    return diffs


async def _sms(client: httpx.AsyncClient, ex: Expected, gateway_sms: Mapping[str, int],
               manager: dict[str, str]) -> list[str]:
    """Per household: the arrival SMS the platform decided (any state: one the villager made
    moot by collecting the parcels first ends `cancelled`) within the oracle's range, and the
    providers' records holding exactly those the platform says it submitted."""
    gate = asyncio.Semaphore(8)

    async def history(waybill: str) -> list[tuple[str, str]]:
        async with gate:
            r = await client.get(f"/v1/parcels/{waybill}/sms", headers=manager)
        r.raise_for_status()
        return [(m["sms_id"], m["state"]) for m in r.json()["sms"] if m["kind"] == "arrival"]

    phones = sorted(set(ex.sms) | set(gateway_sms))
    answers = await asyncio.gather(*(asyncio.gather(*(history(w) for w in ex.waybills_of.get(p, [])))
                                     for p in phones))
    diffs = []
    for phone, per_parcel in zip(phones, answers, strict=True):
        decided = {sms_id: state for found in per_parcel for sms_id, state in found}
        lo, hi = ex.sms.get(phone, (0, 0))
        masked = f"{phone[:3]}****{phone[-4:]}"
        if not lo <= len(decided) <= hi:
            diffs.append(f"SMS household {masked}: expected {lo}..{hi} arrival SMS, the API names "
                         f"{len(decided)} ({', '.join(sorted(decided.values()))})")
        submitted = sum(1 for s in decided.values() if s in SUBMITTED)
        if gateway_sms.get(phone, 0) != submitted:
            diffs.append(f"SMS household {masked}: the API has {submitted} arrival SMS submitted, "
                         f"the providers accepted {gateway_sms.get(phone, 0)}")
    return diffs
