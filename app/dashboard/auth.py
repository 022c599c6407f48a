"""Dashboard sign-in: signed session cookies (HMAC-SHA256), CSRF tokens, the checks every page makes.

A cookie holds `{"k": key ident, "s": scopes, "e": expiry (epoch s), "c": csrf nonce}` as base64url JSON plus
its HMAC-SHA256 signature; never the key. The ident (`db:<id>`, or `static:<HMAC of the key's digest under the cookie secret>`) is re-checked on
each request (memoized for RECO_KEY_CACHE_SECONDS), so a revoked key's sessions end with it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass

import orjson
from fastapi import Request
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from app.api.deps import get_state
from app.api.state import AppState
from app.db.engine import run_transaction
from app.db.tables import DashboardSecret

COOKIE = "reco_dashboard"
PAGE_PATH = "/dashboard"
DATA_PATH = "/v1/admin/stats"  # the JSON the pages' charts fetch; the same cookie is set for it too
COOKIE_PATHS = (PAGE_PATH, DATA_PATH)
VIEW_SCOPES = frozenset({"admin", "dashboard"})


@dataclass(frozen=True, slots=True)
class DashSession:
    """A verified dashboard session."""

    ident: str
    scopes: frozenset[str]
    expires: int
    csrf: str

    @property
    def can_act(self) -> bool:
        """Whether this session may activate and retrain (an admin key), not only look."""
        return "admin" in self.scopes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: bytes, session: DashSession) -> str:
    """The cookie value for a session."""
    payload = _b64(
        orjson.dumps(
            {"k": session.ident, "s": sorted(session.scopes), "e": session.expires, "c": session.csrf}
        )
    )
    mac = hmac.new(secret, payload.encode(), hashlib.sha256).digest()
    return f"{payload}.{_b64(mac)}"


def unsign(secret: bytes, value: str, now: float | None = None) -> DashSession | None:
    """The session a cookie holds, or None when it is malformed, forged, tampered with or expired."""
    if not value or len(value) > 2048 or value.count(".") != 1:
        return None
    payload, _, mac = value.partition(".")
    expected = _b64(hmac.new(secret, payload.encode(), hashlib.sha256).digest())
    if not hmac.compare_digest(expected, mac):
        return None
    try:
        data = orjson.loads(_unb64(payload))
        session = DashSession(
            ident=str(data["k"]),
            scopes=frozenset(map(str, data["s"])),
            expires=int(data["e"]),
            csrf=str(data["c"]),
        )
    except (ValueError, KeyError, TypeError, orjson.JSONDecodeError):
        return None
    if session.expires <= (now if now is not None else time.time()):
        return None
    return session


def new_session(ident: str, scopes: frozenset[str], lifetime_s: int) -> DashSession:
    """A fresh session with its own CSRF nonce."""
    return DashSession(ident, scopes & VIEW_SCOPES, int(time.time()) + lifetime_s, secrets.token_urlsafe(24))


def stored_secret(sessions: sessionmaker[Session]) -> bytes:
    """The database's dashboard secret, made (once, by whichever process comes first) when missing."""

    def work(session: Session) -> str:
        found = session.scalar(select(DashboardSecret.secret).where(DashboardSecret.id == 1))
        if found is not None:
            return found
        insert = pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
        session.execute(
            insert(DashboardSecret)
            .values(id=1, secret=secrets.token_urlsafe(48))
            .on_conflict_do_nothing(index_elements=["id"])
        )
        return str(session.scalar(select(DashboardSecret.secret).where(DashboardSecret.id == 1)))

    return run_transaction(sessions, work).encode()


def secret_of(state: AppState) -> bytes:
    """RECO_DASHBOARD_SECRET, else the secret kept in the database (shared by every worker)."""
    if state.settings.dashboard_secret:
        return state.settings.dashboard_secret.encode()
    if state.dashboard_secret is None:  # a race only reads the same row twice
        state.dashboard_secret = stored_secret(state.sessions)
    return state.dashboard_secret


async def current_session(request: Request) -> DashSession | None:
    """The request's valid dashboard session (signature, expiry, key not revoked), or None."""
    value = request.cookies.get(COOKIE)
    if not value:
        return None
    state = get_state(request)
    secret = await run_in_threadpool(secret_of, state)
    session = unsign(secret, value)
    if session is None or not (session.scopes & VIEW_SCOPES):
        return None
    if not await run_in_threadpool(state.keys.still_valid, session.ident, secret):
        return None
    return session


def csrf_ok(session: DashSession, sent: str | None) -> bool:
    """Whether a state-changing request carries this session's CSRF token."""
    return bool(sent) and hmac.compare_digest(str(sent).encode(), session.csrf.encode())
