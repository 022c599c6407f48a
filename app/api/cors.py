"""CORS for publishable keys only: browsers may call the publishable routes from the keys' allowed origins.

A preflight (OPTIONS with Access-Control-Request-Method) carries no key, so it is answered for an origin that
ANY unrevoked publishable key allows, and only on a publishable route (the routes declared
`require(..., publishable=True)`: POST /v1/events and the recommendation reads) with one of its methods;
anything else gets a 403 without CORS headers, which the browser reports as a CORS failure. The actual request
is then checked against its own key (app/api/deps.py `require`): an Origin outside that key's list is a 403,
and only an admitted origin gets Access-Control-Allow-Origin on the answer (also on its 4xx, so that a page
can read a 429's Retry-After). Secret keys get no CORS headers.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterable

import orjson
from fastapi import APIRouter
from fastapi.routing import APIRoute
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.auth.keys import publishable_origins
from app.auth.user_tokens import HEADER as TOKEN_HEADER

CORS_SCOPE = "reco.cors"  # scope entry: a list the key check appends the admitted origin to
ALLOW_HEADERS = f"authorization, content-type, {TOKEN_HEADER.lower()}"
EXPOSE_HEADERS = "retry-after, x-cache, x-reco-degraded"
MAX_AGE = "600"
RELOAD_AFTER_S = 2.0  # an origin not (yet) known is looked up again at most this often


class OriginBook:
    """The origins some publishable key allows, read from the store at most every RELOAD_AFTER_S when asked
    about an origin it does not hold, and at least every `ttl` seconds."""

    def __init__(self, sessions: sessionmaker[Session], ttl: float) -> None:
        self._sessions = sessions
        self._ttl = max(ttl, RELOAD_AFTER_S)
        self._origins: frozenset[str] = frozenset()
        self._loaded = float("-inf")
        self._lock = threading.Lock()

    def _load(self) -> None:
        with self._sessions() as session:
            origins = publishable_origins(session)
        with self._lock:
            self._origins, self._loaded = origins, time.monotonic()

    async def allows(self, origin: str) -> bool:
        origin = origin.lower()
        age = time.monotonic() - self._loaded
        if (origin in self._origins and age < self._ttl) or (
            origin not in self._origins and age < RELOAD_AFTER_S
        ):
            return origin in self._origins
        try:
            await run_in_threadpool(self._load)
        except SQLAlchemyError:  # the store is away: what was read last still holds
            with self._lock:
                self._loaded = time.monotonic()
        return origin in self._origins

    def forget(self) -> None:
        """Read the store at the next preflight (a key was created or revoked here)."""
        self._loaded = float("-inf")


def publishable_routes(routers: Iterable[APIRouter]) -> list[tuple[re.Pattern[str], frozenset[str]]]:
    """(path regex, methods) of every route of these routers that admits publishable keys (its own or its
    router's `require(..., publishable=True)`)."""
    out = []
    for router in routers:
        shared = [d.dependency for d in router.dependencies]
        for route in router.routes:
            if not isinstance(route, APIRoute):
                continue
            calls = shared + [d.dependency for d in route.dependencies]
            if any(getattr(c, "reco_publishable", False) for c in calls):
                out.append((route.path_regex, frozenset(route.methods or ())))
    return out


class PublishableCors:
    """Pure ASGI CORS for the publishable routes (see the module's docstring)."""

    def __init__(self, app: ASGIApp, routes: list[tuple[re.Pattern[str], frozenset[str]]]) -> None:
        self.app = app
        self._open = routes

    def _methods(self, path: str) -> frozenset[str]:
        return frozenset(m for regex, methods in self._open if regex.match(path) for m in methods)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"origin"), None)
        state = scope.get("state", {}).get("app")
        if origin is None or state is None:
            await self.app(scope, receive, send)
            return
        methods = self._methods(scope["path"])
        wanted = next((v for k, v in scope["headers"] if k == b"access-control-request-method"), None)
        if scope["method"] == "OPTIONS" and wanted is not None:
            await self._preflight(state, origin, methods, wanted.decode("latin-1").upper(), scope, send)
            return
        admitted: list[str] = []
        scope[CORS_SCOPE] = admitted

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start" and methods:
                headers = list(message.get("headers", []))
                headers.append((b"vary", b"Origin"))
                if admitted and admitted[0] == origin:
                    headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
                    headers.append((b"access-control-expose-headers", EXPOSE_HEADERS.encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)

    async def _preflight(
        self, state: object, origin: str, methods: frozenset[str], wanted: str, scope: Scope, send: Send
    ) -> None:
        vary = (b"vary", b"Origin, Access-Control-Request-Method, Access-Control-Request-Headers")
        if not methods or wanted not in methods:
            message = (
                f"{wanted} {scope['path']} is not open to browsers: publishable keys may only send events "
                "(POST /v1/events) and read recommendations"
            )
        elif not await state.origins.allows(origin):  # type: ignore[attr-defined]
            message = (
                f"origin {origin!r} is not allowed by any publishable key: create one with "
                f"`reco keys create --publishable --origins {origin}`"
            )
        else:
            headers = [
                (b"access-control-allow-origin", origin.encode("latin-1")),
                (b"access-control-allow-methods", ", ".join(sorted(methods)).encode()),
                (b"access-control-allow-headers", ALLOW_HEADERS.encode()),
                (b"access-control-max-age", MAX_AGE.encode()),
                vary,
                (b"content-length", b"0"),
            ]
            await send({"type": "http.response.start", "status": 204, "headers": headers})
            await send({"type": "http.response.body", "body": b""})
            return
        body = orjson.dumps({"error": {"code": "forbidden", "message": message, "details": []}})
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            vary,
        ]
        await send({"type": "http.response.start", "status": 403, "headers": headers})
        await send({"type": "http.response.body", "body": body})
