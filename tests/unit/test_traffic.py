"""Demo waybills look like each brand's own and cannot be found by counting from a known one."""

from __future__ import annotations

import re
from datetime import UTC, datetime

from infra.county_file import load_county
from infra.settings import DEMO_COUNTY
from loadtest.traffic import WAYBILL_FORMATS, CountyTraffic

COUNTY = load_county(DEMO_COUNTY)
AT = datetime(2026, 11, 11, 9, 0, tzinfo=UTC)
WAYBILL = re.compile(r"^[A-Z0-9]{8,32}$")  # the ingest contract's


def registered(seed: int, n: int) -> list[tuple[str, str]]:
    traffic = CountyTraffic(COUNTY, seed=seed)
    return [(p.brand, p.waybill) for p in (traffic.register(AT)[0] for _ in range(n))]


def test_given_demo_traffic_then_every_waybill_matches_its_brands_format_and_the_contract() -> None:
    out = registered(seed=7, n=400)
    assert {b for b, _ in out} == set(COUNTY.brands)
    for brand, waybill in out:
        assert re.fullmatch(WAYBILL_FORMATS[brand], waybill), (brand, waybill)
        assert WAYBILL.fullmatch(waybill)
        others = [b for b, f in WAYBILL_FORMATS.items() if b != brand and re.fullmatch(f, waybill)]
        assert not others, (waybill, others)  # one brand per waybill shape


def test_given_a_waybill_then_its_numeric_neighbours_were_not_issued() -> None:
    out = [w for _, w in registered(seed=7, n=2000)]
    issued = set(out)
    assert len(issued) == len(out)
    neighbours = 0
    for w in out:
        head, digits = re.match(r"^(.*?)(\d+)(CN)?$", w).group(1, 2)  # type: ignore[union-attr]
        for step in (-1, 1):
            n = int(digits) + step
            neighbours += f"{head}{n:0{len(digits)}d}" in issued
    assert neighbours == 0


def test_given_the_same_seed_then_the_same_traffic_and_other_draws_unchanged() -> None:
    assert registered(seed=16, n=50) == registered(seed=16, n=50)
    assert registered(seed=16, n=50) != registered(seed=17, n=50)
    # waybills have an RNG of their own: the seed's brands, villages and phones stay as before
    a, b = CountyTraffic(COUNTY, seed=3), CountyTraffic(COUNTY, seed=3)
    a.waybill("ZTO")
    assert a.register(AT)[0].phone == b.register(AT)[0].phone
