"""Dependencies: the app state, authentication with scopes, request bodies within limits."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.state import AppState
from app.auth.keys import allows
from app.errors import Forbidden, PayloadTooLarge, Unauthorized, ValidationFailed


def get_state(request: Request) -> AppState:
    """The process's AppState (set by the lifespan)."""
    return request.state.app


BEARER = HTTPBearer(auto_error=False, description="an API key from `reco keys create`")


class ErrorDetail(BaseModel):
    code: str
    message: str = Field(description="`field: what to change`")
    details: list[dict[str, Any]]


class ErrorOut(BaseModel):
    """The one error shape of the API."""

    error: ErrorDetail


def require(scope: str) -> Callable[[Request], Awaitable[frozenset[str]]]:
    """A dependency that admits a request whose bearer key has `scope` (or admin)."""

    async def check(
        request: Request,
        _bearer: HTTPAuthorizationCredentials | None = Depends(BEARER),
    ) -> frozenset[str]:
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

    check.reco_scope = scope  # type: ignore[attr-defined]  # KeyFirstRoute runs it before the body is read
    return check


MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have (checked at parse time)."""


def json_depth_exceeded(value: Any, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether a parsed JSON value nests arrays/objects deeper than `limit` (iterative: no recursion)."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > limit:
            return True
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


def _too_deep() -> ValidationFailed:
    return ValidationFailed(
        f"body: nested deeper than {MAX_JSON_DEPTH} levels of arrays and objects: flatten it",
        details=[{"loc": ["body"], "msg": f"nested deeper than {MAX_JSON_DEPTH} levels"}],
    )


def parse_json(chunks: bytes) -> Any:
    """Bytes to JSON, refusing nesting over MAX_JSON_DEPTH and naming where invalid JSON breaks."""
    try:
        value = orjson.loads(chunks)
    except orjson.JSONDecodeError as exc:
        if "recursion" in str(exc).lower():  # orjson stops at 1024 levels
            raise _too_deep() from None
    else:
        if json_depth_exceeded(value):
            raise _too_deep()
        return value
    try:
        value = json.loads(chunks)
    except RecursionError:
        raise _too_deep() from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
        raise ValidationFailed(
            f"body: not valid JSON{where}: {exc}",
            details=[{"loc": ["body"], "msg": f"not valid JSON{where}"}],
        ) from None
    if json_depth_exceeded(value):
        raise _too_deep()
    return value


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class KeyFirstRoute(APIRoute):
    """A route that checks the API key before it reads the body, then refuses bodies FastAPI would mangle.

    FastAPI parses the body before it solves dependencies, so without this a malformed (or 7 MB) body with no
    key answered 422 (or was read whole) instead of 401. The key check is the `require(...)` dependency
    declared on the route or its router; it runs again inside the handler (answered from the key cache).
    For routes with a declared body model: no JSON Content-Type or nesting over MAX_JSON_DEPTH answer 422
    naming the body, never a 400 in FastAPI's words or a RecursionError.
    """

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        responses = dict(kwargs.get("responses") or {})
        keyed = any(
            hasattr(getattr(d, "dependency", None), "reco_scope") for d in kwargs.get("dependencies") or []
        )
        wanted = {422: "a field is invalid; the message names it"}
        if keyed:
            wanted |= {401: "no, unknown or revoked API key", 403: "the key lacks the scope"}
        for status, description in wanted.items():
            entry = dict(responses.get(status) or {"description": description})
            entry.setdefault("model", ErrorOut)
            responses[status] = entry
        kwargs["responses"] = responses
        super().__init__(path, endpoint, **kwargs)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        checks = [d.call for d in self.dependant.dependencies if hasattr(d.call, "reco_scope")]
        has_body = self.body_field is not None
        if not has_body:
            checks = []  # nothing is read before FastAPI's own dependency solving runs the key check

        async def run(request: Request) -> Response:
            for check in checks:
                await check(request)  # type: ignore[misc]
            if has_body:
                body = await request.body()
                if body:
                    if not _is_json(request.headers.get("content-type", "")):
                        raise ValidationFailed(
                            "body: send it as JSON with `Content-Type: application/json`",
                            details=[{"loc": ["body"], "msg": "Content-Type must be application/json"}],
                        )
                    parse_json(body)
            return await handler(request)

        return run


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
    return parse_json(bytes(chunks))


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
