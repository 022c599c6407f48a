"""Dependencies: the app state, authentication with scopes, request bodies within limits."""

from __future__ import annotations

import inspect
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import orjson
from fastapi import Depends, Request, Response
from fastapi.routing import APIRoute
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.cors import CORS_SCOPE
from app.api.state import AppState
from app.auth import user_tokens
from app.auth.keys import PUBLISHABLE_PREFIX, Grant, allows
from app.auth.ratelimit import client_ip, retry_after_seconds
from app.errors import Forbidden, PayloadTooLarge, RateLimited, Unauthorized, ValidationFailed
from app.settings import RATE_CLASSES, Rate


def get_state(request: Request) -> AppState:
    """The process's AppState (set by the lifespan)."""
    return request.state.app


BEARER = HTTPBearer(
    auto_error=False,
    description="An API key from `reco keys create`. Secret keys (`reco_…`) are for servers: scopes ingest, "
    "read, admin, dashboard. Publishable keys (`pk_…`, `reco keys create --publishable --origins URL`) are safe "
    "in page source: they may only call POST /v1/events, GET /v1/users/{user_id}/recommendations, "
    "POST /v1/recommendations, GET /v1/items/{item_id}/similar and GET /v1/popular (anything else: 403), only "
    "from their allowed origins (CORS is answered for those alone), and are rate-limited per key and per "
    "client IP. Where a browser cannot set headers (navigator.sendBeacon), a publishable key may be sent as "
    "the `key` query parameter instead. Every key may be rate-limited per route class (RECO_RATE_LIMITS): "
    "over it, 429 with Retry-After.",
)
USER_TOKEN = APIKeyHeader(
    name=user_tokens.HEADER,
    auto_error=False,
    scheme_name="UserToken",
    description="With RECO_REQUIRE_USER_TOKEN=true, every request made with a publishable key carries a user "
    'token: base64url({"uid": USER, "exp": UNIX_SECONDS}) + "." + base64url(HMAC-SHA256(RECO_USER_TOKEN_SECRET, '
    "the first part)), issued by the shop's server (`reco keys user-token`, app.auth.user_tokens.issue). The "
    "request may then only name that user (the path's user_id, every event's user_id): otherwise 403 naming "
    "the field. Missing, expired or forged: 401. Also accepted as the `user_token` query parameter.",
)
PUBLISHABLE_ONLY = (
    "publishable keys may only send events (POST /v1/events) and read recommendations "
    "(GET /v1/users/{user_id}/recommendations, POST /v1/recommendations, GET /v1/items/{item_id}/similar, "
    "GET /v1/popular): use a secret key from your server for this"
)
AUTH_SCOPE = "reco.auth"  # scope entry: (scope, grant) of the request's verified key (checked once)
TOKEN_USER = "reco.user"  # scope entry: the user a verified user token names


class ErrorDetail(BaseModel):
    code: str
    message: str = Field(description="`field: what to change`")
    details: list[dict[str, Any]]


class ErrorOut(BaseModel):
    """The one error shape of the API."""

    error: ErrorDetail


def _presented_key(request: Request) -> str:
    header = request.headers.get("authorization", "")
    kind, _, key = header.partition(" ")
    if kind.lower() == "bearer" and key.strip():
        return key.strip()
    query_key = request.query_params.get("key")
    if query_key:
        if not query_key.startswith(PUBLISHABLE_PREFIX):
            raise Unauthorized(
                "query.key: only publishable keys may be sent in the URL; send secret keys as "
                "`Authorization: Bearer <key>`"
            )
        return query_key
    raise Unauthorized(
        "missing API key: send `Authorization: Bearer <key>` (create one with `reco keys create`)"
    )


def require(
    scope: str, *, publishable: bool = False, limit: str | None = None
) -> Callable[[Request], Awaitable[frozenset[str]]]:
    """A dependency that admits a request whose bearer key has `scope` (or admin).

    `publishable`: publishable keys may use the route too (their origin, user token and per-IP limits are
    checked); otherwise they get a 403. `limit`: the route class its rate limits count in (default: the
    scope's name; see RATE_CLASSES). The check runs once per request: a second call answers from the first.
    """
    rate_class = limit or scope
    assert rate_class in RATE_CLASSES, rate_class

    async def check(
        request: Request,
        _bearer: HTTPAuthorizationCredentials | None = Depends(BEARER),
        _user_token: str | None = Depends(USER_TOKEN),
    ) -> frozenset[str]:
        done = request.scope.get(AUTH_SCOPE)
        if done is not None and done[0] == scope:
            grant_done: frozenset[str] = done[1]
            return grant_done
        state = get_state(request)
        key = _presented_key(request)
        known, grant = state.keys.cached(key)
        if not known:
            grant = await run_in_threadpool(state.keys.lookup, key)
        if grant is None:
            raise Unauthorized("unknown or revoked API key")
        if grant.publishable:
            await _publishable(request, state, grant, publishable)
        elif not allows(grant, scope):
            raise Forbidden(f"this key lacks the `{scope}` scope (it has: {', '.join(sorted(grant))})")
        await _rate_limit(request, state, grant, rate_class)
        request.scope[AUTH_SCOPE] = (scope, grant)
        return grant

    check.reco_scope = scope  # type: ignore[attr-defined]  # KeyFirstRoute runs it before the body is read
    check.reco_publishable = publishable  # type: ignore[attr-defined]  # app/api/cors.py opens these routes
    if not publishable:  # only publishable routes list the user-token scheme in OpenAPI
        sig = inspect.signature(check)
        check.__signature__ = sig.replace(  # type: ignore[attr-defined]
            parameters=[p for name, p in sig.parameters.items() if name != "_user_token"]
        )
    return check


