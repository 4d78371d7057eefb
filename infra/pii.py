"""Personal data: phone numbers sealed before they are journalled, opened only by the SMS sender,
and made unreadable for good by destroying keys (crypto-shredding), never by rewriting the journal.

Key hierarchy (docs/security/personal-data.md):
- master keypair (X25519), from settings: the API has the public key only; the SMS service and the
  operator's `gongpei pii` commands have the private keys (newest first, for rotation);
- period keys, one X25519 keypair per county month (`pii_periods`): the private key sealed to the
  master public key; with it a random `hash_key` for the keyed household hash;
- data keys, one AES-256 key per sealed phone (`pii_keys`): sealed to its period's public key.
A phone is AES-256-GCM-encrypted with its data key, bound (associated data) to the key id and the
waybill, so a ciphertext copied into another parcel's event does not open. Sealing a key to a
public key is ECIES: an ephemeral X25519 exchange, HKDF-SHA256, AES-256-GCM.

Shredding a period deletes its private key, its hash key and its data keys; erasing a number
deletes the data keys whose household hash matches it. Either way the ciphertexts in the journal,
on Kafka and in every copy stay where they are, and can no longer be opened by anyone."""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import asyncpg
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from domain.envelope import Envelope
from domain.events import ParcelRegistered, ParcelRegisteredUpload, SealedPhone
from domain.phone import mask_phone
from domain.upcasting import upcast

NONCE = 12
SEAL_INLINE = 32  # registrations sealed on the event loop; more go to a thread


class PhoneErased(Exception):
    """The number's data key or its period's private key was destroyed: it cannot be opened."""


class KeyUnavailable(Exception):
    """This process has no private key for the master key a period was sealed to."""


# ------------------------------------------------------------------------------ primitives (pure)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None


def generate_keypair() -> tuple[bytes, bytes]:
    """A fresh X25519 keypair: (public, private), 32 raw bytes each."""
    private = X25519PrivateKey.generate()
    return private.public_key().public_bytes_raw(), private.private_bytes_raw()


def public_of(private: bytes) -> bytes:
    return X25519PrivateKey.from_private_bytes(private).public_key().public_bytes_raw()


def master_key_id(public: bytes) -> str:
    """The id a master key is known by: the first 12 hex digits of SHA-256 of its public key."""
    return hashlib.sha256(public).hexdigest()[:12]


def _kdf(shared: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=SHA256(), length=32, salt=salt, info=info).derive(shared)


def seal(public: bytes, plaintext: bytes, context: bytes) -> bytes:
    """Encrypt `plaintext` so only the holder of `public`'s private key can read it (ECIES:
    ephemeral X25519, HKDF-SHA256, AES-256-GCM); `context` is bound as associated data."""
    ephemeral = X25519PrivateKey.generate()
    eph_pub = ephemeral.public_key().public_bytes_raw()
    key = _kdf(ephemeral.exchange(X25519PublicKey.from_public_bytes(public)), eph_pub + public,
               b"gongpei-seal|" + context)
    nonce = os.urandom(NONCE)
    return eph_pub + nonce + AESGCM(key).encrypt(nonce, plaintext, context)


def unseal(private: bytes, blob: bytes, context: bytes) -> bytes:
    """Open what `seal` made; InvalidTag when the key, the context or the bytes are wrong."""
    eph_pub, nonce, body = blob[:32], blob[32:32 + NONCE], blob[32 + NONCE:]
    me = X25519PrivateKey.from_private_bytes(private)
    key = _kdf(me.exchange(X25519PublicKey.from_public_bytes(eph_pub)),
               eph_pub + me.public_key().public_bytes_raw(), b"gongpei-seal|" + context)
    return AESGCM(key).decrypt(nonce, body, context)


def _phone_aad(key_id: str, waybill: str) -> bytes:
    return f"gongpei-phone|{key_id}|{waybill}".encode()


def encrypt_phone(data_key: bytes, phone: str, key_id: str, waybill: str) -> str:
    nonce = os.urandom(NONCE)
    return b64(nonce + AESGCM(data_key).encrypt(nonce, phone.encode(), _phone_aad(key_id, waybill)))


def decrypt_phone(data_key: bytes, ciphertext: str, key_id: str, waybill: str) -> str:
    raw = unb64(ciphertext)
    return AESGCM(data_key).decrypt(raw[:NONCE], raw[NONCE:], _phone_aad(key_id, waybill)).decode()


def household(hash_key: bytes, phone: str) -> str:
    """The keyed hash of a number within one period: equal numbers, equal hashes; without the
    period's hash key (destroyed with the period) it tells nothing."""
    return hmac.new(hash_key, phone.encode(), hashlib.sha256).hexdigest()


