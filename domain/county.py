"""County configuration: topology (centre → townships → villages), routes with fixed runs, brands.

One TOML file per county (read by infra.county_file), validated with errors that name the file,
the entry and why; the SLA, SMS and settlement rules are added by domain.county_config."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from functools import cached_property
from typing import Any, Literal

from domain.brands import BRANDS

Tier = Literal["county", "township", "village"]
PARENT_TIER: dict[str, str | None] = {"county": None, "township": "county", "village": "township"}
# The tiers a county file may name, as the Literal the model holds (a lookup narrows the type).
TIERS: dict[str, Tier] = {"county": "county", "township": "township", "village": "village"}
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
_HHMM = re.compile(r"([01][0-9]|2[0-3]):[0-5][0-9]")


class CountyConfigError(ValueError):
    """The county file is unusable; the message says where and why."""


@dataclass(frozen=True)
class Node:
    """A place parcels pass: the county centre, a township station or a village point."""

    id: str
    name: str
    tier: Tier
    parent: str | None


@dataclass(frozen=True)
class Run:
    """A fixed-time departure of a route (定时): leaves the first stop at `departs`, county time."""

    id: str
    departs: str
    arrives: str | None = None


@dataclass(frozen=True)
class Route:
    """A fixed line (定线): ordered stops from the centre out, its length and its daily runs."""

    id: str
    name: str
    stops: tuple[str, ...]
    distance_m: int
    runs: tuple[Run, ...]


@dataclass(frozen=True)
class PerishableClass:
    """A class of perishable produce ([perishables.<id>]): its cold-store clock from the village
    hand-in, the outside-cold minutes it may spend after its first `cold_in`, and whether it
    flies from the county (产地直飞)."""

    id: str
    name: str
    cold_store_within_hours: int
    max_outside_cold_minutes: int
    air: bool


@dataclass(frozen=True)
class AirRule:
    """[air]: an air parcel must be `air_loaded` at the centre by `cutoff` (county time, "HH:MM")
    of the county day of its first `cold_in` (the next day's, if that came after the cut-off)."""

    cutoff: str


@dataclass(frozen=True)
class UpwardTariff:
    """[upward_tariff]: what a brand pays per handed-in parcel, once per waybill, in fen."""

    handling_fen: int       # per parcel
    per_kg_fen: int         # per started kg
    cold_chain_fen: int     # per perishable parcel (any class)

    def charge_fen(self, weight_g: int, perishable: bool) -> int:
        """The whole charge of one hand-in: handling, per started kg, cold chain if perishable."""
        started_kg = -(-weight_g // 1000)
        return (self.handling_fen + self.per_kg_fen * started_kg
                + (self.cold_chain_fen if perishable else 0))


@dataclass(frozen=True)
class BusLine:
    """A passenger bus line that carries parcels (城乡客运 / 客货邮): a trip whose id starts with
    `<id>-` is a run of it; its cost per trip is shared among the brands carried."""

    id: str
    name: str
    stops: tuple[str, ...]
    departures: tuple[str, ...]   # "HH:MM", county time, from the first stop
    cost_per_trip_fen: int


@dataclass(frozen=True)
class Season:
    """[season]: the harvest window, "MM-DD" to "MM-DD" inclusive (may wrap the year end)."""

    harvest: tuple[str, str]

    def in_harvest(self, day: date) -> bool:
        md = day.strftime("%m-%d")
        start, end = self.harvest
        return start <= md <= end if start <= end else (md >= start or md <= end)


@dataclass(frozen=True)
class County:
    """One county's network, as loaded from its TOML file."""

    code: str
    name: str
    utc_offset_minutes: int
    brands: tuple[str, ...]
    nodes: dict[str, Node]
    routes: tuple[Route, ...]
    settlement: Any = None  # domain.settlement.config.SettlementConfig, when the file has one
    sla: Any = None         # domain.sla.SlaConfig, when the file has one
    sms: Any = None         # domain.sms.SmsPolicy, when the file has one
    # A brand's waybill format, where the county knows it: its waybills must match it whole.
    waybill_patterns: dict[str, re.Pattern[str]] = field(default_factory=dict)
    # [privacy]: after this many days a month's phone numbers are destroyed (crypto-shredding).
    phone_retention_days: int = 180
    # Upward produce (农产品上行), each from its own table of the county file (domain.county_config).
    perishables: dict[str, PerishableClass] = field(default_factory=dict)
    air: AirRule | None = None
    upward_tariff: UpwardTariff | None = None
    bus_lines: tuple[BusLine, ...] = ()
    season: Season | None = None

    @cached_property
    def centre(self) -> Node:
        """The county co-delivery centre (the one county-tier node; the loader guarantees it)."""
        return next(n for n in self.nodes.values() if n.tier == "county")

    @property
    def townships(self) -> list[Node]:
        """Township stations, in file order."""
        return [n for n in self.nodes.values() if n.tier == "township"]

    @property
    def villages(self) -> list[Node]:
        """Village points, in file order."""
        return [n for n in self.nodes.values() if n.tier == "village"]

    def township_of(self, village_id: str) -> str:
        """The id of the township station that serves this village point."""
        parent = self.nodes[village_id].parent
        assert parent is not None
        return parent

    def route(self, route_id: str) -> Route | None:
        """The route with this id, if the county runs one."""
        return next((r for r in self.routes if r.id == route_id), None)

    def bus_line_of(self, trip_id: str) -> BusLine | None:
        """The bus line a trip is a run of: its id starts with the line's id and a `-`."""
        return max((b for b in self.bus_lines if trip_id.startswith(b.id + "-")),
                   key=lambda b: len(b.id), default=None)

    def in_harvest(self, day: date) -> bool:
        """Whether the county day falls in the harvest season of its [season] table."""
        return self.season is not None and self.season.in_harvest(day)

    def planned_chain(self, destination_village: str) -> tuple[str, str, str]:
        """The nodes a parcel for this village should pass: centre, its township, the village."""
        return (self.centre.id, self.township_of(destination_village), destination_village)


def _fail(source: str, where: str, why: str) -> CountyConfigError:
    return CountyConfigError(f"{source}: {where}: {why}")


def _table(raw: object, source: str, where: str) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise _fail(source, where, f"must be a table, got {type(raw).__name__}")
    return raw


def _list(doc: dict[str, Any], key: str, source: str) -> list[Any]:
    value = doc.get(key, [])
    if not isinstance(value, list):
        raise _fail(source, key, f"must be an array of tables ([[{key}]]), got {type(value).__name__}")
    return value


def _req(entry: dict[str, Any], key: str, kind: type, source: str, where: str) -> Any:
    if key not in entry:
        raise _fail(source, where, f"'{key}' is required")
    value = entry[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise _fail(source, where, f"'{key}' must be {kind.__name__}, got {type(value).__name__}")
    return value


def parse_topology(doc: dict[str, Any], source: str = "county") -> County:
    """Validate a parsed county document's network (nodes, routes, brands, waybill formats,
    privacy) and build the County; `domain.county_config.parse_county` adds its rules."""
    head = doc.get("county")
    if not isinstance(head, dict):
        raise _fail(source, "[county]", "the table is required")
    code = _req(head, "code", str, source, "[county]")
    offset = _req(head, "utc_offset_minutes", int, source, "[county]")
    if not -720 <= offset <= 840:
        raise _fail(source, "[county]", f"utc_offset_minutes {offset} is not a real offset")
    brands = tuple(_req(head, "brands", list, source, "[county]"))
    for b in brands:
        if b not in BRANDS:
            raise _fail(source, "[county].brands", f"unknown brand {b!r}; known: {', '.join(BRANDS)}")
    if len(set(brands)) != len(brands):
        raise _fail(source, "[county].brands", "a brand is listed twice")
    nodes: dict[str, Node] = {}
    for i, item in enumerate(_list(doc, "nodes", source)):
        where = f"nodes[{i}]"
        raw = _table(item, source, where)
        node_id = _req(raw, "id", str, source, where)
        where = f"nodes[{i}] ({node_id})"
        if not _ID.fullmatch(node_id):
            raise _fail(source, where, "id must be 1–64 of A–Z a–z 0–9 . _ : -")
        if node_id in nodes:
            raise _fail(source, where, "duplicate id")
        tier = _req(raw, "tier", str, source, where)
        if tier not in TIERS:
            raise _fail(source, where, f"tier {tier!r} is not county, township or village")
        parent = raw.get("parent")
        if parent is not None and not isinstance(parent, str):
            raise _fail(source, where, f"'parent' must be str, got {type(parent).__name__}")
        nodes[node_id] = Node(node_id, _req(raw, "name", str, source, where), TIERS[tier],
                              parent)
    centres = [n for n in nodes.values() if n.tier == "county"]
    if len(centres) != 1:
        raise _fail(source, "nodes", f"exactly one county-tier node is needed, found {len(centres)}")
    for i, node in enumerate(nodes.values()):
        where = f"nodes[{i}] ({node.id})"
        want = PARENT_TIER[node.tier]
        if want is None:
            if node.parent is not None:
                raise _fail(source, where, "the county centre has no parent")
            continue
        if node.parent is None:
            raise _fail(source, where, f"a {node.tier} needs a 'parent' {want}")
        if node.parent not in nodes:
            raise _fail(source, where, f"parent {node.parent!r} is not a node")
        if nodes[node.parent].tier != want:
            raise _fail(source, where, f"parent {node.parent!r} is not a {want}")
    routes: list[Route] = []
    run_ids: set[str] = set()
    for i, item in enumerate(_list(doc, "routes", source)):
        where = f"routes[{i}]"
        raw = _table(item, source, where)
        route_id = _req(raw, "id", str, source, where)
        where = f"routes[{i}] ({route_id})"
        if not _ID.fullmatch(route_id):
            raise _fail(source, where, "id must be 1–64 of A–Z a–z 0–9 . _ : -")
        if any(r.id == route_id for r in routes):
            raise _fail(source, where, "duplicate route id")
        stops = tuple(_req(raw, "stops", list, source, where))
        if len(stops) < 2:
            raise _fail(source, where, "a route needs at least two stops")
        for s in stops:
            if s not in nodes:
                raise _fail(source, where, f"stop {s!r} is not a node")
        distance = _req(raw, "distance_m", int, source, where)
        if distance <= 0:
            raise _fail(source, where, "distance_m must be positive")
        runs = []
        for j, item in enumerate(_list(raw, "runs", f"{source}: {where}")):
            rwhere = f"{where}.runs[{j}]"
            run = _table(item, source, rwhere)
            run_id = _req(run, "id", str, source, rwhere)
            if not _ID.fullmatch(run_id) or run_id in run_ids:
                raise _fail(source, rwhere, f"run id {run_id!r} is malformed or used twice")
            run_ids.add(run_id)
            departs = _req(run, "departs", str, source, rwhere)
            arrives = run.get("arrives")
            for label, t in (("departs", departs), ("arrives", arrives)):
                if t is not None and (not isinstance(t, str) or not _HHMM.fullmatch(t)):
                    raise _fail(source, rwhere, f"{label} {t!r} is not HH:MM")
            # Fixed rural runs leave and return the same day; "HH:MM" strings compare in order.
            if arrives is not None and arrives <= departs:
                raise _fail(source, rwhere, f"arrives {arrives} is not after departs {departs}")
            runs.append(Run(run_id, departs, arrives))
        if not runs:
            raise _fail(source, where, "a fixed route needs at least one run")
        routes.append(Route(route_id, _req(raw, "name", str, source, where), stops, distance,
                            tuple(runs)))
    retention = 180
    if "privacy" in doc:
        privacy = _table(doc["privacy"], source, "[privacy]")
        unknown = sorted(set(privacy) - {"phone_retention_days"})
        if unknown:
            raise _fail(source, "[privacy]", f"unknown key {unknown[0]!r}")
        retention = _req(privacy, "phone_retention_days", int, source, "[privacy]")
        if not 1 <= retention <= 3650:
            raise _fail(source, "[privacy]", f"phone_retention_days {retention} is not 1–3650")
    return County(code, _req(head, "name", str, source, "[county]"), offset, brands, nodes,
                  tuple(routes),
                  waybill_patterns=_waybill_patterns(doc.get("waybill_patterns", {}), brands,
                                                     source),
                  phone_retention_days=retention)


def _waybill_patterns(raw: object, brands: tuple[str, ...], source: str) -> dict[str, re.Pattern[str]]:
    table = _table(raw, source, "[waybill_patterns]")
    out: dict[str, re.Pattern[str]] = {}
    for brand, pattern in table.items():
        where = f"[waybill_patterns].{brand}"
        if brand not in brands:
            raise _fail(source, where, f"{brand!r} is not one of this county's brands")
        if not isinstance(pattern, str):
            raise _fail(source, where, f"must be a regular expression string, got {type(pattern).__name__}")
        try:
            # ASCII: a pattern's \d must not take other scripts' digits.
            out[brand] = re.compile(pattern, re.ASCII)
        except re.error as exc:
            raise _fail(source, where, f"not a regular expression: {exc}") from None
    return out