async def _publishable(request: Request, state: AppState, grant: Grant, route_allows: bool) -> None:
    """A publishable key's checks: its origin, the route, its user token."""
    origin = request.headers.get("origin")
    if origin is not None:
        if origin.lower() not in grant.origins:
            raise Forbidden(
                f"origin {origin!r} is not among this publishable key's allowed origins "
                "(`reco keys create --publishable --origins ...`)",
                details=[{"loc": ["header", "origin"], "msg": "not allowed for this key"}],
            )
        admitted = request.scope.get(CORS_SCOPE)
        if admitted is not None and not admitted:
            admitted.append(origin)  # the answer gets Access-Control-Allow-Origin (app/api/cors.py)
    if not route_allows:
        raise Forbidden(PUBLISHABLE_ONLY)
    settings = state.settings
    if not settings.require_user_token:
        return
    token = request.headers.get(user_tokens.HEADER) or request.query_params.get(user_tokens.QUERY)
    if not token:
        raise Unauthorized(
            f"{user_tokens.HEADER}: required with a publishable key (RECO_REQUIRE_USER_TOKEN): ask the shop's "
            "server for a signed user token",
            details=[{"loc": ["header", user_tokens.HEADER], "msg": "is required"}],
        )
    assert settings.user_token_secret is not None  # the settings refuse RECO_REQUIRE_USER_TOKEN without it
    try:
        uid = user_tokens.verify(token, settings.user_token_secret)
    except user_tokens.TokenError as exc:
        raise Unauthorized(
            f"{user_tokens.HEADER}: {exc}", details=[{"loc": ["header", user_tokens.HEADER], "msg": str(exc)}]
        ) from None
    request.scope[TOKEN_USER] = uid
    named = request.path_params.get("user_id")
    if named is not None and named != uid:
        raise Forbidden(
            "path.user_id: a publishable key with a user token may only name the token's user",
            details=[{"loc": ["path", "user_id"], "msg": "is not the user token's user"}],
        )


def token_user(request: Request) -> str | None:
    """The user the request's verified user token names (publishable keys under RECO_REQUIRE_USER_TOKEN)."""
    return request.scope.get(TOKEN_USER)


async def _rate_limit(request: Request, state: AppState, grant: Grant, rate_class: str) -> None:
    """Take a token from the key's bucket for this route class (and, for a publishable key, from its bucket
    for the client's IP); 429 naming the limit when one is empty."""
    limiter = state.limiter
    if limiter is None:
        return
    table = state.settings.rate_limit_table
    ident, own, publishable = grant.ident or "unnamed", grant.limits, grant.publishable
    buckets: list[tuple[str, Rate]] = []
    described: list[tuple[str, str]] = []
    rate = own.get(rate_class) or table["publishable" if publishable else "key"].get(rate_class)
    if rate is not None:
        buckets.append((rate_class, rate))
        described.append(("key", "RECO_PUBLISHABLE_RATE_LIMITS" if publishable else "RECO_RATE_LIMITS"))
    ip_rate = table["ip"].get(rate_class) if publishable else None
    if ip_rate is not None:
        ip = client_ip(
            request.client.host if request.client else None,
            request.headers.get("x-forwarded-for"),
            state.proxies,
        )
        buckets.append((f"{rate_class}:ip:{ip}", ip_rate))
        described.append(("client IP", "RECO_PUBLISHABLE_IP_RATE_LIMITS"))
    if not buckets:
        return
    blocked, wait = await limiter.take(ident, buckets)
    if blocked < 0:
        return
    retry = retry_after_seconds(wait)
    per, setting = described[blocked]
    state.metrics.rate_limited.labels(rate_class, "key" if per == "key" else "ip").inc()
    if blocked == 0 and rate_class in own:
        setting = "this key's rate_limits"
    limit_text = f"{rate_class}={buckets[blocked][1]}"
    raise RateLimited(
        f"rate limit {limit_text} per {per} exceeded ({setting}): retry after {retry} s",
        retry_after=retry,
        details=[{"limit": limit_text, "class": rate_class, "per": per, "retry_after": retry}],
    )


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
            wanted |= {
                401: "no, unknown or revoked API key (or, for a publishable key, a missing, expired or forged "
                "user token)",
                403: "the key lacks the scope, or a publishable key: a route, origin or user it may not use",
                429: "over a rate limit: retry after Retry-After seconds",
            }
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
