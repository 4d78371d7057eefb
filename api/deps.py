"""Request dependencies: the pool, the county, and who is calling."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import auth
from api.errors import ApiError
from domain.county import County

_bearer = HTTPBearer(auto_error=False, description="A device or user token from `gongpei token create`")


def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool  # type: ignore[no-any-return]


def get_county(request: Request) -> County:
    return request.app.state.county  # type: ignore[no-any-return]


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
CountyDep = Annotated[County, Depends(get_county)]


async def get_principal(
    pool: PoolDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> auth.Principal:
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise ApiError(401, "unauthenticated", "send 'Authorization: Bearer <token>'")
    async with pool.acquire() as conn:
        principal = await auth.lookup(conn, creds.credentials)
    if principal is None:
        raise ApiError(401, "invalid_token", "the token is unknown or revoked")
    return principal


PrincipalDep = Annotated[auth.Principal, Depends(get_principal)]


def require_role(principal: auth.Principal, *roles: str) -> None:
    if principal.role not in roles:
        raise ApiError(403, "forbidden_role",
                       f"role '{principal.role}' may not do this; needs one of: {', '.join(roles)}")
