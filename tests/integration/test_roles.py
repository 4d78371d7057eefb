"""Least privilege in the database, tried as an attacker holding one service's database
credentials would try it: each service's role, connected as itself (never the embedded
superuser, which bypasses grants and row-level security), asking for what it must not have.

Every attempt runs in a transaction that is rolled back, so a test that found a hole leaves
nothing changed behind it."""

from __future__ import annotations

import asyncio
import hashlib
from functools import partial
from typing import Any

import asyncpg
import httpx
import pytest

from domain.county import County
from entrypoints.platform import Platform
from infra.db import migrate
from infra.settings import LEGACY_APP_ROLE, SERVICE_ROLES
from tests.conftest import bearer, db_fetch, wait_for

DENIED = "denied"

# Tables the API reads without row-level security, and why (docs/security/roles.md): the journal
# only through its id column (and a content hash), and three tables that belong to no brand and
# hold no personal data.
API_READS_WITHOUT_RLS = {
    "journal": "columns event_id (and content_hash) only, for deduplication",
    "ledger_periods": "a period and whether it is closed: the same for every brand",
    "sla_runs": "fixed runs carry every brand's parcels; no brand column",
    "public_lookup_limits": "the public lookup's buckets: an address or a waybill, and a time",
    "waybill_owners": "which brand owns a waybill, read across brands by the ingest transaction"
                      " to refuse a competitor's claim (never served)",
    "access_log": "who called what (token, route template, status, address): the admins' route",
    "ingest_conflicts": "refused uploads for the county manager's route only (phone masked)",
    "pii_periods": "a month's public key and hash key, to seal phones at ingest (never the"
                   " month's private key: column grants)",
}
FORGED_APPEND = ("INSERT INTO journal (event_id, type, schema_version, brand, partition_key,"
                 " occurred_at, recorded_at, device_id, body) VALUES ('e', 't', 1, 'ZTO', 'k',"
                 " now(), now(), 'd', '{}')")
# The API may read these phone-derived columns and no other column with "phone" in its name.
API_PHONE_COLUMNS = {"phone_masked", "phone_last4", "phone_key_id"}  # the last: a key's id


def _try(platform: Platform, service: str, sql: str, *args: Any,
         scope: str | None = None, token_hash: str | None = None) -> list[asyncpg.Record] | str:
    """Run `sql` as `service`'s role in a transaction that is always rolled back: its rows, or
    DENIED when PostgreSQL refuses the privilege. Any other error fails the test (a typo in an
    attack must not pass for a refusal)."""
    async def go() -> list[asyncpg.Record] | str:
        assert platform.settings is not None
        conn = await asyncpg.connect(platform.settings.database_url_for(service))
        tx = conn.transaction()
        await tx.start()
        try:
            if scope is not None:
                await conn.execute("SELECT set_config('gongpei.brand_scope', $1, true)", scope)
            if token_hash is not None:
                await conn.execute("SELECT set_config('gongpei.token_hash', $1, true)", token_hash)
            return await conn.fetch(sql, *args)
        except asyncpg.InsufficientPrivilegeError:
            return DENIED
        finally:
            await tx.rollback()
            await conn.close()

    return asyncio.run(go())


def _rows(platform: Platform, service: str, sql: str, *args: Any, scope: str | None = None,
          token_hash: str | None = None) -> list[asyncpg.Record]:
    """Like `_try`, for what the role may do: its rows (a refusal fails the test)."""
    rows = _try(platform, service, sql, *args, scope=scope, token_hash=token_hash)
    assert not isinstance(rows, str), (service, sql, rows)
    return rows


def _count(platform: Platform, table: str) -> int:
    return int(db_fetch(platform, f"SELECT count(*) AS n FROM {table}")[0]["n"])


