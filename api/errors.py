"""One error shape for every 4xx/5xx: {"error": {"code", "message", "path"?}}; never a bare 500."""

from __future__ import annotations

import logging

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
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


JSON_MEDIA_TYPES = ("application/json",)


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
        return JSONResponse(
            error_body("invalid_request", str(first.get("msg")), _loc_to_path(tuple(first.get("loc", ())))),
            422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed",
                413: "body_too_large"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), exc.status_code)

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
