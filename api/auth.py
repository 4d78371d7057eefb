"""Bearer tokens: random secrets handed out once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

import asyncpg

ROLES = ("scanner", "brand-system", "brand", "manager", "finance", "finance-admin", "admin")
DEVICE_ROLES = ("scanner",)
ALL_BRANDS_ROLES = ("manager", "finance-admin", "admin")
TOKEN_PREFIX = "gp_"
# How long a token lives unless `--expires-in` says otherwise. People's tokens with the widest
# reach rotate monthly, other people's quarterly; devices and brand systems are installed once and
# re-keyed at their yearly maintenance. `--expires-in never` is possible, and visible in the list.
DEFAULT_EXPIRY = {
    "admin": timedelta(days=30), "finance-admin": timedelta(days=30),
    "manager": timedelta(days=90), "finance": timedelta(days=90), "brand": timedelta(days=90),
    "scanner": timedelta(days=365), "brand-system": timedelta(days=365),
}
MAX_EXPIRY = timedelta(days=3650)
_DURATION = re.compile(r"^([1-9][0-9]{0,6})([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@dataclass(frozen=True)
class Principal:
    """Who is calling: a device or a user, its role and the brands it may act for."""

    token_id: int
    kind: str
    role: str
    name: str
    brands: frozenset[str]
    node_id: str | None = None   # the node a scanner is installed at, if it is bound to one

    @property
    def device_id(self) -> str:
        return self.name if self.kind == "device" else f"user:{self.name}"

    @property
    def brand_scope(self) -> str:
        """The row-level-security scope: '*' or a comma-separated list of brands."""
        if self.role in ALL_BRANDS_ROLES or (self.role == "finance" and not self.brands):
            return "*"  # the operator's finance sees every brand; a brand's finance only its own
        return ",".join(sorted(self.brands))


def parse_expires_in(text: str) -> timedelta | Literal["never"]:
    """'30m', '12h', '90d', '2w' or 'never' (no expiry)."""
    text = text.strip().lower()
    if text == "never":
        return "never"
    m = _DURATION.match(text)
    if m is None:
        raise ValueError(f"--expires-in {text!r}: use a number and m, h, d or w (30m, 12h, 90d),"
                         " or 'never'")
    span = timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    if span > MAX_EXPIRY:
        raise ValueError(f"--expires-in {text!r}: at most {MAX_EXPIRY.days} days")
    return span


class TokenExpired(Exception):
    """The token exists but its time is up."""


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def lookup(conn: asyncpg.Connection, token: str | bytes) -> Principal | None:
    """The principal of an active token, None for an unknown or revoked one; raises
    TokenExpired for one past its expiry (the database's clock decides)."""
    digest = token if isinstance(token, bytes) else hash_token(token)
    async with conn.transaction():
        # Row-level security shows the API's role only the row of the token presented.
        await conn.execute("SELECT set_config('gongpei.token_hash', $1, true)", digest.hex())
        row = await conn.fetchrow(
            "SELECT id, kind, role, name, brands, node_id, expires_at <= now() AS expired"
            " FROM tokens WHERE token_hash = $1 AND revoked_at IS NULL", digest)
    if row is None:
        return None
    if row["expired"]:
        raise TokenExpired(row["id"])
    return Principal(row["id"], row["kind"], row["role"], row["name"], frozenset(row["brands"]),
                     row["node_id"])


async def create(conn: asyncpg.Connection, *, role: str, name: str, brands: list[str],
                 expires_in: timedelta | Literal["never"] | None = None,
                 node_id: str | None = None) -> tuple[int, str]:
    """Create a token; returns (id, the secret), which is shown once and never stored.
    `expires_in` None: the role's DEFAULT_EXPIRY; "never": no expiry. A scanner may be bound to
    the node it is installed at (a village point's keeper records consent)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if node_id is not None and role != "scanner":
        raise ValueError("only a scanner is installed at a node (--node)")
    kind = "device" if role in DEVICE_ROLES else "user"
    if role in ("scanner", "brand-system", "brand") and not brands:
        raise ValueError(f"a {role} token needs at least one --brand")
    span = DEFAULT_EXPIRY[role] if expires_in is None else expires_in
    if span != "never" and not timedelta(0) < span <= MAX_EXPIRY:
        raise ValueError(f"a token lives between a minute and {MAX_EXPIRY.days} days")
    token = new_token()
    token_id = await conn.fetchval(
        "INSERT INTO tokens (token_hash, kind, role, name, brands, node_id, expires_at)"
        " VALUES ($1, $2, $3, $4, $5, $6, now() + $7::interval) RETURNING id",
        hash_token(token), kind, role, name, brands, node_id, None if span == "never" else span,
    )
    return int(token_id), token


async def listing(conn: asyncpg.Connection) -> list[asyncpg.Record]:
    """Every token with its state, expiry and last use (never a secret, nor its hash)."""
    return await conn.fetch(
        "SELECT id, kind, role, name, brands, created_at, expires_at, last_used_at, revoked_at,"
        " CASE WHEN revoked_at IS NOT NULL THEN 'revoked'"
        "      WHEN expires_at <= now() THEN 'expired' ELSE 'active' END AS state"
        " FROM tokens ORDER BY id")


async def revoke(conn: asyncpg.Connection, token_id: int) -> bool:
    done = await conn.execute(
        "UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id)
    return done.endswith(" 1")