@pytest.fixture(scope="module")
def populated(platform: Platform, client: httpx.Client, tokens: dict[str, str],
              county: County) -> None:
    """Parcels of several brands stored at village points, so that every table an attacker
    could want to read has rows in it: journal, tracking, SLA, ledger, SMS, tokens."""
    from tests.integration.test_spine import _ingest, _lifecycle

    _, regs, scans = _lifecycle(county, seed=91, parcels=12, steps=6)
    _ingest(client, tokens, regs, scans)
    for table in ("parcels", "tracking_events", "sla_legs", "settlement_events", "sms_recipients",
                  "sms_arrivals", "sms_messages", "consumer_offsets", "relay_cursor"):
        wait_for(partial(_count, platform, table), 20.0, f"rows in {table}")


# ------------------------------------------------------------------------------- the roles


def test_given_every_service_role_then_none_is_superuser_bypasses_rls_or_can_make_roles(
        platform: Platform) -> None:
    rows = db_fetch(platform, "SELECT rolname, rolsuper, rolbypassrls, rolcreaterole, rolcreatedb,"
                              " rolreplication, rolcanlogin FROM pg_roles WHERE rolname = ANY($1)",
                    list(SERVICE_ROLES.values()))
    assert {r["rolname"] for r in rows} == set(SERVICE_ROLES.values())
    for r in rows:
        assert r["rolcanlogin"], r["rolname"]
        assert not any(r[k] for k in ("rolsuper", "rolbypassrls", "rolcreaterole", "rolcreatedb",
                                      "rolreplication")), dict(r)
    # Nor the owner of anything (an owner may alter, drop, and switch row-level security off).
    assert db_fetch(platform, "SELECT relname FROM pg_class c JOIN pg_roles r ON r.oid = c.relowner"
                              " WHERE r.rolname = ANY($1)", list(SERVICE_ROLES.values())) == []
    # Nor a member of any other role, whose privileges it could borrow with SET ROLE.
    assert db_fetch(platform, "SELECT 1 FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member"
                              " WHERE r.rolname = ANY($1)", list(SERVICE_ROLES.values())) == []
    for service in SERVICE_ROLES:
        assert _try(platform, service, "SET ROLE postgres") == DENIED
        assert _try(platform, service, "SELECT rolpassword FROM pg_authid") == DENIED


def test_given_the_old_shared_role_then_it_can_neither_log_in_nor_read_anything(
        platform: Platform) -> None:
    legacy = db_fetch(platform, "SELECT rolcanlogin FROM pg_roles WHERE rolname = $1",
                      LEGACY_APP_ROLE)
    assert legacy == [] or not legacy[0]["rolcanlogin"]
    if legacy:
        assert db_fetch(platform, "SELECT table_name FROM information_schema.role_table_grants"
                                  " WHERE grantee = $1", LEGACY_APP_ROLE) == []


def test_given_any_service_role_when_it_alters_truncates_or_drops_then_only_the_owner_could(
        platform: Platform, populated: None) -> None:
    attacks = [
        "TRUNCATE journal", "TRUNCATE parcels", "TRUNCATE sla_legs", "TRUNCATE ledger_lines",
        "TRUNCATE sms_messages", "TRUNCATE tokens",
        "ALTER TABLE parcels DISABLE ROW LEVEL SECURITY",
        "ALTER TABLE parcels NO FORCE ROW LEVEL SECURITY",
        "DROP POLICY parcels_by_brand ON parcels",
        "ALTER TABLE journal ADD COLUMN note text",
        "ALTER TABLE ledger_lines DISABLE TRIGGER ledger_lines_guard",
        "DROP TABLE sms_attempts",
        "CREATE TABLE public.loot (x text)",
        "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
        "CREATE SCHEMA loot",
    ]
    for service in SERVICE_ROLES:
        for sql in attacks:
            assert _try(platform, service, sql) == DENIED, (service, sql)
    # Nor can it pass on what it has: no privilege is held WITH GRANT OPTION.
    assert db_fetch(platform, "SELECT grantee, table_name FROM information_schema.column_privileges"
                              " WHERE grantee = ANY($1) AND is_grantable = 'YES' UNION ALL"
                              " SELECT grantee, table_name FROM information_schema.table_privileges"
                              " WHERE grantee = ANY($1) AND is_grantable = 'YES'",
                    list(SERVICE_ROLES.values())) == []


