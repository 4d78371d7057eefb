"""One Settings object, read from the environment once, at the composition root."""

from __future__ import annotations

import base64
import hashlib
import hmac
import ipaddress
import math
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

from infra.capacity import CapacityLimits

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
DEMO_COUNTY = Path(__file__).parent / "counties" / "haicheng.toml"
# Each service connects to PostgreSQL as its own role, with only the privileges it needs
# (infra/schema/grants.sql; docs/security/roles.md). The schema owner is DATABASE_URL's user.
SERVICE_ROLES = {
    "api": "gongpei_api",
    "relay": "gongpei_relay",
    "worker": "gongpei_worker",
    "ledger": "gongpei_ledger",
    "sms": "gongpei_sms",
}
# The single role every service shared before; `migrate` takes its login and privileges away.
LEGACY_APP_ROLE = "gongpei_app"
ROLE_PASSWORD_ENV = "GONGPEI_DB_PASSWORD_"  # + API, RELAY, …: one role's own password


def derive_role_password(app_password: str, role: str) -> str:
    """The password of `role`, derived from the one secret GONGPEI_APP_PASSWORD: one secret to
    keep, yet a password seen in one service's connection string opens no other role."""
    mac = hmac.new(app_password.encode(), b"gongpei-db-role:" + role.encode(), hashlib.sha256)
    return base64.urlsafe_b64encode(mac.digest()).decode().rstrip("=")


# A provider account's SendSms calls a second when GONGPEI_SMS_QPS does not say: a conservative
# figure (set the account's own), and still 5,000 SMS in 25 s.
SMS_DEFAULT_QPS = 200.0


class SettingsError(ValueError):
    """A setting is missing or unusable."""


def _positive_int(env: dict[str, str], name: str, default: int) -> int:
    raw = env.get(name, str(default))
    if not raw.strip().isdigit() or int(raw) < 1:
        raise SettingsError(f"{name} must be a whole number of 1 or more, got {raw!r}")
    return int(raw)


