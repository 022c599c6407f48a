"""API keys with scopes. Keys are stored as SHA-256 digests and never logged."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import threading
import time
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from app.db.tables import ApiKey
from app.settings import Rate, parse_rate_limits

SCOPES = ("ingest", "read", "admin", "dashboard")
"""`dashboard`: sign in to the operator's dashboard and view it (read-only); `admin` may also act there."""
KEY_PREFIX = "reco_"
PUBLISHABLE_PREFIX = "pk_"
"""A publishable key (`kind` publishable) may ship in page source: it may only send events and read
recommendations (the routes declared `require(..., publishable=True)`), only from its allowed origins."""
PUBLISHABLE_SCOPES = frozenset({"ingest", "read"})
KINDS = ("secret", "publishable")
_ORIGIN = re.compile(r"https?://[a-z0-9.-]+(:[0-9]{1,5})?|https?://\[[0-9a-f:.]+\](:[0-9]{1,5})?")


class Grant(frozenset[str]):
    """A verified key's scopes (a frozenset, as before) with what else the request checks need: its kind,
    allowed origins (publishable keys), a name for rate limiting that is not the key, and its own limits."""

    kind: str
    origins: frozenset[str]
    ident: str
    limits: dict[str, Rate]

    def __new__(
        cls,
        scopes: Iterable[str],
        kind: str = "secret",
        origins: Iterable[str] = (),
        ident: str = "",
        limits: dict[str, Rate] | None = None,
    ) -> Grant:
        grant = super().__new__(cls, scopes)
        grant.kind = kind
        grant.origins = frozenset(origins)
        grant.ident = ident
        grant.limits = limits or {}
        return grant

    @property
    def publishable(self) -> bool:
        return self.kind == "publishable"


def parse_origins(text: str | Iterable[str]) -> tuple[str, ...]:
    """`"https://shop.example,http://localhost:3000"` -> normalized origins (scheme://host[:port], lower case,
    no path); anything else is an error naming it."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    if not parts:
        raise ValueError("give at least one origin such as https://shop.example")
    out = []
    for part in parts:
        origin = part.lower().rstrip("/")
        if not _ORIGIN.fullmatch(origin):
            raise ValueError(
                f"{part!r} is not an origin: scheme://host[:port] with http or https, no path (https://shop.example)"
            )
        out.append(origin)
    return tuple(dict.fromkeys(out))


def check_rate_limits(text: str | None) -> str | None:
    """A key's own limits as stored (normalized), or a ValueError naming the bad entry."""
    if text is None or not text.strip():
        return None
    limits = parse_rate_limits(text)
    return ",".join(f"{name}={rate}" for name, rate in limits.items())


def digest(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode()).hexdigest()


def parse_scopes(text: str | Iterable[str]) -> frozenset[str]:
    """`"ingest,read"` -> {"ingest", "read"}; unknown scopes are an error naming them."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    unknown = sorted(set(parts) - set(SCOPES))
    if unknown or not parts:
        raise ValueError(
            f"scopes must be a comma-separated subset of {', '.join(SCOPES)} (got {unknown or parts})"
        )
    return frozenset(parts)


def create_key(
    session: Session,
    scopes: frozenset[str],
    name: str | None = None,
    *,
    kind: str = "secret",
    origins: Iterable[str] = (),
    rate_limits: str | None = None,
) -> str:
    """Store a new key's digest and return the key itself (the only time it is visible).

    A publishable key gets the `pk_` prefix, the scopes ingest and read (limited further to the publishable
    routes) and needs its allowed origins."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}")
    allowed = parse_origins(list(origins)) if kind == "publishable" else ()
    if kind == "publishable":
        scopes = PUBLISHABLE_SCOPES
    key = (PUBLISHABLE_PREFIX if kind == "publishable" else KEY_PREFIX) + secrets.token_urlsafe(32)
    session.add(
        ApiKey(
            key_hash=digest(key),
            prefix=key[:12],
            name=name,
            scopes=",".join(sorted(scopes)),
            kind=kind,
            allowed_origins=",".join(allowed) or None,
            rate_limits=check_rate_limits(rate_limits),
        )
    )
    session.flush()
    return key


