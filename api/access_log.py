"""Who called what: one access-log row per request, kept in memory and written to PostgreSQL in
batches by a background task, together with the tokens' last-used times.

A row holds the token's id, name and role (never the secret), the method, the route *template*
(`/v1/parcels/{waybill}`, never the concrete path: a waybill or anything else in a path may be
personal), the status, the duration and the client address. Never the query string, never a
body."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
from prometheus_client import Counter
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.auth import hash_token
from api.errors import error_body
from api.limits import UPLOAD, UPLOAD_ROUTES, Limits, client_address, retry_after
from infra.db import TRANSIENT_DB_ERRORS
from infra.settings import IPNetwork

log = logging.getLogger("gongpei.access")

ACCESS_LOG_DROPPED = Counter(
    "gongpei_access_log_dropped", "Access-log rows dropped because the write buffer was full")
ACCESS_LOG_WRITTEN = Counter("gongpei_access_log_written", "Access-log rows written to PostgreSQL")
COLUMNS = ("at", "token_id", "token_name", "role", "method", "route", "status", "duration_ms",
           "client", "requests")
UNMATCHED = "(no route)"  # a 404 for a path no route knows: the path itself is not kept
LAST_USED_EVERY = 60.0    # seconds: a token's last_used_at is written at most this often
# The upload route has no path parameters, so its template is its path: it can be recognised
# before routing.
UPLOAD_PATHS = UPLOAD_ROUTES
UPLOAD_ROUTE = next(iter(UPLOAD_ROUTES))[1]


@dataclass(frozen=True)
class Entry:
    at: datetime
    token_id: int | None
    token_name: str | None
    role: str | None
    method: str
    route: str
    status: int
    duration_ms: float
    client: str


class LastUsed:
    """Which tokens' last_used_at to write: at most once per `every` seconds per token."""

    def __init__(self, every: float = LAST_USED_EVERY, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.every, self._clock = every, clock
        self._written: dict[int, float] = {}
        self.pending: dict[int, datetime] = {}

    def touch(self, token_id: int, at: datetime) -> None:
        now = self._clock()
        last = self._written.get(token_id)
        if last is not None and now - last < self.every:
            return
        self._written[token_id] = now
        self.pending[token_id] = at

    def take(self) -> dict[int, datetime]:
        out, self.pending = self.pending, {}
        return out


class AccessLog:
    """The in-memory buffer and its writer. `record` never waits and never touches the database;
    when the buffer is full (the database is away, or a flood) rows are dropped and counted."""

    def __init__(self, *, max_pending: int = 20_000, flush_every: float = 1.0,
                 retention_days: int = 90) -> None:
        self.max_pending, self.flush_every, self.retention_days = (
            max_pending, flush_every, retention_days)
        self._rows: list[list[Any]] = []
        # Refusals (429) of one caller, route and address within one flush share a row that
        # counts them: a flood of refused requests cannot flood the table.
        self._refused: dict[tuple[Any, ...], list[Any]] = {}
        self.last_used = LastUsed()
        self._task: asyncio.Task[None] | None = None
        self._pruned_at = -math.inf  # prune soon after start, then hourly

    def record(self, entry: Entry) -> None:
        key = (entry.token_id, entry.client, entry.method, entry.route) if (
            entry.status == 429) else None
        if key is not None and key in self._refused:
            self._refused[key][-1] += 1
            return
        if len(self._rows) >= self.max_pending:
            ACCESS_LOG_DROPPED.inc()
            return
        row = [entry.at, entry.token_id, entry.token_name, entry.role, entry.method, entry.route,
               entry.status, entry.duration_ms, entry.client, 1]
        self._rows.append(row)
        if key is not None:
            self._refused[key] = row
        if entry.token_id is not None:
            self.last_used.touch(entry.token_id, entry.at)

    def buffered(self) -> list[dict[str, Any]]:
        """The rows waiting to be written, as the table will hold them."""
        return [dict(zip(COLUMNS, row)) for row in self._rows]

    async def flush(self, pool: asyncpg.Pool) -> int:
        """Write what is buffered: one COPY for the rows, one UPDATE for the last-used times."""
        rows, self._rows, self._refused = self._rows, [], {}
        used = self.last_used.take()
        if not rows and not used:
            return 0
        try:
            async with pool.acquire() as conn, conn.transaction():
                if rows:
                    await conn.copy_records_to_table("access_log", records=rows, columns=COLUMNS)
                if used:
                    await conn.execute("SELECT touch_tokens($1::bigint[], $2::timestamptz[])",
                                       list(used), list(used.values()))
        except TRANSIENT_DB_ERRORS:
            # The database is away: put them back (within the bound), try at the next tick.
            kept = (rows + self._rows)[: self.max_pending]
            ACCESS_LOG_DROPPED.inc(len(rows) + len(self._rows) - len(kept))
            self._rows = kept
            for token_id, at in used.items():
                self.last_used.pending.setdefault(token_id, at)
            raise
        except asyncpg.PostgresError:
            ACCESS_LOG_DROPPED.inc(len(rows))  # refused for what it holds: retrying cannot help
            raise
        ACCESS_LOG_WRITTEN.inc(len(rows))
        return len(rows)

    async def prune(self, pool: asyncpg.Pool) -> int:
        async with pool.acquire() as conn:
            return int(await conn.fetchval("SELECT prune_access_log($1)", self.retention_days))

    async def run(self, pool: asyncpg.Pool) -> None:
        """Flush every `flush_every` seconds; prune expired rows once an hour."""
        while True:
            await asyncio.sleep(self.flush_every)
            try:
                await self.flush(pool)
                if time.monotonic() - self._pruned_at > 3600:
                    self._pruned_at = time.monotonic()
                    pruned = await self.prune(pool)
                    if pruned:
                        log.info("pruned %d access-log rows older than %d days", pruned,
                                 self.retention_days)
            except (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError) as exc:
                # Away, or refused a batch: keep buffering (within the bound), try again.
                log.warning("access log not written: %s", type(exc).__name__)

    def start(self, pool: asyncpg.Pool) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(pool))

    async def stop(self, pool: asyncpg.Pool) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        try:
            await self.flush(pool)
        except (*TRANSIENT_DB_ERRORS, asyncpg.PostgresError) as exc:
            log.warning("access log not written at shutdown: %s", type(exc).__name__)