# ------------------------------------------------------------------------------ gongpei_api


def test_given_the_api_role_when_it_reads_journal_bodies_then_permission_is_denied(
        platform: Platform, populated: None) -> None:
    for sql in ("SELECT body FROM journal", "SELECT * FROM journal",
                "SELECT partition_key, brand, type FROM journal",
                "SELECT event_id FROM journal WHERE body::text LIKE '%1%'"):
        assert _try(platform, "api", sql) == DENIED, sql
        assert _try(platform, "api", sql, scope="*") == DENIED, sql  # a scope opens nothing here
    # What deduplication needs (ON CONFLICT (event_id) … RETURNING event_id) is all it has.
    assert _try(platform, "api", "SELECT event_id FROM journal LIMIT 1") != DENIED


def test_given_the_api_role_when_it_changes_or_removes_journal_rows_then_permission_is_denied(
        platform: Platform, populated: None) -> None:
    for sql in ("UPDATE journal SET brand = 'ZTO'", "DELETE FROM journal",
                "UPDATE journal SET event_id = event_id || 'x' WHERE seq = 1",
                FORGED_APPEND + " ON CONFLICT (event_id) DO UPDATE SET brand = 'YTO'"):
        assert _try(platform, "api", sql) == DENIED, sql


def test_given_the_api_role_with_no_tenant_set_then_every_brand_table_answers_zero_rows(
        platform: Platform, populated: None) -> None:
    for table in ("parcels", "ledger_lines", "settlement_events", "sla_legs", "sla_daily",
                  "sms_message_parcels", "sms_arrivals"):
        assert _count(platform, table) > 0 or table in ("ledger_lines", "sla_daily"), table
        assert _try(platform, "api", f"SELECT * FROM {table}") == [], table
    assert _try(platform, "api", "SELECT sms_id, state FROM sms_messages") == []
    assert _try(platform, "api", "SELECT waybill, consent FROM sms_recipients") == []
    # And with a brand's scope, only that brand's rows.
    brands = {r["brand"] for r in _rows(platform, "api", "SELECT brand FROM parcels", scope="ZTO")}
    assert brands <= {"ZTO"}
    assert {r["brand"] for r in _rows(platform, "api", "SELECT brand FROM sms_recipients",
                                      scope="ZTO")} <= {"ZTO"}


def test_given_the_api_role_when_it_reads_phone_columns_then_permission_is_denied(
        platform: Platform, populated: None) -> None:
    # The SMS tables hold a phone only sealed (and a reference to group by): the API reads neither.
    for sql in ("SELECT sealed_phone FROM sms_recipients", "SELECT * FROM sms_recipients",
                "SELECT sealed_phone FROM sms_messages", "SELECT * FROM sms_messages",
                "SELECT count(*) FROM sms_messages WHERE phone_ref LIKE 'a%'",  # counts too
                "SELECT phone_ref FROM sms_digests", "SELECT body FROM tracking_events",
                "SELECT body FROM sla_events", "SELECT * FROM sms_attempts",
                "SELECT sealed_key FROM pii_keys", "SELECT private_key FROM pii_periods"):
        assert _try(platform, "api", sql, scope="*") == DENIED, sql
    # And no column with "phone" in its name, in any table, but the masked form and last four.
    readable = db_fetch(platform, "SELECT table_name, column_name FROM"
                                  " information_schema.column_privileges WHERE grantee = $1"
                                  " AND privilege_type = 'SELECT' AND column_name LIKE '%phone%'",
                        SERVICE_ROLES["api"])
    assert {r["column_name"] for r in readable} <= API_PHONE_COLUMNS, [dict(r) for r in readable]


