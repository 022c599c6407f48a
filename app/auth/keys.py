"""API keys with scopes. Keys are stored as SHA-256 digests and never logged."""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from app.db.tables import ApiKey

SCOPES = ("ingest", "read", "admin")
KEY_PREFIX = "reco_"


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


def create_key(session: Session, scopes: frozenset[str], name: str | None = None) -> str:
    """Store a new key's digest and return the key itself (the only time it is visible)."""
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(key_hash=digest(key), prefix=key[:12], name=name, scopes=",".join(sorted(scopes))))
    session.flush()
    return key


def allows(scopes: frozenset[str], needed: str) -> bool:
    """`admin` may do everything; other scopes only themselves."""
    return "admin" in scopes or needed in scopes


class KeyVerifier:
    """Resolves a presented key to its scopes: static keys from settings, then the database.

    A verified key is remembered for `ttl` seconds so that a request costs no query; the comparison against
    the stored digest is constant-time.
    """

    def __init__(
        self, static: dict[str, frozenset[str]], sessions: sessionmaker[Session], ttl: float
    ) -> None:
        self._static = {digest(k): v for k, v in static.items()}
        self._sessions = sessions
        self._ttl = ttl
        self._memo: dict[str, tuple[float, frozenset[str] | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> tuple[bool, frozenset[str] | None]:
        """(known, scopes) from memory without touching the database."""
        hashed = digest(key)
        for stored, scopes in self._static.items():
            if hmac.compare_digest(stored, hashed):
                return True, scopes
        with self._lock:
            entry = self._memo.get(hashed)
        if entry and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def lookup(self, key: str) -> frozenset[str] | None:
        """The key's scopes, or None when unknown or revoked (queries the database)."""
        hashed = digest(key)
        with self._sessions() as session:
            row = session.execute(
                select(ApiKey.key_hash, ApiKey.scopes).where(
                    ApiKey.key_hash == hashed, ApiKey.revoked_at.is_(None)
                )
            ).first()
        scopes = (
            frozenset(row.scopes.split(",")) if row and hmac.compare_digest(row.key_hash, hashed) else None
        )
        with self._lock:
            if len(self._memo) > 10_000:
                self._memo.clear()
            self._memo[hashed] = (time.monotonic() + self._ttl, scopes)
        return scopes