def _header(scope: Scope, name: bytes) -> str | None:
    return next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == name), None)


class AccessLogMiddleware:
    """Times each HTTP request and records it once it has ended; frees the request's upload slot,
    and refunds its rate-limit charge when the server failed it (5xx)."""

    def __init__(self, app: ASGIApp, access_log: AccessLog, limits: Limits,
                 trusted_proxies: frozenset[IPNetwork]) -> None:
        self.app, self.access_log, self.limits, self.trusted = (
            app, access_log, limits, trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        scope.setdefault("state", {})
        if (scope["method"], scope["path"]) in UPLOAD_PATHS:
            refusal = self._refuse_early(scope)
            if refusal is not None:
                await refusal(scope, receive, send)
                self._record(scope, 429, (time.perf_counter() - started) * 1000.0, UPLOAD_ROUTE)
                return

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self._record(scope, status, (time.perf_counter() - started) * 1000.0)

    def _refuse_early(self, scope: Scope) -> JSONResponse | None:
        """A 429 for an upload the limiter would refuse anyway, answered before routing,
        dependencies or the body: a flood costs this process as little as it can."""
        # Read as the dependency reads them (first header of a name; the token unstripped), so
        # that this check and the authoritative one see the same token.
        scheme, _, token = (_header(scope, b"authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            return None
        token_hash = hash_token(token)
        peer = scope.get("client")
        address = client_address(peer[0] if peer else None, _header(scope, b"x-forwarded-for"),
                                 self.trusted)
        refusal = self.limits.precheck(token_hash, address, UPLOAD)
        if refusal is None:
            return None
        scope["state"]["principal"] = self.limits.known(token_hash)  # names it in the log only
        wait = retry_after(refusal.seconds)
        return JSONResponse(error_body(refusal.code, f"{refusal.message}; retry after {wait} s"),
                            429, headers={"Retry-After": wait})

    def _record(self, scope: Scope, status: int, duration_ms: float,
                route_template: str | None = None) -> None:
        state = scope.get("state") or {}
        principal = state.get("principal")
        charged = state.get("rate_limit_charge")
        if charged is not None:
            self.limits.release(*charged)
            if status >= 500:
                self.limits.refund(*charged)
        route = scope.get("route")
        peer = scope.get("client")
        forwarded = _header(scope, b"x-forwarded-for")
        self.access_log.record(Entry(
            at=datetime.now(UTC),
            token_id=principal.token_id if principal else None,
            token_name=principal.name if principal else None,
            role=principal.role if principal else None,
            method=scope["method"],
            route=route_template or getattr(route, "path", None) or UNMATCHED,
            status=status,
            duration_ms=round(duration_ms, 3),
            client=client_address(peer[0] if peer else None, forwarded, self.trusted),
        ))
