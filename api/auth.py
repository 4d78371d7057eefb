"""Bearer tokens: random secrets handed out once; only their SHA-256 is stored."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

import asyncpg

ROLES = ("scanner", "brand-system", "brand", "manager", "finance", "finance-admin", "admin")
DEVICE_ROLES = ("scanner",)
ALL_BRANDS_ROLES = ("manager", "finance-admin", "admin")
TOKEN_PREFIX = "gp_"


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


def hash_token(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


async def lookup(conn: asyncpg.Connection, token: str) -> Principal | None:
    digest = hash_token(token)
    async with conn.transaction():
        # Row-level security shows the API's role only the row of the token presented.
        await conn.execute("SELECT set_config('gongpei.token_hash', $1, true)", digest.hex())
        row = await conn.fetchrow(
            "SELECT id, kind, role, name, brands, node_id FROM tokens WHERE token_hash = $1"
            " AND revoked_at IS NULL", digest)
    if row is None:
        return None
    return Principal(row["id"], row["kind"], row["role"], row["name"], frozenset(row["brands"]),
                     row["node_id"])


async def create(conn: asyncpg.Connection, *, role: str, name: str, brands: list[str],
                 node_id: str | None = None) -> tuple[int, str]:
    """Create a token; returns (id, the secret), which is shown once and never stored. A scanner
    may be bound to the node it is installed at (a village point's keeper records consent)."""
    if role not in ROLES:
        raise ValueError(f"unknown role {role!r}; one of {', '.join(ROLES)}")
    if node_id is not None and role != "scanner":
        raise ValueError("only a scanner is installed at a node (--node)")
    kind = "device" if role in DEVICE_ROLES else "user"
    if role in ("scanner", "brand-system", "brand") and not brands:
        raise ValueError(f"a {role} token needs at least one --brand")
    token = new_token()
    token_id = await conn.fetchval(
        "INSERT INTO tokens (token_hash, kind, role, name, brands, node_id)"
        " VALUES ($1, $2, $3, $4, $5, $6) RETURNING id",
        hash_token(token), kind, role, name, brands, node_id,
    )
    return int(token_id), token


async def revoke(conn: asyncpg.Connection, token_id: int) -> bool:
    done = await conn.execute(
        "UPDATE tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL", token_id)
    return done.endswith(" 1")
