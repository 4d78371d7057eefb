"""A county's whole configuration: its network (domain.county) with the rules each part of the
platform reads from the same file — on-time targets, arrival SMS, settlement. Pure: it takes the
parsed document; infra.county_file reads it from disk."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from domain.county import County, parse_topology
from domain.settlement.config import parse_settlement
from domain.sla import parse_sla
from domain.sms import parse_sms


def parse_county(doc: dict[str, Any], source: str = "county") -> County:
    """Validate a parsed county document and build the County with its rules."""
    county = parse_topology(doc, source)
    return replace(
        county,
        settlement=(parse_settlement(doc, source, {r.id for r in county.routes})
                    if "settlement" in doc else None),
        sla=parse_sla(doc, source) if "sla" in doc else None,
        sms=parse_sms(doc, source) if "sms" in doc else None)
