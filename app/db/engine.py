"""Engine and session factories, built from settings (never at import time)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

T = TypeVar("T")


def make_engine(settings: Settings, **overrides: Any) -> Engine:
    """An engine for the configured store: SQLite in WAL mode, or PostgreSQL through psycopg 3."""
    url = settings.sqlalchemy_url
    if settings.is_sqlite:
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=8, **overrides
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=FULL")  # an acknowledged event survives a power cut
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        return engine
    options = {
        "pool_size": 10,
        "max_overflow": 10,
        "pool_pre_ping": True,
        "pool_timeout": 5,
        "connect_args": {"connect_timeout": 3, "options": "-c statement_timeout=30000"},
    }
    options.update(overrides)
    return create_engine(url, **options)


def make_read_engine(settings: Settings) -> Engine:
    """An engine for the hot read path, one round trip per read: no pre-ping per checkout (`read` retries
    instead) and autocommit (a single SELECT needs no transaction, so none is begun or rolled back)."""
    return make_engine(settings, pool_pre_ping=False, isolation_level="AUTOCOMMIT")


def read(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run a read-only `work` on a connection; a pooled connection the server dropped fails once (SQLAlchemy
    then invalidates the pool) and the read runs again on a fresh one."""
    try:
        with engine.connect() as conn:
            return work(conn)
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
    with engine.connect() as conn:
        return work(conn)


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """Sessions that never expire objects on commit (routes return what they stored)."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on error (the edge owns it)."""
    with factory() as session, session.begin():
        yield session


_RETRYABLE_SQLSTATES = {"40P01", "40001"}  # deadlock detected, serialization failure


def run_transaction(factory: sessionmaker[Session], work: Callable[[Session], T], attempts: int = 3) -> T:
    """Run `work` in one transaction, retrying it whole on a deadlock or serialization failure."""
    for attempt in range(attempts):
        try:
            with transaction(factory) as session:
                return work(session)
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None)
            if code not in _RETRYABLE_SQLSTATES or attempt == attempts - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")