def period_of(at: datetime, utc_offset_minutes: int) -> str:
    """The county month ('YYYY-MM') an instant falls in."""
    return at.astimezone(timezone(timedelta(minutes=utc_offset_minutes))).strftime("%Y-%m")


def _data_key_context(key_id: str) -> bytes:
    return b"data-key|" + key_id.encode()


def _period_context(period: str) -> bytes:
    return b"period|" + period.encode()


@dataclass(frozen=True)
class PeriodKeys:
    period: str
    public_key: bytes
    hash_key: bytes


@dataclass(frozen=True)
class SealedKey:
    """A phone's data key as stored (`pii_keys` joined with its period); None fields: destroyed."""

    key_id: str
    period: str
    sealed_key: bytes | None
    period_private: bytes | None  # sealed to the master key `master_key_id`
    master_key_id: str | None


# ------------------------------------------------------------------------------------- keyring


@dataclass
class Keyring:
    """The master keys this process was given, and the period keys it has used (cached: a period
    is never shredded while it is the current month, so a cached public key is always live)."""

    public_key: bytes | None
    private_keys: dict[str, bytes]          # master key id -> private key, newest first
    utc_offset_minutes: int
    _periods: dict[str, PeriodKeys] = field(default_factory=dict)
    _period_private: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Any, utc_offset_minutes: int, *,
                      sealing: bool = True) -> Keyring:
        """`sealing`: this process journals phones, so it needs the public key (SettingsError)."""
        privates = settings.pii_private_key_list()
        public = (settings.pii_public_key_bytes() if sealing or settings.pii_public_key
                  else (public_of(privates[0]) if privates else None))
        return cls(public, {master_key_id(public_of(k)): k for k in privates}, utc_offset_minutes)

    @property
    def can_open(self) -> bool:
        return bool(self.private_keys)

    def ref_key(self) -> bytes:
        """The SMS service's own key for grouping references, derived from the newest master
        private key (never stored)."""
        if not self.private_keys:
            raise KeyUnavailable("no master private key: this process cannot open phones")
        newest = next(iter(self.private_keys.values()))
        return _kdf(newest, b"", b"gongpei-sms-phone-ref")

    def phone_ref(self, phone: str) -> str:
        """One number's reference across months: digests and daily budgets group by it."""
        return hmac.new(self.ref_key(), phone.encode(), hashlib.sha256).hexdigest()

    # -- sealing (the API) ------------------------------------------------------------------

    async def period_keys(self, conn: asyncpg.Connection, period: str) -> PeriodKeys:
        cached = self._periods.get(period)
        if cached is not None:
            return cached
        if self.public_key is None:
            raise KeyUnavailable("no master public key: this process cannot seal phones")
        row = await _read_period(conn, period)
        if row is None:
            public, private = generate_keypair()
            await conn.execute(
                "INSERT INTO pii_periods (period, public_key, private_key, master_key_id, hash_key)"
                " VALUES ($1, $2, $3, $4, $5) ON CONFLICT (period) DO NOTHING",
                period, public, seal(self.public_key, private, _period_context(period)),
                master_key_id(self.public_key), secrets.token_bytes(32))
            row = await _read_period(conn, period)  # another API may have won the race: its keys
        if row is None or row["hash_key"] is None:
            raise PhoneErased(f"period {period} is shredded: nothing can be sealed into it")
        keys = PeriodKeys(period, bytes(row["public_key"]), bytes(row["hash_key"]))
        self._periods[period] = keys
        return keys

    # -- opening (the SMS service, the operator) --------------------------------------------

    def period_private(self, k: SealedKey) -> bytes:
        if k.period_private is None or k.sealed_key is None:
            raise PhoneErased(f"period {k.period} or key {k.key_id} is destroyed")
        cached = self._period_private.get(k.period)
        if cached is not None:
            return cached
        master = self.private_keys.get(k.master_key_id or "")
        if master is None:
            raise KeyUnavailable(f"period {k.period} is sealed to master key {k.master_key_id},"
                                 " which this process does not have")
        private = unseal(master, k.period_private, _period_context(k.period))
        self._period_private[k.period] = private
        return private

    def open_with(self, sealed: SealedPhone, waybill: str, k: SealedKey | None) -> str:
        """Open a sealed phone given its stored key material (None: the data key is gone)."""
        if k is None or k.key_id != sealed.key_id:
            raise PhoneErased(f"no data key {sealed.key_id}")
        data_key = unseal(self.period_private(k), k.sealed_key or b"",
                          _data_key_context(k.key_id))
        return decrypt_phone(data_key, sealed.ciphertext, sealed.key_id, waybill)

    async def open(self, conn: asyncpg.Connection, sealed: SealedPhone, waybill: str) -> str:
        """The phone in clear, for the moment of a provider call; PhoneErased once destroyed.
        A ciphertext that does not belong to this waybill and key fails (InvalidTag)."""
        k = await load_key(conn, sealed.key_id)
        return self.open_with(sealed, waybill, k)


