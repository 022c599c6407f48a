"""Errors as typed exceptions carrying the server's error code and message (the contract's error shape:
`{"error": {"code", "message", "details"}}`)."""

from __future__ import annotations

from typing import Any


class RecoError(Exception):
    """Any failure of a Reco call. `status` is the HTTP status (None when no answer came), `code` the
    server's error code (`validation_error`, `unauthorized`, ...), `message` what to change."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        details: list[dict[str, Any]] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details or []
        self.retry_after = retry_after


class RecoConnectionError(RecoError):
    """No answer: the server could not be reached, or it did not answer within the timeout."""


class BadRequest(RecoError):
    """400/413/422: the request is malformed; `message` names the field."""


class Unauthorized(RecoError):
    """401: missing, unknown or expired key (or user token)."""


class Forbidden(RecoError):
    """403: the key lacks the scope, or may not name this user / origin."""


class NotFound(RecoError):
    """404: no such user, item, job or model version."""


class Conflict(RecoError):
    """409: the request conflicts with the current state."""


class RateLimited(RecoError):
    """429: too many requests; `retry_after` says how many seconds to wait."""


class Unavailable(RecoError):
    """503 (or 502/504): a dependency of the server is down; `message` says which."""


class ServerError(RecoError):
    """Another 5xx."""


_BY_STATUS: dict[int, type[RecoError]] = {
    400: BadRequest,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: BadRequest,
    422: BadRequest,
    429: RateLimited,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_for(status: int, body: Any, retry_after: float | None) -> RecoError:
    """The typed exception for an error answer."""
    code, message, details = None, f"HTTP {status}", None
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        err = body["error"]
        code = err.get("code")
        message = str(err.get("message") or message)
        details = err.get("details") if isinstance(err.get("details"), list) else None
    elif isinstance(body, str) and body:
        message = body[:500]
    kind = _BY_STATUS.get(status, ServerError if status >= 500 else RecoError)
    return kind(message, status=status, code=code, details=details, retry_after=retry_after)