@dataclass(frozen=True)
class Settings:
    """Where the platform's parts are and how they behave."""

    database_url: str            # schema owner: migrations and token administration
    app_password: str            # the secret every service role's password is derived from
    kafka_bootstrap_servers: str
    county_file: Path = DEMO_COUNTY
    profile: str = "production"  # "embedded" tunes Kafka clients for the in-memory Tansu broker
    topic_partitions: int = 8
    topic_replication: int = 1
    # Prefixed to every topic name and consumer group ("haicheng" -> "haicheng.parcel-events"),
    # so that several counties' deployments share one Kafka cluster without reading each other's
    # events (docs/scaling.md). Empty: the plain names.
    kafka_namespace: str = ""
    max_batch_events: int = 500
    max_body_bytes: int = 1 << 20
    worker_batch_size: int = 500
    # An uploaded event that happened longer ago than this before the server received it is
    # refused (`too_old`): a device's stale backlog or a wrong clock, not news to act on.
    max_event_age_days: int = 30
    # Addresses (or CIDR networks) of reverse proxies whose X-Forwarded-For names the client,
    # comma-separated. Empty: the TCP peer is the client, and X-Forwarded-For is ignored.
    trusted_proxies: str = ""
    # SMS providers in failover order, "name=scheme://host[:port]" joined by commas. A name is
    # "aliyun" or "tencent", optionally with a suffix ("aliyun-backup"); it says which API the
    # endpoint speaks (the provider's, or the local gateway's). Empty: the SMS service idles.
    sms_providers: str = ""
    sms_access_key_id: str = ""       # Aliyun
    sms_access_key_secret: str = ""
    sms_tencent_secret_id: str = ""   # Tencent Cloud
    sms_tencent_secret_key: str = ""
    sms_tencent_app_id: str = ""
    sms_receipt_key: str = ""    # the secret in the delivery-report URL given to providers
    # How long an unanswered provider call is left before the provider is asked about it: its
    # records lag its answers (Aliyun's QuerySendDetails by seconds); the local gateway's do not.
    sms_query_after_seconds: float = 60.0
    # Provider calls in progress at once (never two for one number): at ~200 ms a call, 64 keep
    # ~300 calls a second going, so the account's rate below is the limit, not waiting.
    sms_concurrency: int = 64
    # SendSms calls a second each provider account allows, "name=rate" joined by commas (a
    # provider not named gets SMS_DEFAULT_QPS). Set it to what the account's console says:
    # beyond it the provider answers with a throttling error.
    sms_qps: str = ""
    # A service's own role password (GONGPEI_DB_PASSWORD_API, …), given instead of app_password
    # to a process that should hold no other role's: keyed by service name.
    role_passwords: dict[str, str] = field(default_factory=dict)
    # Phone numbers are sealed to this X25519 public key (base64, `gongpei pii keygen`): every
    # service that journals a phone (the API) needs it. The private keys (base64, comma-separated,
    # newest first) open them: ONLY the SMS service and the operator's `gongpei pii` get them.
    pii_public_key: str = ""
    pii_private_keys: str = ""
    # Rate limits, per API process (docs/security/writers.md): bursts and refills per minute.
    # Uploads per token: 60 requests and 30,000 events at once (a day's backlog of 20,000 events
    # in 500-event batches is 40 requests), then 1 request/s and 100 events/s.
    upload_burst: int = 60
    upload_per_minute: float = 60.0
    upload_events_burst: int = 30_000
    upload_events_per_minute: float = 6_000.0
    upload_concurrency: int = 1      # batches of one token in progress at once
    read_burst: int = 600            # every other authenticated request, per token
    read_per_minute: float = 1_200.0
    auth_failure_burst: int = 20     # unknown/expired tokens per client address, then 429
    auth_failures_per_minute: float = 2.0
    access_log_retention_days: int = 90
    # When the embedded supervisor warns (infra/capacity.py, docs/runtime.md): less than this
    # free on PostgreSQL's disk; the in-memory broker holding this share of the machine's memory.
    disk_warn_free_mb: float = CapacityLimits.disk_warn_free_mb
    broker_memory_warn_percent: float = CapacityLimits.broker_memory_warn_percent

    def role_password(self, service: str) -> str:
        """The password of `service`'s database role: its own setting, else derived."""
        role = SERVICE_ROLES.get(service)
        if role is None:
            raise SettingsError(f"no database role for {service!r}; one of {', '.join(SERVICE_ROLES)}")
        if self.role_passwords.get(service):
            return self.role_passwords[service]
        if self.app_password:
            return derive_role_password(self.app_password, role)
        raise SettingsError(f"no password for the {role} role: set GONGPEI_APP_PASSWORD or"
                            f" {ROLE_PASSWORD_ENV}{service.upper()}")

    def database_url_for(self, service: str) -> str:
        """The database URL `service` connects with: DATABASE_URL's host, port and database, as
        the service's own role ("owner": DATABASE_URL itself, for migrations and admin)."""
        if service == "owner":
            return self.database_url
        parts = urlsplit(self.database_url)
        host = parts.hostname or "127.0.0.1"
        netloc = f"{SERVICE_ROLES.get(service, service)}:" \
                 f"{quote(self.role_password(service), safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

    def for_service(self, service: str | None) -> Settings:
        """These settings as one service process should hold them: its own role's password
        only (None: no database password at all), and DATABASE_URL without the owner's
        credentials."""
        parts = urlsplit(self.database_url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        bare = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        own = {service: self.role_password(service)} if service is not None else {}
        return replace(self, database_url=bare, app_password="", role_passwords=own)

    def sms_provider_list(self) -> list[tuple[str, str, str, str]]:
        """(name, kind, scheme, host:port) of each configured SMS provider, in failover order."""
        out = []
        for item in filter(None, (x.strip() for x in self.sms_providers.split(","))):
            name, sep, url = item.partition("=")
            scheme, sep2, host = url.partition("://")
            if not sep or not sep2 or scheme not in ("http", "https") or not name or not host:
                raise SettingsError(f"GONGPEI_SMS_PROVIDERS: {item!r} is not name=http(s)://host:port")
            kind = name.split("-")[0]
            if kind not in ("aliyun", "tencent"):
                raise SettingsError(f"GONGPEI_SMS_PROVIDERS: {name!r} must start with aliyun or"
                                    " tencent (the API its endpoint speaks)")
            out.append((name, kind, scheme, host.rstrip("/")))
        return out

    def sms_qps_by_provider(self) -> dict[str, float]:
        """The SendSms rate of each configured provider, calls a second."""
        given: dict[str, float] = {}
        for item in filter(None, (x.strip() for x in self.sms_qps.split(","))):
            name, _, rate = item.partition("=")
            try:
                value = float(rate)
            except ValueError:
                value = 0.0
            if not name.strip() or not 0 < value < math.inf:
                raise SettingsError(f"GONGPEI_SMS_QPS: {item!r} is not name=calls-per-second")
            given[name.strip()] = value
        names = [name for name, *_ in self.sms_provider_list()]
        unknown = set(given) - set(names)
        if unknown:
            raise SettingsError(f"GONGPEI_SMS_QPS names no configured provider: {sorted(unknown)}")
        return {name: given.get(name, SMS_DEFAULT_QPS) for name in names}

    def pii_public_key_bytes(self) -> bytes:
        """The master public key phones are sealed to; SettingsError when it is missing or bad."""
        if not self.pii_public_key:
            raise SettingsError("GONGPEI_PII_PUBLIC_KEY is required to accept parcel registrations"
                                " (generate one with `gongpei pii keygen`)")
        return _key32("GONGPEI_PII_PUBLIC_KEY", self.pii_public_key)

    def pii_private_key_list(self) -> list[bytes]:
        """The master private keys, newest first (empty: this process cannot open phones)."""
        return [_key32("GONGPEI_PII_PRIVATE_KEYS", k)
                for k in filter(None, (x.strip() for x in self.pii_private_keys.split(",")))]

    def pii_private_env(self) -> dict[str, str]:
        """The one setting `to_env` withholds: give it only to the SMS service."""
        return {"GONGPEI_PII_PRIVATE_KEYS": self.pii_private_keys}

    def trusted_proxy_set(self) -> frozenset[IPNetwork]:
        """The trusted proxies, as networks (an address is a network of one)."""
        try:
            return frozenset(ipaddress.ip_network(a.strip(), strict=False)
                             for a in self.trusted_proxies.split(",") if a.strip())
        except ValueError:
            raise SettingsError("GONGPEI_TRUSTED_PROXIES: comma-separated IP addresses or"
                                " networks") from None

    @property
    def broker_session_timeout(self) -> float:
        # Tansu makes every group join wait half the session timeout: keep it short there.
        return 4.0 if self.profile == "embedded" else 30.0

    def with_(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Read settings from the environment, refusing placeholders outside the embedded profile."""
        env = dict(os.environ if env is None else env)
        own = {service: env[ROLE_PASSWORD_ENV + service.upper()] for service in SERVICE_ROLES
               if env.get(ROLE_PASSWORD_ENV + service.upper())}
        missing = [k for k in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS") if not env.get(k)]
        if not env.get("GONGPEI_APP_PASSWORD") and not own:
            missing.append("GONGPEI_APP_PASSWORD")
        if missing:
            raise SettingsError(f"missing settings: {', '.join(missing)}")
        profile = env.get("GONGPEI_PROFILE", "production")
        password = env.get("GONGPEI_APP_PASSWORD", "")
        for name, secret in (("GONGPEI_APP_PASSWORD", password),
                             *((ROLE_PASSWORD_ENV + k.upper(), v) for k, v in own.items())):
            if secret and profile != "embedded" and (
                    len(secret) < 16 or secret in {"changeme", "password"}):
                raise SettingsError(f"{name} must be a real secret of 16+ characters")
        for name in ("GONGPEI_PII_PUBLIC_KEY", "GONGPEI_PII_PRIVATE_KEYS"):
            for key in filter(None, (k.strip() for k in env.get(name, "").split(","))):
                _key32(name, key)  # a mistyped key fails at start, not at the first parcel
        settings = cls(
            database_url=env["DATABASE_URL"],
            app_password=password,
            role_passwords=own,
            kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
            county_file=Path(env.get("GONGPEI_COUNTY_FILE", str(DEMO_COUNTY))),
            profile=profile,
            topic_partitions=int(env.get("GONGPEI_TOPIC_PARTITIONS", "8")),
            topic_replication=int(env.get("GONGPEI_TOPIC_REPLICATION",
                                          "1" if profile == "embedded" else "3")),
            kafka_namespace=_namespace(env.get("GONGPEI_KAFKA_NAMESPACE", "")),
            sms_providers=env.get("GONGPEI_SMS_PROVIDERS", ""),
            sms_access_key_id=env.get("GONGPEI_SMS_ACCESS_KEY_ID", ""),
            sms_access_key_secret=env.get("GONGPEI_SMS_ACCESS_KEY_SECRET", ""),
            sms_tencent_secret_id=env.get("GONGPEI_SMS_TENCENT_SECRET_ID", ""),
            sms_tencent_secret_key=env.get("GONGPEI_SMS_TENCENT_SECRET_KEY", ""),
            sms_tencent_app_id=env.get("GONGPEI_SMS_TENCENT_APP_ID", ""),
            sms_receipt_key=env.get("GONGPEI_SMS_RECEIPT_KEY", ""),
            sms_query_after_seconds=float(env.get("GONGPEI_SMS_QUERY_AFTER_SECONDS", "60")),
            sms_concurrency=_positive_int(env, "GONGPEI_SMS_CONCURRENCY", 64),
            sms_qps=env.get("GONGPEI_SMS_QPS", ""),
            pii_public_key=env.get("GONGPEI_PII_PUBLIC_KEY", ""),
            pii_private_keys=env.get("GONGPEI_PII_PRIVATE_KEYS", ""),
            max_event_age_days=_positive_int(env, "GONGPEI_MAX_EVENT_AGE_DAYS", 30),
            trusted_proxies=env.get("GONGPEI_TRUSTED_PROXIES", ""),
            **_limits_from_env(env),
        )
        settings.trusted_proxy_set()  # a mistyped proxy fails at start, by name
        return settings

    def to_env(self) -> dict[str, str]:
        """The environment a child process needs to rebuild these settings (every password
        variable is present, empty if unset, so that none leaks in from the parent's), without the
        private keys that open phone numbers (`pii_private_env`: for the SMS service only)."""
        return {
            "DATABASE_URL": self.database_url,
            "GONGPEI_APP_PASSWORD": self.app_password,
            **{ROLE_PASSWORD_ENV + service.upper(): self.role_passwords.get(service, "")
               for service in SERVICE_ROLES},
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "GONGPEI_COUNTY_FILE": str(self.county_file),
            "GONGPEI_PROFILE": self.profile,
            "GONGPEI_TOPIC_PARTITIONS": str(self.topic_partitions),
            "GONGPEI_TOPIC_REPLICATION": str(self.topic_replication),
            "GONGPEI_KAFKA_NAMESPACE": self.kafka_namespace,
            "GONGPEI_SMS_PROVIDERS": self.sms_providers,
            "GONGPEI_SMS_ACCESS_KEY_ID": self.sms_access_key_id,
            "GONGPEI_SMS_ACCESS_KEY_SECRET": self.sms_access_key_secret,
            "GONGPEI_SMS_TENCENT_SECRET_ID": self.sms_tencent_secret_id,
            "GONGPEI_SMS_TENCENT_SECRET_KEY": self.sms_tencent_secret_key,
            "GONGPEI_SMS_TENCENT_APP_ID": self.sms_tencent_app_id,
            "GONGPEI_SMS_RECEIPT_KEY": self.sms_receipt_key,
            "GONGPEI_SMS_QUERY_AFTER_SECONDS": str(self.sms_query_after_seconds),
            "GONGPEI_SMS_CONCURRENCY": str(self.sms_concurrency),
            "GONGPEI_SMS_QPS": self.sms_qps,
            "GONGPEI_PII_PUBLIC_KEY": self.pii_public_key,
            "GONGPEI_MAX_EVENT_AGE_DAYS": str(self.max_event_age_days),
            "GONGPEI_TRUSTED_PROXIES": self.trusted_proxies,
            # uvicorn rewrites the client address from X-Forwarded-For when the peer is in
            # FORWARDED_ALLOW_IPS, and trusts loopback when it is unset: say exactly whom to trust
            # ("" trusts no one), so a local caller cannot pose as any address it likes.
            "FORWARDED_ALLOW_IPS": self.trusted_proxies,
            **{env: str(getattr(self, name)) for name, (env, _) in _LIMIT_ENV.items()},
        }


def _namespace(value: str) -> str:
    """A Kafka namespace: lower-case letters, digits and dashes (a county code, lower-cased), so
    that it makes legal topic and group names and cannot hide a dot-separated second level."""
    value = value.strip()
    if value and not re.fullmatch(r"[a-z0-9][a-z0-9-]{0,39}", value):
        raise SettingsError("GONGPEI_KAFKA_NAMESPACE: lower-case letters, digits and dashes"
                            f" (up to 40), got {value!r}")
    return value


def _key32(name: str, value: str) -> bytes:
    import base64
    import binascii

    try:
        raw = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise SettingsError(f"{name}: not a base64 X25519 key of 32 bytes")
    return raw


# The capacity warnings' thresholds (infra/capacity.py): parsed like the limits below.
_CAPACITY_ENV: dict[str, tuple[str, type]] = {
    "disk_warn_free_mb": ("GONGPEI_DISK_WARN_FREE_MB", float),
    "broker_memory_warn_percent": ("GONGPEI_BROKER_MEMORY_WARN_PERCENT", float),
}
# Settings field -> (environment variable, type) for the rate limits, the access log and the
# capacity warnings.
_LIMIT_ENV: dict[str, tuple[str, type]] = {
    "upload_burst": ("GONGPEI_UPLOAD_BURST", int),
    "upload_per_minute": ("GONGPEI_UPLOAD_PER_MINUTE", float),
    "upload_events_burst": ("GONGPEI_UPLOAD_EVENTS_BURST", int),
    "upload_events_per_minute": ("GONGPEI_UPLOAD_EVENTS_PER_MINUTE", float),
    "upload_concurrency": ("GONGPEI_UPLOAD_CONCURRENCY", int),
    "read_burst": ("GONGPEI_READ_BURST", int),
    "read_per_minute": ("GONGPEI_READ_PER_MINUTE", float),
    "auth_failure_burst": ("GONGPEI_AUTH_FAILURE_BURST", int),
    "auth_failures_per_minute": ("GONGPEI_AUTH_FAILURES_PER_MINUTE", float),
    "access_log_retention_days": ("GONGPEI_ACCESS_LOG_RETENTION_DAYS", int),
    **_CAPACITY_ENV,
}


def capacity_from_env(env: dict[str, str]) -> dict[str, Any]:
    """The capacity warning thresholds set in `env` (the embedded supervisor builds its other
    settings itself, but takes these from the operator's environment)."""
    return _limits_from_env(env, _CAPACITY_ENV)


def _limits_from_env(env: dict[str, str],
                     table: dict[str, tuple[str, type]] = _LIMIT_ENV) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (var, kind) in table.items():
        if env.get(var, "").strip() == "":
            continue
        try:
            value = kind(env[var].strip())
        except ValueError:
            raise SettingsError(f"{var}: {env[var]!r} is not a {kind.__name__}") from None
        if kind is not str and not (0 < value < math.inf):
            raise SettingsError(f"{var} must be a positive number")
        out[name] = value
    if out.get("access_log_retention_days", 90) < 7:
        raise SettingsError("GONGPEI_ACCESS_LOG_RETENTION_DAYS: at least 7")
    return out
