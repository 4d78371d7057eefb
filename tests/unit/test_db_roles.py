"""Each service's database role and password, from the settings (no database needed)."""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

import pytest

from infra.settings import SERVICE_ROLES, Settings, SettingsError, derive_role_password

ENV = {"DATABASE_URL": "postgresql://owner:owner-secret@db.example:5433/gongpei",
       "KAFKA_BOOTSTRAP_SERVERS": "k:9092", "GONGPEI_APP_PASSWORD": "one-secret-of-24-chars!!"}


def _user_password(url: str) -> tuple[str | None, str | None]:
    parts = urlsplit(url)
    return parts.username, unquote(parts.password or "")


def test_given_one_app_password_then_each_service_connects_as_its_own_role_with_its_own_password(
) -> None:
    s = Settings.from_env(ENV)
    seen = {}
    for service, role in SERVICE_ROLES.items():
        url = s.database_url_for(service)
        user, password = _user_password(url)
        assert user == role
        assert password == derive_role_password(ENV["GONGPEI_APP_PASSWORD"], role)
        assert urlsplit(url).hostname == "db.example" and urlsplit(url).port == 5433
        assert urlsplit(url).path == "/gongpei"
        seen[service] = password
    # Distinct, long, and none of them is the master secret or another role's.
    assert len(set(seen.values())) == len(SERVICE_ROLES)
    assert all(len(p) >= 40 and ENV["GONGPEI_APP_PASSWORD"] not in p for p in seen.values())
    assert s.database_url_for("owner") == ENV["DATABASE_URL"]


def test_given_a_service_that_holds_only_its_own_password_then_it_cannot_connect_as_another() -> None:
    full = Settings.from_env(ENV)
    api_only = Settings.from_env({**full.for_service("api").to_env(), "GONGPEI_PROFILE": "production"})
    assert api_only.database_url_for("api") == full.database_url_for("api")
    assert "owner-secret" not in api_only.database_url and "owner" not in api_only.database_url
    assert api_only.app_password == ""
    for other in set(SERVICE_ROLES) - {"api"}:
        with pytest.raises(SettingsError, match=f"GONGPEI_DB_PASSWORD_{other.upper()}"):
            api_only.database_url_for(other)
    gateway = full.for_service(None).to_env()  # the SMS gateways need no database at all
    assert gateway["GONGPEI_APP_PASSWORD"] == "" and not any(
        v for k, v in gateway.items() if k.startswith("GONGPEI_DB_PASSWORD_"))


def test_given_a_role_password_of_its_own_then_it_wins_over_the_derived_one() -> None:
    s = Settings.from_env({**ENV, "GONGPEI_DB_PASSWORD_LEDGER": "the-ledger's-own-secret-123"})
    assert _user_password(s.database_url_for("ledger")) == ("gongpei_ledger",
                                                            "the-ledger's-own-secret-123")
    assert _user_password(s.database_url_for("relay"))[1] == derive_role_password(
        ENV["GONGPEI_APP_PASSWORD"], "gongpei_relay")


def test_given_placeholder_or_missing_role_passwords_then_settings_refuse() -> None:
    no_master = {k: v for k, v in ENV.items() if k != "GONGPEI_APP_PASSWORD"}
    with pytest.raises(SettingsError, match="GONGPEI_APP_PASSWORD"):
        Settings.from_env(no_master)
    with pytest.raises(SettingsError, match="GONGPEI_DB_PASSWORD_API must be a real secret"):
        Settings.from_env({**no_master, "GONGPEI_DB_PASSWORD_API": "changeme"})
    with pytest.raises(SettingsError, match="no database role"):
        Settings.from_env(ENV).database_url_for("gateway")
