"""The county configuration: the Haicheng demo loads, and broken files say exactly where and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.brands import BRANDS
from domain.county import CountyConfigError
from infra.county_file import load_county

DEMO = Path(__file__).parents[2] / "infra" / "counties" / "haicheng.toml"
COUNTY = load_county(DEMO)

HEAD = '''[county]
code = "T"
name = "测试县"
utc_offset_minutes = 480
brands = ["ZTO", "EMS"]

[[nodes]]
id = "CTY-T"
name = "县中心"
tier = "county"

[[nodes]]
id = "TWN-A"
name = "甲镇站"
tier = "township"
parent = "CTY-T"

[[nodes]]
id = "VIL-A-01"
name = "甲镇王家村服务点"
tier = "village"
parent = "TWN-A"
'''
ROUTE = '''
[[routes]]
id = "R-A"
name = "县中心—甲镇线"
stops = ["CTY-T", "TWN-A", "VIL-A-01"]
distance_m = 21000
runs = [{ id = "R-A-AM", departs = "08:00", arrives = "10:30" }]
'''


def load_text(tmp_path: Path, text: str) -> object:
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    return load_county(path)


def test_given_the_demo_file_when_loaded_then_it_is_haicheng_sized() -> None:
    assert COUNTY.code == "HAICHENG" and COUNTY.utc_offset_minutes == 480
    assert COUNTY.centre.id == "CTY-HAICHENG" and COUNTY.centre.name == "海城市县级共配中心"
    assert (len(COUNTY.townships), len(COUNTY.villages)) == (26, 153)
    assert len(COUNTY.nodes) == 1 + 26 + 153
    assert COUNTY.brands == BRANDS


def test_given_the_demo_file_then_every_township_has_5_to_7_villages_and_one_route() -> None:
    for township in COUNTY.townships:
        villages = [v.id for v in COUNTY.villages if v.parent == township.id]
        assert 5 <= len(villages) <= 7, township.id
        routes = [r for r in COUNTY.routes if township.id in r.stops]
        assert len(routes) == 1, township.id
        (route,) = routes
        assert route.stops == (COUNTY.centre.id, township.id, *villages)
        assert route.distance_m > 0 and len(route.runs) == 2


def test_given_a_village_then_its_planned_chain_runs_centre_township_village() -> None:
    assert COUNTY.township_of("VIL-XILIU-01") == "TWN-XILIU"
    assert COUNTY.planned_chain("VIL-XILIU-01") == ("CTY-HAICHENG", "TWN-XILIU", "VIL-XILIU-01")
    assert COUNTY.route("R-XILIU") is not None and COUNTY.route("R-NOWHERE") is None


def test_given_a_minimal_valid_file_then_it_loads(tmp_path: Path) -> None:
    county = load_text(tmp_path, HEAD + ROUTE)
    assert county.routes[0].runs[0].arrives == "10:30"  # type: ignore[attr-defined]


@pytest.mark.parametrize("edit, message", [
    (('parent = "TWN-A"', 'parent = "CTY-T"'),
     "broken.toml: nodes[2] (VIL-A-01): parent 'CTY-T' is not a township"),
    (('parent = "TWN-A"', 'parent = "TWN-Z"'),
     "broken.toml: nodes[2] (VIL-A-01): parent 'TWN-Z' is not a node"),
    (('parent = "TWN-A"\n', ''), "broken.toml: nodes[2] (VIL-A-01): a village needs a 'parent' township"),
    (('parent = "CTY-T"', 'parent = "VIL-A-01"'),
     "broken.toml: nodes[1] (TWN-A): parent 'VIL-A-01' is not a county"),
    (('id = "VIL-A-01"', 'id = "TWN-A"'), "broken.toml: nodes[2] (TWN-A): duplicate id"),
    (('id = "VIL-A-01"', 'id = "VIL A 01"'), "broken.toml: nodes[2] (VIL A 01): id must be"),
    (('tier = "village"', 'tier = "hamlet"'), "nodes[2] (VIL-A-01): tier 'hamlet' is not county"),
    (('tier = "county"', 'tier = "township"'), "broken.toml: nodes: exactly one county-tier node"),
    (('name = "甲镇站"\n', ''), "broken.toml: nodes[1] (TWN-A): 'name' is required"),
    (('"ZTO", "EMS"', '"ZTO", "DHL"'), "broken.toml: [county].brands: unknown brand 'DHL'"),
    (('"ZTO", "EMS"', '"ZTO", "ZTO"'), "broken.toml: [county].brands: a brand is listed twice"),
    (('utc_offset_minutes = 480', 'utc_offset_minutes = "480"'),
     "broken.toml: [county]: 'utc_offset_minutes' must be int, got str"),
    (('"TWN-A", "VIL-A-01"]', '"TWN-A", "VIL-A-99"]'),
     "broken.toml: routes[0] (R-A): stop 'VIL-A-99' is not a node"),
    (('distance_m = 21000', 'distance_m = 0'), "broken.toml: routes[0] (R-A): distance_m must be positive"),
    (('distance_m = 21000', 'distance_m = 21.5'), "routes[0] (R-A): 'distance_m' must be int, got float"),
    (('departs = "08:00"', 'departs = "8 am"'), "routes[0] (R-A).runs[0]: departs '8 am' is not HH:MM"),
    (('arrives = "10:30"', 'arrives = "24:10"'), "routes[0] (R-A).runs[0]: arrives '24:10' is not HH:MM"),
    (('arrives = "10:30"', 'arrives = "07:30"'),
     "routes[0] (R-A).runs[0]: arrives 07:30 is not after departs 08:00"),
    (('runs = [{ id = "R-A-AM", departs = "08:00", arrives = "10:30" }]', 'runs = []'),
     "routes[0] (R-A): a fixed route needs at least one run"),
    (('{ id = "R-A-AM", departs = "08:00", arrives = "10:30" }',
      '{ id = "R-A-AM", departs = "08:00" }, { id = "R-A-AM", departs = "14:30" }'),
     "routes[0] (R-A).runs[1]: run id 'R-A-AM' is malformed or used twice"),
])
def test_given_a_broken_county_file_then_the_error_names_the_file_the_entry_and_why(
        tmp_path: Path, edit: tuple[str, str], message: str) -> None:
    text = HEAD + ROUTE
    assert edit[0] in text
    with pytest.raises(CountyConfigError) as err:
        load_text(tmp_path, text.replace(*edit, 1))
    assert message in str(err.value)


def test_given_nodes_that_are_not_tables_then_the_error_says_so(tmp_path: Path) -> None:
    with pytest.raises(CountyConfigError, match=r"broken.toml: nodes\[0\]: must be a table, got int"):
        load_text(tmp_path, 'nodes = [1]\n[county]\ncode = "T"\nname = "T"\n'
                            'utc_offset_minutes = 480\nbrands = []\n')


def test_given_no_file_or_bad_toml_then_the_error_says_which(tmp_path: Path) -> None:
    with pytest.raises(CountyConfigError, match="no such file"):
        load_county(tmp_path / "missing.toml")
    with pytest.raises(CountyConfigError, match="broken.toml: not valid TOML"):
        load_text(tmp_path, "[county\n")


def test_given_a_privacy_table_then_phones_are_kept_that_many_days_else_180(tmp_path: Path) -> None:
    assert COUNTY.phone_retention_days == 180
    assert load_text(tmp_path, HEAD + ROUTE).phone_retention_days == 180  # type: ignore[attr-defined]
    county = load_text(tmp_path, HEAD + ROUTE + "\n[privacy]\nphone_retention_days = 30\n")
    assert county.phone_retention_days == 30  # type: ignore[attr-defined]


@pytest.mark.parametrize("privacy, message", [
    ("phone_retention_days = 0", "phone_retention_days 0 is not 1–3650"),
    ('phone_retention_days = "180"', "'phone_retention_days' must be int"),
    ("phone_retention = 180", "unknown key 'phone_retention'"),
])
def test_given_a_bad_privacy_table_then_the_error_says_why(tmp_path: Path, privacy: str,
                                                           message: str) -> None:
    with pytest.raises(CountyConfigError, match=message):
        load_text(tmp_path, HEAD + ROUTE + f"\n[privacy]\n{privacy}\n")