def test_given_the_api_role_then_every_table_it_reads_has_row_level_security_or_a_reason(
        platform: Platform) -> None:
    """Catches a table granted to the API later without a thought for tenancy."""
    rows = db_fetch(platform, "SELECT DISTINCT c.relname, c.relrowsecurity FROM"
                              " information_schema.column_privileges p JOIN pg_class c"
                              " ON c.relname = p.table_name AND c.relnamespace = 'public'::regnamespace"
                              " WHERE p.grantee = $1 AND p.privilege_type = 'SELECT'",
                    SERVICE_ROLES["api"])
    without = {r["relname"] for r in rows if not r["relrowsecurity"]}
    assert without <= set(API_READS_WITHOUT_RLS), without - set(API_READS_WITHOUT_RLS)
    journal_columns = {r["column_name"] for r in db_fetch(
        platform, "SELECT column_name FROM information_schema.column_privileges WHERE grantee = $1"
                  " AND table_name = 'journal' AND privilege_type = 'SELECT'", SERVICE_ROLES["api"])}
    assert journal_columns <= {"event_id", "content_hash"}, journal_columns


def test_given_the_api_role_then_it_sees_only_the_token_it_is_presented(
        platform: Platform, populated: None, tokens: dict[str, str]) -> None:
    assert _count(platform, "tokens") > 5
    for sql in ("SELECT * FROM tokens", "SELECT name, role, brands FROM tokens"):
        assert _try(platform, "api", sql) == [], sql
        assert _try(platform, "api", sql, scope="*") == [], sql
    presented = hashlib.sha256(tokens["ZTO-brand"].encode()).hexdigest()
    rows = _rows(platform, "api", "SELECT name FROM tokens", token_hash=presented)
    assert [r["name"] for r in rows] == ["ZTO-brand"]
    forged = "INSERT INTO tokens (token_hash, kind, role, name) VALUES ('\\x00', 'user', 'admin', 'me')"
    for sql in (forged, "UPDATE tokens SET brands = '{}'", "DELETE FROM tokens"):
        assert _try(platform, "api", sql, token_hash=presented) == DENIED, sql


def test_given_the_api_role_when_it_writes_read_models_then_permission_is_denied(
        platform: Platform, populated: None) -> None:
    for sql in ("UPDATE parcels SET brand = 'ZTO'", "DELETE FROM parcels",
                ("INSERT INTO tracking_events (event_id, waybill, brand, occurred_at, body)"
                 " VALUES ('x', 'w', 'ZTO', now(), '{}')"),
                "UPDATE ledger_periods SET closed_seq = NULL", "DELETE FROM ledger_lines",
                "UPDATE sms_messages SET state = 'requested'", "UPDATE sms_recipients SET consent = true",
                "UPDATE consumer_offsets SET next_offset = 0", "UPDATE relay_cursor SET seq = 0"):
        assert _try(platform, "api", sql, scope="*") == DENIED, sql


# ---------------------------------------------------------------------------- the followers


def test_given_the_relay_role_then_it_reads_the_journal_and_nothing_else(
        platform: Platform, populated: None) -> None:
    assert len(_rows(platform, "relay", "SELECT body FROM journal LIMIT 3")) == 3
    for sql in ("SELECT * FROM parcels", "SELECT * FROM tokens", "SELECT * FROM tracking_events",
                "SELECT * FROM sms_recipients", "SELECT * FROM ledger_lines",
                "SELECT * FROM consumer_offsets", "DELETE FROM consumer_offsets",
                FORGED_APPEND, "UPDATE journal SET body = '{}'"):
        assert _try(platform, "relay", sql, scope="*") == DENIED, sql
    # Sending consumers back to offset 0 after the broker lost data is its one other write.
    assert _try(platform, "relay", "UPDATE consumer_offsets SET next_offset = 0,"
                                   " updated_at = now()") == []


def test_given_the_worker_role_then_it_cannot_read_the_journal_or_tokens(
        platform: Platform, populated: None) -> None:
    for sql in ("SELECT body FROM journal", "SELECT event_id FROM journal", "SELECT * FROM tokens",
                "SELECT * FROM sms_recipients", "SELECT * FROM sms_messages",
                "SELECT * FROM ledger_lines", "SELECT * FROM relay_cursor",
                "DELETE FROM parcels", "DELETE FROM tracking_events"):
        assert _try(platform, "worker", sql, scope="*") == DENIED, sql
    assert _rows(platform, "worker", "SELECT count(*) AS n FROM parcels", scope="*")[0]["n"] > 0


