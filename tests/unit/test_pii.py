"""Phones sealed before they are journalled: round trip, binding to the parcel, shredding,
the keyed household hash, and that nothing with a phone in clear can be journalled."""

from __future__ import annotations

import asyncio
import base64
from datetime import UTC, datetime

import pytest
from cryptography.exceptions import InvalidTag

from domain.envelope import Envelope
from domain.events import ParcelRegistered, ParcelRegisteredUpload, SealedPhone
from infra import pii
from infra.settings import Settings, SettingsError
from projections import journal

PHONE, WAYBILL = "13812345678", "ZT7300012345678"
AT = datetime(2026, 11, 30, 17, 0, tzinfo=UTC)  # 2026-12-01 01:00 in the county (UTC+8)


def upload(phone: str = PHONE, waybill: str = WAYBILL) -> Envelope:
    return Envelope(event_id="0193b6c4-6f1e-7cc2-9a55-3c1f0e6f2a00", type="parcel.registered",
                    schema_version=2, occurred_at=AT, recorded_at=AT, device_id="d", brand="ZTO",
                    operator_id="op", payload=ParcelRegisteredUpload(
                        waybill=waybill, recipient_phone=phone, destination_village="VIL-XILIU-01",
                        weight_g=900))


class World:
    """The key hierarchy in memory: a master keypair, a period, and the data keys sealed so far
    (what pii_periods and pii_keys hold)."""

    def __init__(self) -> None:
        self.master_public, self.master_private = pii.generate_keypair()
        self.keyring = pii.Keyring(None, {pii.master_key_id(self.master_public): self.master_private},
                                   480)
        public, private = pii.generate_keypair()
        self.period = pii.PeriodKeys("2026-12", public, b"h" * 32)
        self.period_private = pii.seal(self.master_public, private, b"period|2026-12")
        self.keys: dict[str, pii.SealedKey] = {}

    def seal(self, e: Envelope) -> Envelope:
        stored, (key_id, period, _household, sealed_key) = pii.seal_registration(e, self.period)
        self.keys[key_id] = pii.SealedKey(key_id, period, sealed_key, self.period_private,
                                          pii.master_key_id(self.master_public))
        return stored

    def open(self, sealed: SealedPhone, waybill: str = WAYBILL) -> str:
        return self.keyring.open_with(sealed, waybill, self.keys.get(sealed.key_id))


def phone_of(e: Envelope) -> SealedPhone:
    assert isinstance(e.payload, ParcelRegistered)
    return e.payload.recipient_phone


def test_given_a_manifest_when_sealed_then_the_stored_event_holds_no_number_and_opens_to_it() -> None:
    world = World()
    stored = world.seal(upload())
    wire = stored.to_wire()
    assert PHONE not in str(wire) and not stored.unsealed
    assert wire["payload"]["recipient_phone"]["masked"] == "138****5678"
    assert Envelope.from_wire(wire) == stored  # the stored form reads back as it was written
    assert world.open(phone_of(stored)) == PHONE


def test_given_two_manifests_for_one_number_then_their_ciphertexts_differ_and_households_match() -> None:
    world = World()
    a, b = world.seal(upload()), world.seal(upload(waybill="ZT7300000000001"))
    assert phone_of(a).ciphertext != phone_of(b).ciphertext
    assert phone_of(a).key_id != phone_of(b).key_id
    assert phone_of(a).household == phone_of(b).household


def test_given_a_ciphertext_copied_into_another_parcel_when_opened_then_it_fails() -> None:
    # The attacker moves a villager's sealed number onto a parcel of their own.
    world = World()
    victim = phone_of(world.seal(upload()))
    with pytest.raises(InvalidTag):
        world.open(victim, waybill="ZT7300000000001")
    # … or pairs the ciphertext with another sealed phone's key id.
    mine = phone_of(world.seal(upload(phone="13900000000")))
    swapped = victim.model_copy(update={"key_id": mine.key_id})
    with pytest.raises(InvalidTag):
        world.open(swapped)


def test_given_a_destroyed_data_key_or_period_when_opened_then_the_phone_is_erased() -> None:
    world = World()
    sealed = phone_of(world.seal(upload()))
    key = world.keys[sealed.key_id]
    world.keys[sealed.key_id] = pii.SealedKey(key.key_id, key.period, key.sealed_key, None,
                                              key.master_key_id)  # the period shredded
    with pytest.raises(pii.PhoneErased):
        pii.Keyring(None, world.keyring.private_keys, 480).open_with(
            sealed, WAYBILL, world.keys[sealed.key_id])
    del world.keys[sealed.key_id]  # the data key deleted (an erasure)
    with pytest.raises(pii.PhoneErased):
        world.open(sealed)


