"""One error shape for every 4xx/5xx: `{"error": {"code", "message", "details"}}`."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.api.deps import BodySizeLimit
from app.api.responses import FastJSONResponse
from app.errors import AppError, RateLimited, Unavailable, ValidationFailed
from app.validation import friendly, summary

log = logging.getLogger(__name__)

_HTTP_CODES = {
    404: "not_found",
    405: "method_not_allowed",
    401: "unauthorized",
    403: "forbidden",
    413: "payload_too_large",
}


def error_response(err: AppError, headers: dict[str, str] | None = None) -> FastJSONResponse:
    """Render an AppError."""
    return FastJSONResponse(err.body(), status_code=err.status_code, headers=headers)


def install(app: FastAPI) -> None:
    """Register the handlers, and the body size cap whose streamed 413 they render."""
    app.add_middleware(BodySizeLimit)

    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> FastJSONResponse:
        headers = {"Retry-After": "1"} if exc.status_code == 503 else None
        if exc.status_code == 401:
            headers = {"WWW-Authenticate": "Bearer"}
        if isinstance(exc, RateLimited):
            headers = {"Retry-After": str(exc.retry_after)}
        return error_response(exc, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> FastJSONResponse:
        details = []
        for e in exc.errors():
            if e.get("type") == "json_invalid":  # FastAPI locates it at ("body", offset): it is the body
                message = (e.get("ctx") or {}).get("error", "")
                details.append({"loc": ["body"], "msg": f"not valid JSON: {message}".rstrip(": ")})
                continue
            # FastAPI prefixes the source ("query", "path", "body"): keep it, it says where
            loc = [p for p in e["loc"] if p != "body"] or ["body"]
            details.append({"loc": loc, "msg": friendly(dict(e))})
        return error_response(ValidationFailed(summary(details), details=details))

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> FastJSONResponse:
        err = AppError(str(exc.detail))
        err.status_code = exc.status_code
        err.code = _HTTP_CODES.get(exc.status_code, "http_error")
        return error_response(err, dict(exc.headers or {}))

    @app.exception_handler(OperationalError)
    @app.exception_handler(InterfaceError)
    @app.exception_handler(PoolTimeout)
    async def _db_down(_: Request, exc: Exception) -> FastJSONResponse:
        log.warning("database unavailable: %s", str(exc).splitlines()[0] if str(exc) else exc)
        return error_response(
            Unavailable(
                "database is unavailable; retry the request (event ids make retries safe)",
                details=[{"dependency": "database"}],
            ),
            {"Retry-After": "1"},
        )

    @app.exception_handler(DBAPIError)
    async def _db_error(_: Request, exc: DBAPIError) -> FastJSONResponse:
        if exc.connection_invalidated:
            return await _db_down(_, exc)
        log.exception("database error")
        err = AppError("internal error while storing; nothing of this request was stored")
        err.status_code, err.code = 500, "internal"
        return error_response(err)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> FastJSONResponse:
        log.exception("unhandled error")
        err = AppError("internal error")
        err.status_code, err.code = 500, "internal"
        return error_response(err)
