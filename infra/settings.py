"""One Settings object, read from the environment once, at the composition root."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

DEMO_COUNTY = Path(__file__).parent / "counties" / "haicheng.toml"
APP_ROLE = "gongpei_app"


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
    app_password: str            # password of the restricted application role
    kafka_bootstrap_servers: str
    county_file: Path = DEMO_COUNTY
    profile: str = "production"  # "embedded" tunes Kafka clients for the in-memory Tansu broker
    topic_partitions: int = 8
    topic_replication: int = 1
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
            max_event_age_days=_positive_int(env, "GONGPEI_MAX_EVENT_AGE_DAYS", 30),
            trusted_proxies=env.get("GONGPEI_TRUSTED_PROXIES", ""),
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
            "GONGPEI_MAX_EVENT_AGE_DAYS": str(self.max_event_age_days),
            "GONGPEI_TRUSTED_PROXIES": self.trusted_proxies,
            # uvicorn rewrites the client address from X-Forwarded-For when the peer is in
            # FORWARDED_ALLOW_IPS, and trusts loopback when it is unset: say exactly whom to trust
            # ("" trusts no one), so a local caller cannot pose as any address it likes.
            "FORWARDED_ALLOW_IPS": self.trusted_proxies,
        }