def test_given_the_ledger_role_then_it_reads_the_journal_and_keeps_only_the_books(
        platform: Platform, populated: None) -> None:
    assert _try(platform, "ledger", "SELECT body FROM journal LIMIT 1") != DENIED
    for sql in ("SELECT * FROM parcels", "SELECT * FROM tokens", "SELECT * FROM sms_recipients",
                "SELECT * FROM tracking_events", "DELETE FROM consumer_offsets",
                FORGED_APPEND, "DELETE FROM settlement_events"):
        assert _try(platform, "ledger", sql, scope="*") == DENIED, sql
    # One cursor table (014): the ledger sees and moves its own position, no other projection's.
    own = _try(platform, "ledger", "SELECT * FROM consumer_offsets")
    assert own != DENIED and {r["consumer"] for r in own} == {"ledger"}
    assert _try(platform, "ledger", "UPDATE consumer_offsets SET next_offset = 0"
                " WHERE consumer <> 'ledger' RETURNING consumer") == []
    assert _try(platform, "ledger", "INSERT INTO consumer_offsets VALUES ('tracking', 'x', 0, 0)"
                " RETURNING consumer") == DENIED


def test_given_the_worker_role_then_it_neither_sees_nor_moves_a_journal_followers_position(
        platform: Platform, populated: None) -> None:
    assert _try(platform, "worker", "SELECT * FROM consumer_offsets WHERE consumer = 'ledger'") == []
    assert _try(platform, "worker", "UPDATE consumer_offsets SET next_offset = 0"
                " WHERE consumer = 'ledger' RETURNING consumer") == []
    assert _try(platform, "worker", "INSERT INTO consumer_offsets VALUES ('ledger', 'journal', 0, 1)"
                " RETURNING consumer") == DENIED


def test_given_the_sms_role_then_it_keeps_the_sms_state_and_nothing_of_the_others(
        platform: Platform, populated: None) -> None:
    for sql in ("SELECT sealed_phone FROM sms_recipients LIMIT 1",
                "SELECT sealed_key FROM pii_keys LIMIT 1"):
        assert _try(platform, "sms", sql, scope="*") != DENIED, sql
    for sql in ("DELETE FROM pii_keys", "UPDATE pii_periods SET private_key = NULL", "SELECT * FROM parcels", "SELECT * FROM tokens", "SELECT * FROM tracking_events",
                "SELECT * FROM ledger_lines", "SELECT * FROM sla_legs",
                "UPDATE journal SET body = '{}'", "DELETE FROM journal", "DELETE FROM sms_attempts"):
        assert _try(platform, "sms", sql, scope="*") == DENIED, sql


# ---------------------------------------------------------------------------------- migrate


def test_given_a_privilege_granted_by_hand_when_migrate_runs_then_it_is_taken_away(
        platform: Platform, populated: None) -> None:
    """grants.sql is the whole truth: migrate revokes what it does not say, in the same
    transaction as it grants what it does (the services keep working meanwhile)."""
    assert platform.settings is not None
    db_fetch(platform, "GRANT SELECT ON journal, tracking_events TO gongpei_api")
    assert _try(platform, "api", "SELECT body FROM journal LIMIT 1") != DENIED  # the hole is real
    asyncio.run(migrate(platform.settings.database_url, platform.settings.app_password))
    assert _try(platform, "api", "SELECT body FROM journal LIMIT 1") == DENIED
    assert _try(platform, "api", "SELECT body FROM tracking_events", scope="*") == DENIED
    assert _try(platform, "api", "SELECT event_id FROM journal LIMIT 1") != DENIED


