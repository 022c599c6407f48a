"""Dependencies: the app state, authentication with scopes, request bodies within limits."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.state import AppState
from app.auth.keys import allows
from app.errors import Forbidden, PayloadTooLarge, Unauthorized, ValidationFailed


def get_state(request: Request) -> AppState:
    """The process's AppState (set by the lifespan)."""
    return request.state.app


def require(scope: str) -> Callable[[Request], Awaitable[frozenset[str]]]:
    """A dependency that admits a request whose bearer key has `scope` (or admin)."""

    async def check(request: Request) -> frozenset[str]:
        state = get_state(request)
        header = request.headers.get("authorization", "")
        kind, _, key = header.partition(" ")
        if kind.lower() != "bearer" or not key.strip():
            raise Unauthorized(
                "missing API key: send `Authorization: Bearer <key>` (create one with `reco keys create`)"
            )
        key = key.strip()
        known, scopes = state.keys.cached(key)
        if not known:
            scopes = await run_in_threadpool(state.keys.lookup, key)
        if scopes is None:
            raise Unauthorized("unknown or revoked API key")
        if not allows(scopes, scope):
            raise Forbidden(f"this key lacks the `{scope}` scope (it has: {', '.join(sorted(scopes))})")
        return scopes

    return check


def _too_long(length: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"body is {length} bytes; the limit is {max_bytes} (RECO_MAX_BODY_BYTES): send smaller batches"
    )


def _too_long_streamed(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"body exceeds {max_bytes} bytes (RECO_MAX_BODY_BYTES): send smaller batches")


class BodyTooLarge(HTTPException):
    """A body over the cap, seen while reading it (rendered as `payload_too_large`)."""

    def __init__(self, message: str) -> None:
        super().__init__(status_code=413, detail=message)


class BodySizeLimit:
    """Refuse bodies over RECO_MAX_BODY_BYTES on every route, also chunked ones without Content-Length.

    Pure ASGI: `receive` raises BodyTooLarge when the declared length is over the cap, or as soon as a
    streamed body passes it; the AppError handler renders the 413. Nothing is buffered here.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope.get("state", {}).get("app") if scope["type"] == "http" else None
        if state is None:
            await self.app(scope, receive, send)
            return
        max_bytes = state.settings.max_body_bytes
        declared = next((int(v) for k, v in scope["headers"] if k == b"content-length" and v.isdigit()), None)
        seen = 0

        async def limited() -> Message:
            # raised while the route reads its body; FastAPI re-raises an HTTPException from body parsing
            # (any other error would become a 400) and the one error handler renders it as a 413
            nonlocal seen
            if declared is not None and declared > max_bytes:
                raise BodyTooLarge(_too_long(declared, max_bytes).message)
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > max_bytes:
                    raise BodyTooLarge(_too_long_streamed(max_bytes).message)
            return message

        await self.app(scope, limited, send)


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body parsed as JSON, refusing bodies over `max_bytes` before reading them whole.

    NaN and Infinity literals are accepted here so that validation can name the field that holds them.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise _too_long(int(length), max_bytes)
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > max_bytes:
            raise _too_long_streamed(max_bytes)
    if not chunks:
        raise ValidationFailed(
            "body: a JSON body is required", details=[{"loc": ["body"], "msg": "is required"}]
        )
    try:
        return orjson.loads(chunks)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(chunks)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ValidationFailed(
            f"body: not valid JSON{where}: {exc}",
            details=[{"loc": ["body"], "msg": f"not valid JSON{where}"}],
        ) from None


def batch_list(body: Any, field: str, max_batch: int) -> list[Any]:
    """`body[field]` as a list of at most `max_batch` entries, or a 4xx naming the problem."""
    if not isinstance(body, dict):
        raise ValidationFailed(
            f"body: must be an object with a `{field}` list",
            details=[{"loc": ["body"], "msg": "must be an object"}],
        )
    value = body.get(field)
    if value is None:
        raise ValidationFailed(f"{field}: is required", details=[{"loc": [field], "msg": "is required"}])
    if not isinstance(value, list):
        raise ValidationFailed(
            f"{field}: must be a list", details=[{"loc": [field], "msg": "must be a list"}]
        )
    if len(value) > max_batch:
        raise PayloadTooLarge(
            f"{field}: {len(value)} entries; at most {max_batch} a request: split the batch",
            details=[{"loc": [field], "msg": f"at most {max_batch} entries"}],
        )
    return value
