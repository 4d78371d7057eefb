"""The county file as the load harness reads it: straight from the TOML, with none of the
platform's own parsing (domain/county_config.py), so the oracle's expectations stay independent
of the code it checks."""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from datetime import date, time, timedelta, timezone
from pathlib import Path
from typing import Any

# Brand shares of the parcels a county receives, used when the county file has no
# `[traffic] market_shares` table (approximate national shares, 2023–2024: 中通 ≈ 23 %,
# 圆通 ≈ 16 %, 韵达 ≈ 15 %, 极兔 ≈ 14 %, 申通 ≈ 13 %, 邮政 ≈ 8 %, 顺丰 ≈ 7 %, 京东 ≈ 4 %).
DEFAULT_SHARES = {"ZTO": 23, "YTO": 16, "YUNDA": 15, "JT": 14, "STO": 13, "EMS": 8, "SF": 7, "JD": 4}


@dataclass(frozen=True)
class Run:
    id: str
    departs: time
    arrives: time


@dataclass(frozen=True)
class Route:
    id: str
    stops: tuple[str, ...]
    distance_m: int
    runs: tuple[Run, ...]


@dataclass(frozen=True)
class Leg:
    id: str
    direction: str
    from_tier: str
    to_tier: str
    budget_minutes: int | None
    cutoff: time | None
    expect_actions: tuple[str, ...]


@dataclass(frozen=True)
class Tariff:
    effective_from: date
    township_fen: int
    village_fen: int
    surcharges: tuple[tuple[int, int], ...]   # (above_g, fen)
    stored_fen: int
    picked_up_fen: int
    trip_fixed_fen: int
    trip_per_km_fen: int
    basis: str
    brand_fees: dict[str, tuple[int, int]] = field(default_factory=dict)  # brand → (township, village)

    def delivery_fee(self, brand: str, tier: str) -> int:
        """The delivery fee for a parcel of `brand` reaching a station of `tier`."""
        township, village = self.brand_fees.get(brand, (self.township_fen, self.village_fen))
        return village if tier == "village" else township

    def surcharge(self, weight_g: int) -> int:
        return max((fen for above, fen in self.surcharges if weight_g > above), default=0)


@dataclass(frozen=True)
class Perishable:
    id: str
    cold_store_within_hours: int
    max_outside_cold_minutes: int
    air: bool


@dataclass(frozen=True)
class BusLine:
    id: str
    stops: tuple[str, ...]
    departures: tuple[time, ...]
    cost_per_trip_fen: int


@dataclass(frozen=True)
class UpwardTariff:
    handling_fen: int
    per_kg_fen: int
    cold_chain_fen: int


@dataclass(frozen=True)
class CountyFile:
    code: str
    offset_minutes: int
    brands: tuple[str, ...]
    shares: dict[str, int]
    tier: dict[str, str]          # node id -> county / township / village
    parent: dict[str, str]
    routes: tuple[Route, ...]
    legs: tuple[Leg, ...]
    run_tolerance_minutes: int
    tariffs: tuple[Tariff, ...]
    raw: dict[str, Any] = field(repr=False, default_factory=dict)
    # Upward produce (the upward contract of issue 13): none of it when the file has none.
    perishables: dict[str, Perishable] = field(default_factory=dict)
    air_cutoff: time | None = None
    upward_tariff: UpwardTariff = UpwardTariff(0, 0, 0)
    bus_lines: tuple[BusLine, ...] = ()

    @property
    def tz(self) -> timezone:
        return timezone(timedelta(minutes=self.offset_minutes))

    @property
    def centre(self) -> str:
        return next(n for n, t in self.tier.items() if t == "county")

    @property
    def villages(self) -> list[str]:
        return [n for n, t in self.tier.items() if t == "village"]

    def route_of(self, village: str) -> Route:
        return next(r for r in self.routes if village in r.stops)

    def chain(self, village: str) -> tuple[str, str, str]:
        return (self.centre, self.parent[village], village)

    def bus_line_of(self, trip_id: str | None) -> BusLine | None:
        """The bus line a trip is a run of: its id starts with the line's id and `-` (the longer
        line when two match)."""
        lines = [b for b in self.bus_lines if trip_id and trip_id.startswith(b.id + "-")]
        return max(lines, key=lambda b: len(b.id), default=None)

    def tariff_on(self, day: date) -> Tariff:
        return max((t for t in self.tariffs if t.effective_from <= day), key=lambda t: t.effective_from)


def _hm(text: str) -> time:
    return time.fromisoformat(text)


def read(path: Path) -> CountyFile:
    raw = tomllib.loads(path.read_text(encoding="utf-8"))
    c = raw["county"]
    brands = tuple(c["brands"])
    shares = dict(raw.get("traffic", {}).get("market_shares", {})) or \
        {b: DEFAULT_SHARES.get(b, 5) for b in brands}
    nodes = raw["nodes"]
    routes = tuple(Route(r["id"], tuple(r["stops"]), int(r.get("distance_m", 0)),
                         tuple(Run(x["id"], _hm(x["departs"]), _hm(x["arrives"])) for x in r["runs"]))
                   for r in raw.get("routes", []))
    sla = raw.get("sla", {})
    legs = tuple(Leg(x["id"], x.get("direction", "down"), x["from_tier"], x["to_tier"],
                     x.get("budget_minutes"), _hm(x["cutoff"]) if "cutoff" in x else None,
                     tuple(x.get("expect_actions", ()))) for x in sla.get("legs", []))
    tariffs = []
    for v in raw["settlement"]["versions"]:
        cost = v["trip_cost"]
        tariffs.append(Tariff(date.fromisoformat(v["effective_from"]),
                              v["delivery_fee"]["township_fen"], v["delivery_fee"]["village_fen"],
                              tuple((w["above_g"], w["fen"]) for w in v.get("weight_surcharges", [])),
                              v["commission"]["stored_fen"], v["commission"]["picked_up_fen"],
                              cost["fixed_fen"], cost["per_km_fen"], cost.get("basis", "parcel_count"),
                              {b: (int(f["township_fen"]), int(f["village_fen"]))
                               for b, f in v.get("brands", {}).items()}))
    perishables = {k: Perishable(k, int(v["cold_store_within_hours"]),
                                 int(v["max_outside_cold_minutes"]), bool(v.get("air", False)))
                   for k, v in raw.get("perishables", {}).items()}
    up = raw.get("upward_tariff", {})
    buses = tuple(BusLine(b["id"], tuple(b["stops"]), tuple(_hm(d) for d in b["departures"]),
                          int(b["cost_per_trip_fen"])) for b in raw.get("bus_lines", []))
    return CountyFile(c["code"], int(c["utc_offset_minutes"]), brands, shares,
                      {n["id"]: n["tier"] for n in nodes},
                      {n["id"]: n["parent"] for n in nodes if "parent" in n},
                      routes, legs, int(sla.get("run_tolerance_minutes", 15)), tuple(tariffs), raw,
                      perishables, _hm(raw["air"]["cutoff"]) if "air" in raw else None,
                      UpwardTariff(int(up.get("handling_fen", 0)), int(up.get("per_kg_fen", 0)),
                                   int(up.get("cold_chain_fen", 0))), buses)