def _grant(row: Any) -> Grant:
    return Grant(
        row.scopes.split(","),
        kind=row.kind or "secret",
        origins=(row.allowed_origins or "").split(",") if row.allowed_origins else (),
        ident=f"db:{row.id}",
        limits=parse_rate_limits(row.rate_limits),
    )


def publishable_origins(session: Session) -> frozenset[str]:
    """Every origin some unrevoked publishable key allows (what a CORS preflight may be answered for)."""
    rows = session.scalars(
        select(ApiKey.allowed_origins).where(ApiKey.kind == "publishable", ApiKey.revoked_at.is_(None))
    )
    return frozenset(o for text in rows if text for o in text.split(","))


def allows(scopes: frozenset[str], needed: str) -> bool:
    """`admin` may do everything; other scopes only themselves."""
    return "admin" in scopes or needed in scopes


class KeyVerifier:
    """Resolves a presented key to its scopes: static keys from settings, then the database.

    A verified key is remembered for `ttl` seconds so that a request costs no query (a revocation elsewhere
    takes effect within that time; `forget` makes it immediate in this process). When the database cannot be
    read, a key verified less than `grace` seconds ago is still accepted, so that answers that need no
    database (cached ones, popular lists) keep being served through an outage; an unknown key then fails
    with the database error (a 503). A generation counter keeps a lookup that was in flight during a
    revocation from memoizing the revoked key again. The comparison against the stored digest is
    constant-time.
    """

    def __init__(
        self,
        static: dict[str, frozenset[str]],
        sessions: sessionmaker[Session],
        ttl: float,
        grace: float = 0.0,
    ) -> None:
        self._static = {
            digest(k): Grant(v, ident=f"static:{digest(digest(k))[:16]}") for k, v in static.items()
        }
        self._sessions = sessions
        self._ttl = ttl
        self._grace = max(grace, ttl)
        # digest -> (verified at (monotonic), grant or None for unknown/revoked)
        self._memo: dict[str, tuple[float, Grant | None]] = {}
        self._generation = 0  # bumped by every forget()
        self._lock = threading.Lock()
        self.outage_accepts = 0  # keys accepted from memory because the database could not be read
        self._ids: dict[int, tuple[float, bool]] = {}  # key id -> (checked at (monotonic), still valid)

    def cached(self, key: str) -> tuple[bool, Grant | None]:
        """(known, scopes) from memory without touching the database."""
        hashed = digest(key)
        for stored, scopes in self._static.items():
            if hmac.compare_digest(stored, hashed):
                return True, scopes
        with self._lock:
            entry = self._memo.get(hashed)
        if entry and time.monotonic() - entry[0] < self._ttl:
            return True, entry[1]
        return False, None

    def lookup(self, key: str) -> Grant | None:
        """The key's scopes, or None when unknown or revoked (queries the database).

        On a database error, a key verified within the outage grace is accepted with its remembered scopes;
        otherwise the error propagates.
        """
        hashed = digest(key)
        with self._lock:
            generation = self._generation
        try:
            with self._sessions() as session:
                row = session.execute(
                    select(
                        ApiKey.id,
                        ApiKey.key_hash,
                        ApiKey.scopes,
                        ApiKey.kind,
                        ApiKey.allowed_origins,
                        ApiKey.rate_limits,
                    ).where(ApiKey.key_hash == hashed, ApiKey.revoked_at.is_(None))
                ).first()
        except (OperationalError, InterfaceError, PoolTimeout, DBAPIError):
            with self._lock:
                entry = self._memo.get(hashed)
            if entry and entry[1] is not None and time.monotonic() - entry[0] < self._grace:
                self.outage_accepts += 1
                return entry[1]
            raise
        scopes = _grant(row) if row and hmac.compare_digest(row.key_hash, hashed) else None
        with self._lock:
            if generation == self._generation:  # no revocation since the read began
                if len(self._memo) > 10_000:
                    self._memo.clear()
                self._memo[hashed] = (time.monotonic(), scopes)
        return scopes

    def identify(self, key: str, pepper: bytes = b"") -> str | None:
        """A name for a verified key that is not the key: `db:<id>` for a stored key, `static:<keyed digest>`
        for a configured one (HMAC of its digest under `pepper`, so that the name tells nothing about the key
        without it); None when unknown. A dashboard session holds it, never the key."""
        hashed = digest(key)
        for stored in self._static:
            if hmac.compare_digest(stored, hashed):
                return f"static:{_static_name(stored, pepper)}"
        with self._sessions() as session:
            key_id = session.scalar(
                select(ApiKey.id).where(ApiKey.key_hash == hashed, ApiKey.revoked_at.is_(None))
            )
        return None if key_id is None else f"db:{key_id}"

    def still_valid(self, ident: str, pepper: bytes = b"") -> bool:
        """Whether the key `identify` named is still configured or stored unrevoked (a stored key's answer is
        remembered for the key cache time, like `lookup`'s)."""
        kind, _, value = ident.partition(":")
        if kind == "static":
            return any(hmac.compare_digest(_static_name(stored, pepper), value) for stored in self._static)
        if kind != "db" or not value.isdigit():
            return False
        key_id = int(value)
        with self._lock:
            entry = self._ids.get(key_id)
            generation = self._generation
        if entry and time.monotonic() - entry[0] < self._ttl:
            return entry[1]
        try:
            with self._sessions() as session:
                valid = (
                    session.scalar(select(ApiKey.id).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)))
                    is not None
                )
        except (OperationalError, InterfaceError, PoolTimeout, DBAPIError):
            if entry and entry[1] and time.monotonic() - entry[0] < self._grace:
                return True
            raise
        with self._lock:
            if generation == self._generation:
                if len(self._ids) > 10_000:
                    self._ids.clear()
                self._ids[key_id] = (time.monotonic(), valid)
        return valid

    def forget(self, key_hash: str | None = None) -> None:
        """Drop a key's memory (by digest; all keys when None), so a revocation holds at once here."""
        with self._lock:
            self._generation += 1
            self._ids.clear()  # cheap to refill: one indexed read per signed-in key
            if key_hash is None:
                self._memo.clear()
            else:
                self._memo.pop(key_hash, None)