def test_given_the_journal_gains_a_content_hash_then_migrate_lets_the_api_read_it_and_no_more(
        platform: Platform, populated: None) -> None:
    """Conflicting resends are told apart by a content hash the API must read for the ids it
    is sent; grants.sql grants that column as soon as a schema file adds it."""
    assert platform.settings is not None
    exists = db_fetch(platform, "SELECT 1 FROM information_schema.columns WHERE table_name ="
                                " 'journal' AND column_name = 'content_hash'")
    if not exists:
        db_fetch(platform, "ALTER TABLE journal ADD COLUMN content_hash bytea")
    try:
        asyncio.run(migrate(platform.settings.database_url, platform.settings.app_password))
        assert _try(platform, "api", "SELECT event_id, content_hash FROM journal LIMIT 1") != DENIED
        assert _try(platform, "api", "SELECT content_hash, body FROM journal LIMIT 1") == DENIED
        assert _try(platform, "api", "UPDATE journal SET content_hash = NULL") == DENIED
    finally:
        if not exists:
            db_fetch(platform, "ALTER TABLE journal DROP COLUMN content_hash")


def test_given_each_service_process_then_it_holds_only_its_own_role_password(
        platform: Platform) -> None:
    """The supervisor hands each child its own role's password and the owner's URL without
    credentials, as a production deployment should: a dump of the API's environment opens
    no other role."""
    assert platform.settings is not None
    for service in SERVICE_ROLES:
        env = platform.children[service].env
        assert env["GONGPEI_APP_PASSWORD"] == ""
        assert env[f"GONGPEI_DB_PASSWORD_{service.upper()}"] == platform.settings.role_password(
            service)
        others = [k for k, v in env.items()
                  if k.startswith("GONGPEI_DB_PASSWORD_") and v and k != f"GONGPEI_DB_PASSWORD_{service.upper()}"]
        assert others == [], (service, others)
        assert "@" not in env["DATABASE_URL"]


def _scram_verifies(stored: str, password: str) -> bool:
    """Whether PostgreSQL's SCRAM-SHA-256 verifier `stored` was made from `password`."""
    import base64
    import hmac

    method, rest = stored.split("$", 1)
    iterations_salt, keys = rest.split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return method == "SCRAM-SHA-256" and hashlib.sha256(client_key).digest() == stored_key and \
        hmac.new(salted, b"Server Key", hashlib.sha256).digest() == server_key


def test_given_the_one_secret_then_each_role_logs_in_with_its_own_derived_password(
        platform: Platform) -> None:
    """The embedded server trusts loopback, so a login proves nothing here: PostgreSQL's stored
    verifier is checked instead, and `gongpei role-password` prints what it was made from."""
    from tests.integration.test_operations import gongpei

    assert platform.settings is not None
    stored = {r["rolname"]: r["rolpassword"] for r in db_fetch(
        platform, "SELECT rolname, rolpassword FROM pg_authid WHERE rolname = ANY($1)",
        list(SERVICE_ROLES.values()))}
    for service, role in SERVICE_ROLES.items():
        password = platform.settings.role_password(service)
        assert _scram_verifies(stored[role], password), role
        for other in set(SERVICE_ROLES.values()) - {role}:
            assert not _scram_verifies(stored[other], password), (role, other)
    printed = gongpei(platform, "role-password", "ledger")
    assert printed.returncode == 0, printed.stderr
    assert printed.stdout.strip() == "GONGPEI_DB_PASSWORD_LEDGER=" + platform.settings.role_password(
        "ledger")


def test_given_a_brand_token_then_the_api_still_answers_through_its_narrow_role(
        client: httpx.Client, tokens: dict[str, str], populated: None) -> None:
    """The API's routes that touch tokens, parcels, the ledger, SLA and SMS keep working."""
    for path, token in (("/v1/parcels?limit=3", "ZTO-brand"), ("/v1/sms/summary", "ZTO-brand"),
                        ("/v1/sms/no-consent", "manager"), ("/v1/sla/runs", "manager"),
                        ("/v1/sms/stats", "manager")):
        r = client.get(path, headers=bearer(tokens[token]))
        assert r.status_code == 200, (path, r.text)
