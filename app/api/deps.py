"""Dependencies: the app state, authentication with scopes, request bodies within limits."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from fastapi import Request
from starlette.concurrency import run_in_threadpool

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


async def read_json(request: Request, max_bytes: int) -> Any:
    """The body parsed as JSON, refusing bodies over `max_bytes` before reading them whole.

    NaN and Infinity literals are accepted here so that validation can name the field that holds them.
    """
    length = request.headers.get("content-length")
    if length and length.isdigit() and int(length) > max_bytes:
        raise PayloadTooLarge(
            f"body is {int(length)} bytes; the limit is {max_bytes} (RECO_MAX_BODY_BYTES): send smaller batches"
        )
    chunks = bytearray()
    async for chunk in request.stream():
        chunks += chunk
        if len(chunks) > max_bytes:
            raise PayloadTooLarge(
                f"body exceeds {max_bytes} bytes (RECO_MAX_BODY_BYTES): send smaller batches"
            )
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
