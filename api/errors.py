"""One error shape for every 4xx/5xx: {"error": {"code", "message", "path"?}}; never a bare 500."""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from domain.redact import mask_digit_runs

log = logging.getLogger("gongpei.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, path: str | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.path = status, code, message, path
        self.headers = headers


def error_body(code: str, message: str, path: str | None = None) -> dict[str, object]:
    """The error shape; message and path may echo the request, so phone-like runs are masked."""
    err: dict[str, object] = {"code": code, "message": mask_digit_runs(message)}
    if path is not None:
        err["path"] = mask_digit_runs(path)
    return {"error": err}


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable reason", examples=["invalid_request"])
    message: str = Field(description="for people; phone-like digit runs in it are masked")
    path: str | None = Field(None, description="JSON path of the offending parameter or field",
                             examples=["$.limit"])


class ErrorBody(BaseModel):
    """Every 4xx and 5xx answer has this shape."""

    error: ErrorDetail


_RETRY_AFTER = {"Retry-After": {"description": "Seconds to wait, at least 1",
                                "schema": {"type": "integer", "minimum": 1}}}
# What each status means on this API, said once; a route names the ones it can really answer.
ERROR_MEANINGS: dict[int, str] = {
    400: "The body is not valid JSON (`invalid_json`)",
    401: "No token, or an unknown, revoked or expired one (`unauthenticated`, `invalid_token`,"
         " `token_expired`)",
    403: "The token's role (or brand scope) may not do this (`forbidden_role`)",
    404: "Not there, or not visible to this token (`not_found`)",
    409: "In conflict with the current state",
    413: "The body is over the upload limit (`body_too_large`), whatever the route",
    415: "The body is not sent as `Content-Type: application/json` (`unsupported_media_type`)",
    422: "A parameter or body field is not what the schema says (`invalid_request`,"
         " `invalid_value`, …); `path` names it",
    429: "Over a rate limit (`rate_limited`, `too_many_concurrent_uploads`,"
         " `too_many_failed_authentications`, `too_many_attempts`); retry after `Retry-After`",
    503: "Storage is unavailable (`unavailable`), or its disk is full (`storage_full`); nothing"
         " was changed, retry after `Retry-After`",
}
# A route behind a token that reads the database can answer these whatever it does.
TOKEN_ROUTE = (401, 403, 413, 422, 429, 503)


def documented(*statuses: int, notes: dict[int, str] | None = None
               ) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of the error statuses a route can answer, in ErrorBody's shape;
    `notes` says what a status means on that route where the general meaning is not enough."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in sorted(set(statuses) | set(notes or {})):
        entry: dict[str, Any] = {"model": ErrorBody,
                                 "description": (notes or {}).get(status, ERROR_MEANINGS[status])}
        if status in (429, 503):
            entry["headers"] = _RETRY_AFTER
        out[status] = entry
    return out


def token_route(*more: int, notes: dict[int, str] | None = None, parameters: bool = True
                ) -> dict[int | str, dict[str, Any]]:
    """`documented` for a route behind a token: TOKEN_ROUTE and `more` (without 422 for a route
    that takes no parameter and no body: nothing there can fail validation)."""
    statuses = [s for s in (*TOKEN_ROUTE, *more) if parameters or s != 422]
    return documented(*statuses, notes=notes)


JSON_MEDIA_TYPES = ("application/json",)
# A full disk needs an operator: devices are asked to come back in half a minute, not in two
# seconds (they keep their batches; nothing was saved).
STORAGE_FULL_RETRY_AFTER = 30


def require_json(request: Request) -> None:
    """A dependency for JSON POST endpoints: any other (or no) Content-Type is 415."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in JSON_MEDIA_TYPES:
        raise ApiError(415, "unsupported_media_type",
                       "send the body as JSON with 'Content-Type: application/json'",
                       headers={"Accept-Post": "application/json"})


def _loc_to_path(loc: tuple[object, ...]) -> str:
    path = "$"
    for part in loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}"
    return path


class BodyLimitMiddleware:
    """413 `body_too_large` for a request body over `limit` bytes, declared or streamed, in this
    module's error shape: the body is read (at most `limit` bytes of it) before any handler runs,
    then handed on whole."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers", ())).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await self._refuse(scope, receive, send)
            return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                await self.app(scope, _replay([message], receive), send)
                return
            body += message.get("body", b"")
            if len(body) > self.limit:
                await self._refuse(scope, receive, send)
                return
            if not message.get("more_body", False):
                break
        whole: Message = {"type": "http.request", "body": bytes(body), "more_body": False}
        await self.app(scope, _replay([whole], receive), send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(error_body(
            "body_too_large", f"the body exceeds the limit of {self.limit // 1024} KiB"), 413,
            headers={"Connection": "close"})
        await response(scope, receive, send)


def _replay(first: list[Message], receive: Receive) -> Receive:
    async def replayed() -> Message:
        return first.pop(0) if first else await receive()

    return replayed


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message, exc.path), exc.status,
                              headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        if first.get("type") == "json_invalid":  # not JSON at all: 400, as at ingest
            return JSONResponse(error_body("invalid_json", "the body is not valid JSON", "$"), 400)
        return JSONResponse(
            error_body("invalid_request", str(first.get("msg")), _loc_to_path(tuple(first.get("loc", ())))),
            422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(exc.status_code, "http_error")
        # A 405 names the methods the path has (RFC 9110): Starlette puts them in `Allow`.
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code,
                            headers=exc.headers)

    @app.exception_handler(asyncpg.exceptions.DataError)
    @app.exception_handler(OverflowError)
    async def _bad_value(_: Request, exc: Exception) -> JSONResponse:
        # A value the checks let through but the database or the calendar cannot hold (a NUL
        # byte, a date out of range): the request's fault, said without echoing it.
        log.info("refused a value: %s", type(exc).__name__)
        return JSONResponse(error_body("invalid_value", "a value in the request is out of range"
                                       " or not representable"), 422)

    @app.exception_handler(asyncpg.PostgresConnectionError)
    @app.exception_handler(asyncpg.exceptions.OperatorInterventionError)
    @app.exception_handler(asyncpg.exceptions.InterfaceError)
    @app.exception_handler(asyncpg.exceptions._base.InternalClientError)
    @app.exception_handler(OSError)
    async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
        log.warning("database unavailable: %s", type(exc).__name__)
        return JSONResponse(error_body("unavailable", "storage is unavailable; retry shortly"),
                              503, headers={"Retry-After": "2"})

    @app.exception_handler(asyncpg.exceptions.InsufficientResourcesError)
    async def _no_room(_: Request, exc: Exception) -> JSONResponse:
        # PostgreSQL's class 53: its disk is full (it could not extend a table or write its log),
        # or it is out of memory or connections. The transaction was rolled back, so nothing of
        # the request was kept: a 503 the device retries, never a 500 (docs/reliability.md).
        if isinstance(exc, asyncpg.exceptions.DiskFullError):
            log.warning("database disk full: the request was refused, nothing kept")
            return JSONResponse(error_body("storage_full", "the platform's storage is full; nothing"
                                           " was saved, retry later"), 503,
                                headers={"Retry-After": str(STORAGE_FULL_RETRY_AFTER)})
        log.warning("database out of resources: %s", type(exc).__name__)
        return JSONResponse(error_body("unavailable", "storage is unavailable; retry shortly"),
                            503, headers={"Retry-After": "2"})
