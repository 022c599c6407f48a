"""Application errors: one kind per HTTP outcome, rendered by a single handler in app.api."""

from __future__ import annotations

from typing import Any


class AppError(Exception):
    """An error the caller can act on; `message` says what to change."""

    status_code = 400
    code = "bad_request"

    def __init__(self, message: str, *, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details or []

    def body(self) -> dict[str, Any]:
        """The one error shape of the API."""
        return {"error": {"code": self.code, "message": self.message, "details": self.details}}


class ValidationFailed(AppError):
    status_code = 422
    code = "validation_error"


class PayloadTooLarge(AppError):
    status_code = 413
    code = "payload_too_large"


class Unauthorized(AppError):
    status_code = 401
    code = "unauthorized"


class Forbidden(AppError):
    status_code = 403
    code = "forbidden"


class RateLimited(AppError):
    """Over a rate limit; `retry_after` (whole seconds) goes into the Retry-After header."""

    status_code = 429
    code = "rate_limited"

    def __init__(
        self, message: str, *, retry_after: int, details: list[dict[str, Any]] | None = None
    ) -> None:
        super().__init__(message, details=details)
        self.retry_after = retry_after


class NotFound(AppError):
    status_code = 404
    code = "not_found"


class Conflict(AppError):
    status_code = 409
    code = "conflict"


class Unavailable(AppError):
    """A dependency (database, cache, model) cannot be used right now."""

    status_code = 503
    code = "unavailable"
