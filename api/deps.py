"""Request dependencies: the pool, the county, and who is calling (within its rate limits)."""

from __future__ import annotations

from typing import Annotated

import asyncpg
from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api import auth
from api.errors import ApiError
from api.limits import READ, UPLOAD, UPLOAD_ROUTES, Limits, Refusal, client_address, retry_after
from domain.county import County

_bearer = HTTPBearer(auto_error=False, description="A device or user token from `gongpei token create`")


async def get_pool(request: Request) -> asyncpg.Pool:
    return request.app.state.pool  # type: ignore[no-any-return]


async def get_county(request: Request) -> County:
    return request.app.state.county  # type: ignore[no-any-return]


PoolDep = Annotated[asyncpg.Pool, Depends(get_pool)]
CountyDep = Annotated[County, Depends(get_county)]


def _too_many(refusal: Refusal) -> ApiError:
    wait = retry_after(refusal.seconds)
    return ApiError(429, refusal.code, f"{refusal.message}; retry after {wait} s",
                    headers={"Retry-After": wait})


def request_client(request: Request) -> str:
    """The client's address, through trusted proxies (GONGPEI_TRUSTED_PROXIES) only."""
    return client_address(request.client.host if request.client else None,
                          request.headers.get("x-forwarded-for"),
                          request.app.state.trusted_proxies)


async def get_principal(
    request: Request,
    pool: PoolDep,
    creds: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> auth.Principal:
    """The caller, after its rate limits: a known token over its limit, or an unknown one from
    an address that has failed too often, is refused before any database work."""
    if creds is None or creds.scheme.lower() != "bearer" or not creds.credentials:
        raise ApiError(401, "unauthenticated", "send 'Authorization: Bearer <token>'")
    limits: Limits = request.app.state.limits
    route = request.scope.get("route")
    kind = UPLOAD if (request.method, getattr(route, "path", "")) in UPLOAD_ROUTES else READ
    token_hash = auth.hash_token(creds.credentials)
    known: auth.Principal | None = limits.known(token_hash)
    address = request_client(request)
    if known is not None:
        request.state.principal = known  # names the caller in the access log, authorises nothing
    refusal = (limits.check_address(address) if known is None
               else limits.take(known.token_id, kind))
    if refusal is not None:
        raise _too_many(refusal)
    if known is not None:
        request.state.rate_limit_charge = (known.token_id, kind)  # refunded if we fail it (5xx)
    try:
        async with pool.acquire() as conn:
            principal = await auth.lookup(conn, token_hash)
    except auth.TokenExpired:
        request.state.principal = None
        limits.forget(token_hash)
        limits.failed(address)
        raise ApiError(401, "token_expired", "the token has expired; ask for a new one") from None
    if principal is None:
        request.state.principal = None
        limits.forget(token_hash)
        limits.failed(address)
        raise ApiError(401, "invalid_token", "the token is unknown or revoked")
    request.state.principal = principal
    if known is None:
        limits.remember(token_hash, principal)
        refusal = limits.take(principal.token_id, kind)
        if refusal is not None:
            raise _too_many(refusal)
        request.state.rate_limit_charge = (principal.token_id, kind)
    return principal


PrincipalDep = Annotated[auth.Principal, Depends(get_principal)]


def require_role(principal: auth.Principal, *roles: str) -> None:
    if principal.role not in roles:
        raise ApiError(403, "forbidden_role",
                       f"role '{principal.role}' may not do this; needs one of: {', '.join(roles)}")
