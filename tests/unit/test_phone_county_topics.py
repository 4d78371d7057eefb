"""Phone masking, the county configuration and the topic registry."""

from __future__ import annotations

from pathlib import Path

import pytest

from domain.county import CountyConfigError
from domain.phone import is_mobile, last4, mask_phone
from infra.county_file import load_county
from infra.settings import DEMO_COUNTY, Settings, SettingsError
from streams.topics import UnroutableEvent, topic_for


def test_phone_masking_hides_the_middle_four_digits() -> None:
    assert mask_phone("13812345678") == "138****5678"
    assert mask_phone("12345") == "****"
    assert "2345" not in mask_phone("0123456789")
    assert is_mobile("19912345678") and not is_mobile("12912345678")
    assert last4("13812345678") == "5678"


def test_the_demo_county_is_haicheng_sized() -> None:
    c = load_county(DEMO_COUNTY)
    assert (len(c.townships), len(c.villages), len(c.brands)) == (26, 153, 8)
    assert c.centre.id == "CTY-HAICHENG"
    assert c.planned_chain("VIL-XILIU-01") == ("CTY-HAICHENG", "TWN-XILIU", "VIL-XILIU-01")
    assert all(r.runs for r in c.routes)


@pytest.mark.parametrize("edit, message", [
    (('parent = "TWN-XILIU"', 'parent = "CTY-HAICHENG"', 1), "VIL-XILIU-01): parent 'CTY-HAICHENG' is not a township"),
    (('id = "TWN-TENGAO"', 'id = "TWN-XILIU"', 1), "(TWN-XILIU): duplicate id"),
    (('departs = "08:00"', 'departs = "8 am"', 1), "routes[0] (R-XILIU).runs[0]: departs '8 am' is not HH:MM"),
    (('"JD"]', '"DHL"]', 1), "unknown brand 'DHL'"),
    (("utc_offset_minutes = 480", 'utc_offset_minutes = "480"', 1), "'utc_offset_minutes' must be int"),
    (('tier = "county"', 'tier = "township"', 1), "exactly one county-tier node"),
])
def test_given_a_broken_county_file_then_the_error_names_where_and_why(
        tmp_path: Path, edit: tuple[str, str, int], message: str) -> None:
    text = DEMO_COUNTY.read_text(encoding="utf-8").replace(*edit)
    path = tmp_path / "broken.toml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(CountyConfigError) as err:
        load_county(path)
    assert message in str(err.value) and "broken.toml" in str(err.value)


def test_topics_route_by_family_and_refuse_the_unknown() -> None:
    assert topic_for("parcel.scanned") == "parcel-events"
    assert topic_for("consent.recorded") == "parcel-events"
    assert topic_for("vehicle.departed") == "vehicle-events"
    assert topic_for("sms.delivered") == "sms-events"
    with pytest.raises(UnroutableEvent):
        topic_for("weather.changed")


def test_settings_refuse_placeholder_secrets_outside_the_embedded_profile() -> None:
    env = {"DATABASE_URL": "postgresql://owner@db/gongpei", "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
           "GONGPEI_APP_PASSWORD": "changeme"}
    with pytest.raises(SettingsError):
        Settings.from_env(env)
    s = Settings.from_env({**env, "GONGPEI_APP_PASSWORD": "a-real-secret-of-24-chars"})
    assert s.database_url_for("api").startswith("postgresql://gongpei_api:")
    assert s.database_url_for("api").endswith("@db/gongpei")
    assert s.broker_session_timeout == 30.0
    with pytest.raises(SettingsError, match="missing settings: DATABASE_URL"):
        Settings.from_env({})


def test_settings_carry_the_event_horizon_and_trusted_proxies_to_child_processes() -> None:
    env = {"DATABASE_URL": "postgresql://owner@db/gongpei", "KAFKA_BOOTSTRAP_SERVERS": "k:9092",
           "GONGPEI_APP_PASSWORD": "a-real-secret-of-24-chars"}
    default = Settings.from_env(env)
    assert (default.max_event_age_days, default.trusted_proxies) == (30, "")
    # uvicorn trusts X-Forwarded-For from loopback unless told: the child is told "no one"
    assert default.to_env()["FORWARDED_ALLOW_IPS"] == ""
    s = Settings.from_env({**env, "GONGPEI_MAX_EVENT_AGE_DAYS": "7",
                           "GONGPEI_TRUSTED_PROXIES": "10.0.0.0/8"})
    assert Settings.from_env(s.to_env()) == s
    assert s.to_env()["FORWARDED_ALLOW_IPS"] == "10.0.0.0/8"
    for bad in ("0", "-3", "thirty", ""):
        with pytest.raises(SettingsError, match="GONGPEI_MAX_EVENT_AGE_DAYS"):
            Settings.from_env({**env, "GONGPEI_MAX_EVENT_AGE_DAYS": bad})