def _static_name(stored_digest: str, pepper: bytes) -> str:
    return hmac.new(pepper, stored_digest.encode(), hashlib.sha256).hexdigest()[:24]


def list_keys(session: Session) -> list[ApiKey]:
    """Every stored key (digests stay in the row; callers show prefix, name, scopes, dates)."""
    return list(session.scalars(select(ApiKey).order_by(ApiKey.id)))


def revoke_key(session: Session, key_id: int) -> ApiKey | None:
    """Mark a key revoked (idempotent: a revoked key keeps its first revocation time); None when unknown."""
    row = session.get(ApiKey, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = datetime.now(UTC)
        session.flush()
    return row


def describe(row: ApiKey) -> dict[str, object]:
    """A key as shown to an operator: never its secret or digest."""
    return {
        "id": row.id,
        "prefix": row.prefix,
        "name": row.name,
        "scopes": sorted(row.scopes.split(",")),
        "kind": row.kind or "secret",
        "allowed_origins": row.allowed_origins.split(",") if row.allowed_origins else [],
        "rate_limits": row.rate_limits,
        "created_at": _utc(row.created_at),
        "revoked_at": _utc(row.revoked_at),
    }


def _utc(ts: datetime | None) -> datetime | None:
    return ts.replace(tzinfo=UTC) if ts is not None and ts.tzinfo is None else ts