def test_given_only_the_public_key_then_a_sealed_phone_cannot_be_opened() -> None:
    world = World()
    sealed = phone_of(world.seal(upload()))
    api = pii.Keyring(world.master_public, {}, 480)  # what the API holds
    with pytest.raises(pii.KeyUnavailable):
        api.open_with(sealed, WAYBILL, world.keys[sealed.key_id])
    stranger = pii.Keyring(None, {pii.master_key_id(world.master_public): pii.generate_keypair()[1]},
                           480)
    with pytest.raises(InvalidTag):
        stranger.open_with(sealed, WAYBILL, world.keys[sealed.key_id])


def test_the_household_hash_is_keyed_per_period() -> None:
    assert pii.household(b"a" * 32, PHONE) == pii.household(b"a" * 32, PHONE)
    assert pii.household(b"a" * 32, PHONE) != pii.household(b"b" * 32, PHONE)
    import hashlib

    assert pii.household(b"a" * 32, PHONE) != hashlib.sha256(PHONE.encode()).hexdigest()


def test_the_period_is_the_county_month_of_recorded_at() -> None:
    assert pii.period_of(AT, 480) == "2026-12" and pii.period_of(AT, 0) == "2026-11"


def test_given_a_phone_in_clear_when_appended_to_the_journal_then_it_is_refused() -> None:
    # Refused before any SQL is sent: the connection is never touched.
    with pytest.raises(journal.UnsealedPhoneError):
        asyncio.run(journal.append(None, [upload()]))  # type: ignore[arg-type]


def test_given_a_plain_phone_where_the_sealed_one_belongs_then_the_stored_model_refuses_it() -> None:
    with pytest.raises(ValueError):
        ParcelRegistered(waybill=WAYBILL, recipient_phone=PHONE,  # type: ignore[arg-type]
                         destination_village="VIL-XILIU-01", weight_g=900)


def test_the_sms_reference_is_the_same_across_months_and_needs_the_private_key() -> None:
    world = World()
    assert world.keyring.phone_ref(PHONE) == world.keyring.phone_ref(PHONE)
    assert world.keyring.phone_ref(PHONE) != world.keyring.phone_ref("13900000000")
    with pytest.raises(pii.KeyUnavailable):
        pii.Keyring(world.master_public, {}, 480).phone_ref(PHONE)


def test_settings_keep_the_private_key_from_every_child_but_the_sms_service() -> None:
    public, private = pii.generate_keypair()
    s = Settings(database_url="postgresql://x", app_password="p", kafka_bootstrap_servers="k",
                 profile="embedded",
                 pii_public_key=base64.b64encode(public).decode(),
                 pii_private_keys=base64.b64encode(private).decode())
    assert "GONGPEI_PII_PRIVATE_KEYS" not in s.to_env()
    assert s.pii_private_env() == {"GONGPEI_PII_PRIVATE_KEYS": s.pii_private_keys}
    assert Settings.from_env({**s.to_env(), **s.pii_private_env()}).pii_private_key_list() == [private]


def test_given_no_public_key_then_the_api_keyring_refuses_to_start() -> None:
    s = Settings(database_url="postgresql://x", app_password="p", kafka_bootstrap_servers="k",
                 profile="embedded")
    with pytest.raises(SettingsError):
        pii.Keyring.from_settings(s, 480)
    with pytest.raises(SettingsError):
        Settings.from_env({**s.to_env(), "GONGPEI_PII_PUBLIC_KEY": "not-a-key"})


def test_a_month_is_shredded_only_once_it_is_entirely_older_than_the_retention() -> None:
    from projections.pii_admin import retention_cutoff

    now = datetime(2026, 12, 1, 4, 0, tzinfo=UTC)  # 12:00 in the county
    # Every month before the cutoff goes: May ended 183 days ago; June ended only 153 days ago.
    assert retention_cutoff(now, 180, 480) == "2026-06"
    assert retention_cutoff(now, 1, 480) == "2026-11"
    assert retention_cutoff(datetime(2026, 12, 31, 16, 30, tzinfo=UTC), 30, 480) == "2026-12"
