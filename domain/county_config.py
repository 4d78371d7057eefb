"""A county's whole configuration: its network (domain.county) with the rules each part of the
platform reads from the same file — on-time targets, arrival SMS, settlement, upward produce.
Pure: it takes the parsed document; infra.county_file reads it from disk."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

from domain.county import (
    _HHMM,
    _ID,
    AirRule,
    BusLine,
    County,
    PerishableClass,
    Season,
    UpwardTariff,
    _fail,
    _list,
    _req,
    _table,
    parse_topology,
)
from domain.settlement.config import parse_settlement
from domain.sla import parse_sla
from domain.sms import parse_sms

_MMDD = re.compile(r"(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])")


def parse_county(doc: dict[str, Any], source: str = "county") -> County:
    """Validate a parsed county document and build the County with its rules."""
    county = parse_upward(parse_topology(doc, source), doc, source)
    return replace(
        county,
        settlement=(parse_settlement(doc, source, {r.id for r in county.routes})
                    if "settlement" in doc else None),
        sla=parse_sla(doc, source) if "sla" in doc else None,
        sms=parse_sms(doc, source) if "sms" in doc else None)


def parse_upward(county: County, doc: dict[str, Any], source: str) -> County:
    """The county with its upward-produce tables: [perishables.*], [air], [upward_tariff],
    [[bus_lines]], [season] (each optional; an air class needs [air])."""
    perishables = parse_perishables(doc, source)
    if "air" not in doc and any(c.air for c in perishables.values()):
        raise _fail(source, "[air]", "a perishable class flies (air = true): the cut-off is needed")
    return replace(
        county,
        perishables=perishables,
        air=parse_air(doc, source) if "air" in doc else None,
        upward_tariff=parse_upward_tariff(doc, source) if "upward_tariff" in doc else None,
        bus_lines=parse_bus_lines(doc, source, county),
        season=parse_season(doc, source) if "season" in doc else None)


def _only(table: dict[str, Any], allowed: set[str], source: str, where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise _fail(source, where, f"unknown key {unknown[0]!r}; allowed: {', '.join(sorted(allowed))}")


def _count(table: dict[str, Any], key: str, source: str, where: str, low: int, high: int) -> int:
    value: int = _req(table, key, int, source, where)
    if not low <= value <= high:
        raise _fail(source, where, f"'{key}' {value} is not {low}–{high}")
    return value


def _hhmm(value: object, source: str, where: str, key: str) -> str:
    if not isinstance(value, str) or not _HHMM.fullmatch(value):
        raise _fail(source, where, f"'{key}' {value!r} is not HH:MM")
    return value


def parse_perishables(doc: dict[str, Any], source: str) -> dict[str, PerishableClass]:
    """[perishables.<class id>]: each class's cold-store clock, outside-cold budget, air."""
    out: dict[str, PerishableClass] = {}
    for class_id, raw in _table(doc.get("perishables", {}), source, "[perishables]").items():
        where = f"[perishables.{class_id}]"
        if not _ID.fullmatch(class_id):
            raise _fail(source, where, "a class id must be 1–64 of A–Z a–z 0–9 . _ : -")
        table = _table(raw, source, where)
        _only(table, {"name", "cold_store_within_hours", "max_outside_cold_minutes", "air"},
              source, where)
        out[class_id] = PerishableClass(
            class_id, _req(table, "name", str, source, where),
            _count(table, "cold_store_within_hours", source, where, 1, 240),
            _count(table, "max_outside_cold_minutes", source, where, 0, 10_080),
            bool(_req(table, "air", bool, source, where)))
    return out


def parse_air(doc: dict[str, Any], source: str) -> AirRule:
    table = _table(doc["air"], source, "[air]")
    _only(table, {"cutoff"}, source, "[air]")
    return AirRule(_hhmm(_req(table, "cutoff", str, source, "[air]"), source, "[air]", "cutoff"))


def parse_upward_tariff(doc: dict[str, Any], source: str) -> UpwardTariff:
    where = "[upward_tariff]"
    table = _table(doc["upward_tariff"], source, where)
    keys = ("handling_fen", "per_kg_fen", "cold_chain_fen")
    _only(table, set(keys), source, where)
    # Money is integer fen: a float (0.3) is refused by the int check, never rounded.
    handling, per_kg, cold = (_count(table, k, source, where, 0, 1_000_000) for k in keys)
    return UpwardTariff(handling, per_kg, cold)


def parse_bus_lines(doc: dict[str, Any], source: str, county: County) -> tuple[BusLine, ...]:
    """[[bus_lines]]: passenger bus lines over real nodes, their timetable and cost per trip."""
    lines: list[BusLine] = []
    route_ids = {r.id for r in county.routes}
    for i, item in enumerate(_list(doc, "bus_lines", source)):
        where = f"bus_lines[{i}]"
        raw = _table(item, source, where)
        line_id = _req(raw, "id", str, source, where)
        where = f"bus_lines[{i}] ({line_id})"
        _only(raw, {"id", "name", "stops", "departures", "cost_per_trip_fen"}, source, where)
        if not _ID.fullmatch(line_id):
            raise _fail(source, where, "id must be 1–64 of A–Z a–z 0–9 . _ : -")
        if any(b.id == line_id for b in lines) or line_id in route_ids:
            raise _fail(source, where, "the id is already a bus line's or a route's")
        stops = tuple(_req(raw, "stops", list, source, where))
        if len(stops) < 2:
            raise _fail(source, where, "a bus line needs at least two stops")
        for stop in stops:
            if not isinstance(stop, str) or stop not in county.nodes:
                raise _fail(source, where, f"stop {stop!r} is not a node")
        departures = tuple(_hhmm(t, source, where, "departures")
                           for t in _req(raw, "departures", list, source, where))
        if not departures:
            raise _fail(source, where, "a bus line needs at least one departure")
        lines.append(BusLine(line_id, _req(raw, "name", str, source, where), stops,
                             tuple(sorted(departures)),
                             _count(raw, "cost_per_trip_fen", source, where, 0, 10_000_000)))
    return tuple(lines)


def parse_season(doc: dict[str, Any], source: str) -> Season:
    where = "[season]"
    table = _table(doc["season"], source, where)
    _only(table, {"harvest"}, source, where)
    harvest = _req(table, "harvest", list, source, where)
    if len(harvest) != 2 or not all(isinstance(d, str) and _MMDD.fullmatch(d) for d in harvest):
        raise _fail(source, where, f"'harvest' must be [\"MM-DD\", \"MM-DD\"], got {harvest!r}")
    return Season((harvest[0], harvest[1]))
