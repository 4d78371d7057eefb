"""One Settings object, read from the environment once, at the composition root."""

from __future__ import annotations

import ipaddress
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

DEMO_COUNTY = Path(__file__).parent / "counties" / "haicheng.toml"
APP_ROLE = "gongpei_app"


class SettingsError(ValueError):
    """A setting is missing or unusable."""


@dataclass(frozen=True)
class Settings:
    """Where the platform's parts are and how they behave."""

    database_url: str            # schema owner: migrations and token administration
    app_password: str            # password of the restricted application role
    kafka_bootstrap_servers: str
    county_file: Path = DEMO_COUNTY
    profile: str = "production"  # "embedded" tunes Kafka clients for the in-memory Tansu broker
    topic_partitions: int = 8
    topic_replication: int = 1
    max_batch_events: int = 500
    max_body_bytes: int = 1 << 20
    worker_batch_size: int = 500
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
    # Proxies whose X-Forwarded-For is believed, comma-separated addresses; empty: none.
    trusted_proxies: str = ""
    access_log_retention_days: int = 90

    @property
    def app_database_url(self) -> str:
        """The owner URL with the restricted role's credentials."""
        parts = urlsplit(self.database_url)
        host = parts.hostname or "127.0.0.1"
        netloc = f"{APP_ROLE}:{quote(self.app_password, safe='')}@{host}"
        if parts.port:
            netloc += f":{parts.port}"
        return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))

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

    def trusted_proxy_set(self) -> frozenset[str]:
        """The trusted proxies' addresses, normalised ('::1', '127.0.0.1')."""
        try:
            return frozenset(str(ipaddress.ip_address(a.strip()))
                             for a in self.trusted_proxies.split(",") if a.strip())
        except ValueError:
            raise SettingsError("GONGPEI_TRUSTED_PROXIES: comma-separated IP addresses") from None

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
        missing = [k for k in ("DATABASE_URL", "KAFKA_BOOTSTRAP_SERVERS", "GONGPEI_APP_PASSWORD")
                   if not env.get(k)]
        if missing:
            raise SettingsError(f"missing settings: {', '.join(missing)}")
        profile = env.get("GONGPEI_PROFILE", "production")
        password = env["GONGPEI_APP_PASSWORD"]
        if profile != "embedded" and (len(password) < 16 or password in {"changeme", "password"}):
            raise SettingsError("GONGPEI_APP_PASSWORD must be a real secret of 16+ characters")
        return cls(
            database_url=env["DATABASE_URL"],
            app_password=password,
            kafka_bootstrap_servers=env["KAFKA_BOOTSTRAP_SERVERS"],
            county_file=Path(env.get("GONGPEI_COUNTY_FILE", str(DEMO_COUNTY))),
            profile=profile,
            topic_partitions=int(env.get("GONGPEI_TOPIC_PARTITIONS", "8")),
            topic_replication=int(env.get("GONGPEI_TOPIC_REPLICATION",
                                          "1" if profile == "embedded" else "3")),
            sms_providers=env.get("GONGPEI_SMS_PROVIDERS", ""),
            sms_access_key_id=env.get("GONGPEI_SMS_ACCESS_KEY_ID", ""),
            sms_access_key_secret=env.get("GONGPEI_SMS_ACCESS_KEY_SECRET", ""),
            sms_tencent_secret_id=env.get("GONGPEI_SMS_TENCENT_SECRET_ID", ""),
            sms_tencent_secret_key=env.get("GONGPEI_SMS_TENCENT_SECRET_KEY", ""),
            sms_tencent_app_id=env.get("GONGPEI_SMS_TENCENT_APP_ID", ""),
            sms_receipt_key=env.get("GONGPEI_SMS_RECEIPT_KEY", ""),
            sms_query_after_seconds=float(env.get("GONGPEI_SMS_QUERY_AFTER_SECONDS", "60")),
            **_limits_from_env(env),
        )

    def to_env(self) -> dict[str, str]:
        """The environment a child process needs to rebuild these settings."""
        return {
            "DATABASE_URL": self.database_url,
            "GONGPEI_APP_PASSWORD": self.app_password,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "GONGPEI_COUNTY_FILE": str(self.county_file),
            "GONGPEI_PROFILE": self.profile,
            "GONGPEI_TOPIC_PARTITIONS": str(self.topic_partitions),
            "GONGPEI_TOPIC_REPLICATION": str(self.topic_replication),
            "GONGPEI_SMS_PROVIDERS": self.sms_providers,
            "GONGPEI_SMS_ACCESS_KEY_ID": self.sms_access_key_id,
            "GONGPEI_SMS_ACCESS_KEY_SECRET": self.sms_access_key_secret,
            "GONGPEI_SMS_TENCENT_SECRET_ID": self.sms_tencent_secret_id,
            "GONGPEI_SMS_TENCENT_SECRET_KEY": self.sms_tencent_secret_key,
            "GONGPEI_SMS_TENCENT_APP_ID": self.sms_tencent_app_id,
            "GONGPEI_SMS_RECEIPT_KEY": self.sms_receipt_key,
            "GONGPEI_SMS_QUERY_AFTER_SECONDS": str(self.sms_query_after_seconds),
            **{env: str(getattr(self, name)) for name, (env, _) in _LIMIT_ENV.items()},
        }


# Settings field -> (environment variable, type) for the rate limits and the access log.
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
    "trusted_proxies": ("GONGPEI_TRUSTED_PROXIES", str),
    "access_log_retention_days": ("GONGPEI_ACCESS_LOG_RETENTION_DAYS", int),
}


def _limits_from_env(env: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (var, kind) in _LIMIT_ENV.items():
        if env.get(var, "").strip() == "":
            continue
        try:
            value = kind(env[var].strip())
        except ValueError:
            raise SettingsError(f"{var}: {env[var]!r} is not a {kind.__name__}") from None
        if kind is not str and not (0 < value < math.inf):
            raise SettingsError(f"{var} must be a positive number")
        out[name] = value
    if "trusted_proxies" in out:
        Settings(database_url="", app_password="", kafka_bootstrap_servers="",
                 trusted_proxies=str(out["trusted_proxies"])).trusted_proxy_set()
    if out.get("access_log_retention_days", 90) < 7:
        raise SettingsError("GONGPEI_ACCESS_LOG_RETENTION_DAYS: at least 7")
    return out
