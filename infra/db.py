"""Schema migrations and connection pools."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import asyncpg
import orjson

from infra.settings import LEGACY_APP_ROLE, SERVICE_ROLES, derive_role_password

log = logging.getLogger("gongpei.db")
SCHEMA_DIR = Path(__file__).parent / "schema"

# Errors that mean "the database is not there right now" (down, restarting, shutting down), as
# opposed to errors in what we asked of it: retry the first kind, never the second.
TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,  # 57P01 admin shutdown, 57P03 starting up, …
    asyncpg.exceptions.InterfaceError,
    # Raised when the pool resets a connection that died mid-transaction ("cannot switch to
    # state …; another operation is in progress"): the outage again, seen from the client side.
    asyncpg.exceptions._base.InternalClientError,
    # Two workers briefly holding one partition during a rebalance may wait on each other's rows:
    # not the event's fault, so the batch is retried whole rather than set aside.
    asyncpg.exceptions.DeadlockDetectedError,
    # Class 53: the server's disk or memory is full, or its connections are used up. The event
    # is not at fault: retried (with backoff) until an operator frees space, never set aside.
    asyncpg.exceptions.InsufficientResourcesError,
    OSError,
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out through orjson: the hot path never touches the stdlib json module.
    await conn.set_type_codec(
        "jsonb", schema="pg_catalog", format="text",
        encoder=lambda v: orjson.dumps(v).decode(), decoder=orjson.loads,
    )


async def discard(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Close a pooled connection and hand it back, whatever state an outage left it in.

    Closing drops its LISTEN and session advisory locks with it; asyncpg may already have
    detached a connection that died, in which case there is nothing left to do."""
    try:
        conn.terminate()
        await pool.release(conn)
    except asyncpg.exceptions.InterfaceError:
        pass


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """A pool whose connections speak jsonb through orjson, with the session in UTC (a day cut
    from a timestamptz then never depends on the server's configured zone)."""
    pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size,
                                     init=_init_connection, server_settings={"timezone": "UTC"})
    assert pool is not None
    return pool


async def migrate(owner_dsn: str, app_password: str = "", *,
                  role_passwords: Mapping[str, str] | None = None) -> list[str]:
    """Create or update the service roles, apply pending schema files in order, then grant each
    role what infra/schema/grants.sql says (and nothing else); returns the files applied.

    Role passwords are `role_passwords` (by service name), else derived from `app_password`."""
    passwords = {service: (role_passwords or {}).get(service)
                 or (derive_role_password(app_password, role) if app_password else "")
                 for service, role in SERVICE_ROLES.items()}
    if not all(passwords.values()):
        raise ValueError("migrate needs GONGPEI_APP_PASSWORD (or every role's own password)")
    conn = await asyncpg.connect(owner_dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock(7710001)")  # one migrator (projections.locks.Lock.MIGRATE)
        for service, role in SERVICE_ROLES.items():
            await _ensure_role(conn, role, passwords[service])
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(name text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["name"] for r in await conn.fetch("SELECT name FROM schema_migrations")}
        applied = []
        for path in sorted(SCHEMA_DIR.glob("[0-9][0-9][0-9]_*.sql")):
            if path.name in done:
                continue
            async with conn.transaction():
                await conn.execute(path.read_text())
                await conn.execute("INSERT INTO schema_migrations (name) VALUES ($1)", path.name)
            applied.append(path.name)
            log.info("applied %s", path.name)
        # Grants are re-applied every time, in one transaction, from nothing: the file is the
        # whole truth (a privilege removed from it is removed from the role), a re-created role
        # gets its privileges back, and no service sees a moment without them.
        async with conn.transaction():
            roles = ", ".join([*SERVICE_ROLES.values(), *await _legacy(conn)])
            await conn.execute(f"REVOKE ALL ON ALL TABLES IN SCHEMA public FROM {roles};"
                               f" REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM {roles}")
            await conn.execute((SCHEMA_DIR / "grants.sql").read_text())
            if await _legacy(conn):
                # The one role every service used to share: no login, no privileges left.
                await conn.execute(f"ALTER ROLE {LEGACY_APP_ROLE} NOLOGIN")
        if await holds_clear_phones(conn):
            raise MigrationError(
                "this database's journal holds phone numbers in clear, written before phones were"
                " sealed in events; it cannot be brought forward in place (the journal is never"
                " rewritten). For the embedded platform, move the state folder aside"
                " (mv .state .state.old) and start again; see docs/security.md")
        return applied
    finally:
        await conn.close()


async def holds_clear_phones(conn: asyncpg.Connection) -> bool:
    """Whether the journal has a manifest from before phones were sealed (a clear string)."""
    return bool(await conn.fetchval(
        "SELECT 1 FROM journal WHERE type = 'parcel.registered'"
        " AND jsonb_typeof(body->'payload'->'recipient_phone') = 'string' LIMIT 1"))


class MigrationError(RuntimeError):
    """The database cannot be brought to this version; the message says why and what to do."""


async def _ensure_role(conn: asyncpg.Connection, role: str, password: str) -> None:
    exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
    verb = "ALTER" if exists else "CREATE"
    # A role name and password cannot be bound parameters; the password is quoted by PG itself.
    quoted = await conn.fetchval("SELECT quote_literal($1)", password)
    await conn.execute(
        f"{verb} ROLE {role} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE NOREPLICATION"
        f" PASSWORD {quoted}"
    )


async def _legacy(conn: asyncpg.Connection) -> list[str]:
    found = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", LEGACY_APP_ROLE)
    return [LEGACY_APP_ROLE] if found else []
