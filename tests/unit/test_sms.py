"""Arrival SMS rules on a fake clock: digests, quiet hours, reminders, text, codes, consent."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta, timezone

import pytest

from domain import sms
from domain.county import CountyConfigError
from domain.sms import Parcel, SmsPolicy, Waiting

BJ = timezone(timedelta(hours=8))
OFFSET = 480
POLICY = SmsPolicy()
POINT = "西柳王家村服务点"


def at(day: int, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime(2026, 11, day, hh, mm, ss, tzinfo=BJ)


# ------------------------------------------------------------------------------------ digests


def test_a_digest_closes_ten_minutes_after_it_opened_and_takes_what_came_before() -> None:
    closes = sms.digest_closes_at(at(11, 10), POLICY, OFFSET)
    assert closes == at(11, 10, 10)
    assert sms.joins_digest(closes, at(11, 10, 9, 59))
    assert not sms.joins_digest(closes, at(11, 10, 10))  # the boundary opens the next one


def test_a_digest_opened_late_in_the_evening_is_held_to_the_morning_and_keeps_collecting() -> None:
    closes = sms.digest_closes_at(at(11, 20, 55), POLICY, OFFSET)  # 21:05 would be quiet
    assert closes == at(12, 8)
    assert sms.joins_digest(closes, at(12, 7, 59))  # the night's parcels: one morning SMS


# -------------------------------------------------------------------------------- quiet hours


@pytest.mark.parametrize("t, released", [
    (at(11, 20, 59), at(11, 20, 59)),   # before the quiet period: now
    (at(11, 21, 0), at(12, 8, 0)),      # its start: next morning
    (at(11, 23, 30), at(12, 8, 0)),     # before midnight
    (at(12, 0, 0), at(12, 8, 0)),       # midnight itself
    (at(12, 3, 0), at(12, 8, 0)),       # after midnight: the same morning
    (at(12, 8, 0), at(12, 8, 0)),       # its end: now
])
def test_quiet_hours_span_midnight(t: datetime, released: datetime) -> None:
    assert sms.release_at(t, POLICY, OFFSET) == released


def test_quiet_hours_are_county_time_whatever_zone_the_clock_reads() -> None:
    utc = datetime(2026, 11, 11, 14, 0, tzinfo=UTC)  # 22:00 in the county
    assert sms.release_at(utc, POLICY, OFFSET) == at(12, 8)


def test_a_daytime_quiet_period_and_none_at_all() -> None:
    lunch = SmsPolicy(quiet_start=time(12), quiet_end=time(14))
    assert sms.release_at(at(11, 12, 30), lunch, OFFSET) == at(11, 14)
    assert sms.release_at(at(11, 15), lunch, OFFSET) == at(11, 15)
    never = SmsPolicy(quiet_start=time(0), quiet_end=time(0))
    assert sms.release_at(at(11, 23), never, OFFSET) == at(11, 23)


# ---------------------------------------------------------------------------------- reminders


def waiting(aid: str, stored: datetime, reminders: int = 0, last: datetime | None = None,
            collected: bool = False, phone: str = "13812345678") -> Waiting:
    return Waiting(aid, phone, "VIL-XILIU-01", stored, reminders,
                   last or stored + timedelta(minutes=10), collected)


def test_reminders_fall_due_at_48_and_72_hours_then_stop() -> None:
    stored = at(11, 10)
    assert sms.reminder_due(stored, 0, POLICY, OFFSET, stored) == at(13, 10)
    assert sms.reminder_due(stored, 1, POLICY, OFFSET, at(13, 10)) == at(14, 10)
    assert sms.reminder_due(stored, 2, POLICY, OFFSET) is None
    w = waiting("a1", stored)
    assert sms.due_reminders([w], at(13, 9, 59), POLICY, OFFSET) == {}
    assert list(sms.due_reminders([w], at(13, 10), POLICY, OFFSET)) == [
        ("13812345678", "VIL-XILIU-01", 0)]


def test_a_collected_parcel_gets_no_reminder() -> None:
    w = waiting("a1", at(11, 10), collected=True)
    assert sms.due_reminders([w], at(20, 12), POLICY, OFFSET) == {}


def test_a_parcel_whose_sms_has_not_gone_out_is_not_reminded() -> None:
    w = Waiting("a1", "13812345678", "VIL-XILIU-01", at(11, 10), 0, None)
    assert sms.due_reminders([w], at(20, 12), POLICY, OFFSET) == {}


def test_a_reminder_due_at_night_waits_for_the_morning() -> None:
    stored = at(11, 22)  # stored late; 48 h later is 22:00 again
    assert sms.reminder_due(stored, 0, POLICY, OFFSET, stored) == at(14, 8)


def test_a_scan_uploaded_two_days_late_is_not_reminded_right_after_its_first_sms() -> None:
    stored, first_sms = at(11, 10), at(13, 8)  # +12 h is 20:00, before the quiet hours
    assert sms.reminder_due(stored, 0, POLICY, OFFSET, first_sms) == first_sms + sms.REMINDER_MIN_GAP


def test_reminders_for_one_phone_at_one_point_are_one_sms() -> None:
    group = [waiting("a1", at(11, 10)), waiting("a2", at(11, 10, 5)),
             waiting("b1", at(11, 10), phone="13900000000")]
    due = sms.due_reminders(group, at(13, 11), POLICY, OFFSET)
    assert sorted(len(v) for v in due.values()) == [1, 2]


# --------------------------------------------------------------------------------------- text


def parcels(n: int, brand: str = "ZTO") -> list[Parcel]:
    return [Parcel(f"ZT73000{i:08d}", brand, f"{i % 20 + 1}-{i % 5 + 1}-{7500 + i:04d}")
            for i in range(n)]


def test_one_parcel_is_one_segment_and_names_brand_point_code_and_hours() -> None:
    m = sms.compose("arrival", parcels(1), POINT, POLICY)
    assert m.text == "【共配】您的中通包裹已到西柳王家村服务点，取件码1-1-7500，8:00-19:00可取。"
    assert m.segments == 1 and len(m.text) <= 70
    assert m.template == "SMS_GP_ARRIVAL" and m.params["codes"] == "1-1-7500"


def test_three_parcels_list_every_code_within_two_segments() -> None:
    m = sms.compose("arrival", parcels(3) + [Parcel("YT7300000009", "YTO", "9-9-0009")], POINT,
                    POLICY)
    assert "4件包裹" in m.text
    assert all(p.pickup_code in m.text for p in parcels(3))
    assert m.segments <= 2


def test_twenty_parcels_degrade_to_some_codes_the_count_and_the_phone_tail() -> None:
    m = sms.compose("arrival", parcels(20), POINT, POLICY, phone_last4="5678")
    assert m.segments <= POLICY.max_segments and len(m.text) <= 2 * 67
    assert "等20件" in m.text and "尾号5678" in m.text
    assert "20件中通包裹" in m.text


def test_segment_counting_follows_the_providers_rule() -> None:
    assert sms.segments("字" * 70) == 1
    assert sms.segments("字" * 71) == 2
    assert sms.segments("字" * 134) == 2
    assert sms.segments("字" * 135) == 3


def test_without_consent_the_sms_says_how_to_ask_for_home_delivery() -> None:
    m = sms.compose("arrival", parcels(1), POINT, POLICY, consented=False)
    assert "送货上门" in m.text and m.template == "SMS_GP_ARRIVAL_NC"
    assert m.segments <= 2
    assert "送货上门" not in sms.compose("arrival", parcels(1), POINT, POLICY).text


def test_a_reminder_says_how_long_it_has_waited() -> None:
    m = sms.compose("reminder", parcels(2), POINT, POLICY, days=2)
    assert "已存放2天" in m.text and m.template == "SMS_GP_REMINDER"


def test_no_marketing_only_the_registered_templates() -> None:
    for kind, consented in (("arrival", True), ("arrival", False), ("reminder", True)):
        m = sms.compose(kind, parcels(2), POINT, POLICY, consented=consented, days=3)
        assert m.text == f"【{POLICY.sign_name}】" + sms.render(
            getattr(POLICY.templates, "arrival_no_consent" if not consented else kind), m.params)


# --------------------------------------------------------------------------------- pickup codes


def test_pickup_codes_are_shelf_layer_sequence_and_skip_those_in_use() -> None:
    assert sms.pickup_code(1, POLICY) == "1-1-0001"
    assert sms.pickup_code(11, POLICY) == "1-2-0011"
    assert sms.pickup_code(51, POLICY) == "2-1-0051"
    code, nxt = sms.allocate_code(1, {"1-1-0001", "1-1-0002"}, POLICY)
    assert (code, nxt) == ("1-1-0003", 4)
    code, nxt = sms.allocate_code(9999, set(), POLICY)
    assert nxt == 1  # wraps


def test_ids_are_stable_and_distinct() -> None:
    a = sms.arrival_id("ZT7300012345678", "VIL-XILIU-01", "e1")
    assert a == sms.arrival_id("ZT7300012345678", "VIL-XILIU-01", "e1")
    assert a != sms.arrival_id("ZT7300012345678", "VIL-XILIU-02", "e1")


# ------------------------------------------------------------------------------ configuration


@pytest.mark.parametrize("table, why", [
    ({"digest_minutes": -1}, "digest_minutes"),
    ({"reminder_hours": [72, 48]}, "reminder_hours"),
    ({"quiet_start": "9pm"}, "quiet_start"),
    ({"template_codes": {"bogus": "X"}}, "template_codes"),
    ({"sign_name": "x"}, "sign_name"),
])
def test_bad_sms_configuration_is_refused_naming_the_key(table: dict[str, object], why: str) -> None:
    with pytest.raises(CountyConfigError, match=why):
        sms.parse_sms({"sms": table}, "county.toml")


def test_defaults_and_seconds_for_drills() -> None:
    assert sms.parse_sms({"sms": {}}, "c").digest_seconds == 600
    assert sms.parse_sms({"sms": {"digest_seconds": 3}}, "c").digest_seconds == 3


def test_positional_parameters_follow_the_template() -> None:
    assert sms.template_keys(POLICY.templates.arrival) == ["parcels", "point", "codes", "hours"]
    assert sms.template_text(POLICY, "SMS_GP_REMINDER") == POLICY.templates.reminder
    assert sms.template_text(POLICY, "nope") is None


def test_provider_settings_name_the_api_each_endpoint_speaks() -> None:
    from infra.settings import Settings, SettingsError

    base = Settings(database_url="postgresql://x", app_password="p", kafka_bootstrap_servers="k")
    good = base.with_(sms_providers="aliyun=https://dysmsapi.aliyuncs.com, aliyun-backup=http://h:1,"
                                    "tencent=https://sms.tencentcloudapi.com")
    assert [(n, k) for n, k, _, _ in good.sms_provider_list()] == [
        ("aliyun", "aliyun"), ("aliyun-backup", "aliyun"), ("tencent", "tencent")]
    for bad in ("twilio=https://x", "aliyun=ftp://x", "aliyun", "=https://x"):
        with pytest.raises(SettingsError, match="GONGPEI_SMS_PROVIDERS"):
            base.with_(sms_providers=bad).sms_provider_list()