async def _read_period(conn: asyncpg.Connection, period: str) -> asyncpg.Record | None:
    return await conn.fetchrow(
        "SELECT public_key, hash_key FROM pii_periods WHERE period = $1", period)


async def load_key(conn: asyncpg.Connection, key_id: str) -> SealedKey | None:
    row = await conn.fetchrow(
        "SELECT k.key_id, k.period, k.sealed_key, p.private_key, p.master_key_id FROM pii_keys k"
        " JOIN pii_periods p USING (period) WHERE k.key_id = $1", key_id)
    if row is None:
        return None
    return SealedKey(row["key_id"], row["period"], bytes(row["sealed_key"]),
                     bytes(row["private_key"]) if row["private_key"] is not None else None,
                     row["master_key_id"])


# ------------------------------------------------------------------------------------- sealing


def _upload_payload(e: Envelope) -> ParcelRegisteredUpload:
    if isinstance(e.payload, ParcelRegisteredUpload):
        return e.payload
    # An old upload version not yet lifted: upcast it as validation does.
    _, lifted = upcast(e.type, e.schema_version, e.payload.model_dump(mode="json"))
    return ParcelRegisteredUpload.model_validate(lifted)


def seal_registration(e: Envelope, keys: PeriodKeys) -> tuple[Envelope, tuple[Any, ...]]:
    """The stored form of a registration (its phone sealed with a new data key), and the
    `pii_keys` row that key needs. Pure but for the randomness."""
    p = _upload_payload(e)
    phone = p.recipient_phone
    key_id = secrets.token_hex(16)
    data_key = AESGCM.generate_key(bit_length=256)
    sealed = SealedPhone(key_id=key_id, ciphertext=encrypt_phone(data_key, phone, key_id, p.waybill),
                         masked=mask_phone(phone), household=household(keys.hash_key, phone))
    payload = ParcelRegistered(**{**p.model_dump(exclude={"recipient_phone"}),
                                  "recipient_phone": sealed})
    stored = Envelope(event_id=e.event_id, type=e.type, schema_version=2, occurred_at=e.occurred_at,
                      recorded_at=e.recorded_at, device_id=e.device_id, brand=e.brand,
                      operator_id=e.operator_id, payload=payload)
    row = (key_id, keys.period, sealed.household,
           seal(keys.public_key, data_key, _data_key_context(key_id)))
    return stored, row


async def seal_events(conn: asyncpg.Connection, keyring: Keyring,
                      events: Sequence[Envelope]) -> list[Envelope]:
    """The events as they may be journalled: every phone in clear sealed, its data key stored
    (in the caller's transaction, so a key exists exactly when its event was appended, but
    for resends answered `duplicate`, whose spare key is destroyed with its period)."""
    plain = [i for i, e in enumerate(events) if e.unsealed]
    if not plain:
        return list(events)
    keys = [await keyring.period_keys(
        conn, period_of(events[i].recorded_at, keyring.utc_offset_minutes)) for i in plain]

    def seal_all() -> list[tuple[Envelope, tuple[Any, ...]]]:
        return [seal_registration(events[i], k) for i, k in zip(plain, keys)]

    # About 0.3 ms each (two X25519 exchanges): a manifest of hundreds is sealed off the event
    # loop, so other uploads are not held up meanwhile.
    sealed = await asyncio.to_thread(seal_all) if len(plain) > SEAL_INLINE else seal_all()
    out = list(events)
    for i, (stored, _) in zip(plain, sealed):
        out[i] = stored
    rows = [row for _, row in sealed]
    if rows:
        await conn.executemany(
            "INSERT INTO pii_keys (key_id, period, household, sealed_key) VALUES ($1, $2, $3, $4)",
            rows)
    return out


# ------------------------------------------------------------------------------------ reading


def sealed_phone_of(payload: Any) -> SealedPhone | None:
    """The sealed phone a stored payload carries, if any."""
    phone = getattr(payload, "recipient_phone", None)
    return phone if isinstance(phone, SealedPhone) else None


__all__ = ["InvalidTag", "KeyUnavailable", "Keyring", "PhoneErased", "SealedKey", "seal_events"]
