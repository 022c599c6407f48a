"""Engine and session factories, built from settings (never at import time)."""

from __future__ import annotations

import itertools
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from app.settings import Settings

T = TypeVar("T")


def make_engine(settings: Settings, statement_timeout_s: float | None = None, **overrides: Any) -> Engine:
    """An engine for the configured store: SQLite in WAL mode, or PostgreSQL through psycopg 3, every call of
    which waits a bounded time: connect, pool checkout, and each statement (`statement_timeout_s`, default
    30 s: the trainer's and the commands' long reads; the API passes its own) cut client-side if the server
    never answers."""
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
    statement_s = statement_timeout_s or 30.0
    options = {
        "pool_size": 10,
        "max_overflow": 10,
        "pool_pre_ping": True,
        "pool_timeout": settings.db_pool_timeout_s,
        "connect_args": {
            # libpq counts whole seconds (and at least 2)
            "connect_timeout": max(1, round(settings.db_connect_timeout_s)),
            "options": f"-c statement_timeout={int(statement_s * 1000)}",
            # a peer that stops acknowledging (a dead host) is dropped by the kernel
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
            "tcp_user_timeout": int((statement_s + 5) * 1000),
        },
    }
    options.update(overrides)
    engine = create_engine(url, **options)
    _bound_calls(engine, statement_s + CLIENT_GRACE_S)
    return engine


def make_api_engines(settings: Settings) -> tuple[Engine, Engine]:
    """The API process's engines (read-write, and the hot read path), with the API's statement timeout."""
    engine = make_engine(settings, statement_timeout_s=settings.db_statement_timeout_s)
    if settings.is_sqlite:
        return engine, engine
    return engine, make_read_engine(settings, statement_timeout_s=settings.db_statement_timeout_s)


def make_read_engine(settings: Settings, statement_timeout_s: float | None = None) -> Engine:
    """An engine for the hot read path, one round trip per read: no pre-ping per checkout (`read` retries
    instead) and autocommit (a single SELECT needs no transaction, so none is begun or rolled back)."""
    return make_engine(
        settings, statement_timeout_s=statement_timeout_s, pool_pre_ping=False, isolation_level="AUTOCOMMIT"
    )


PING_BOUND_S = 0.5  # a pre-ping's wait before the connection is taken for dead
CLIENT_GRACE_S = 0.5  # the client-side cut comes this long after the server's statement timeout


class _Watchdog:
    """Severs the socket of a database call that outlives its deadline.

    The server's statement timeout ends a slow query, but a hung server or a black-holed network never answers
    at all, and psycopg then waits on its socket forever. One daemon thread (for every engine of the process)
    shuts down the socket of each call past its deadline: the blocked read returns at once, psycopg raises
    OperationalError, and SQLAlchemy discards the connection.
    """

    def __init__(self, tick_s: float = 0.05) -> None:
        self.tick_s = tick_s
        self.severed = 0
        self._lock = threading.Lock()
        self._live: dict[int, tuple[float, Any]] = {}
        self._keys = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def guard(self, dbapi_conn: Any, bound_s: float) -> Iterator[None]:
        key = next(self._keys)
        with self._lock:
            self._live[key] = (time.monotonic() + bound_s, dbapi_conn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="reco-db-watchdog", daemon=True)
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._live.pop(key, None)

    def _run(self) -> None:
        while True:
            time.sleep(self.tick_s)
            now = time.monotonic()
            with self._lock:
                expired = [key for key, (deadline, _) in self._live.items() if deadline <= now]
                doomed = [self._live.pop(key)[1] for key in expired]
            for conn in doomed:
                self.severed += 1
                _sever(conn)


def _sever(dbapi_conn: Any) -> None:
    try:
        fd = os.dup(dbapi_conn.fileno())
    except Exception:  # already closed
        return
    sock = socket.socket(fileno=fd)
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


WATCHDOG = _Watchdog()


def _bound_calls(engine: Engine, bound_s: float) -> None:
    """Every statement, ping, commit and rollback of `engine` waits at most `bound_s` for the server."""
    dialect = engine.dialect
    for name in ("do_execute", "do_executemany", "do_execute_no_params"):
        original = getattr(dialect, name)

        def on_cursor(cursor: Any, *args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with WATCHDOG.guard(cursor.connection, bound_s):
                return _original(cursor, *args, **kwargs)

        setattr(dialect, name, on_cursor)
    # a ping is an empty round trip: a pooled connection that cannot answer it at once is dropped sooner, so a
    # checkout against a hung server costs this plus one connect timeout
    ping_s = min(bound_s, PING_BOUND_S)
    for name, limit in (("do_ping", ping_s), ("do_commit", bound_s), ("do_rollback", bound_s)):
        original = getattr(dialect, name)

        def on_conn(
            dbapi_conn: Any, *args: Any, _original: Any = original, _limit: float = limit, **kwargs: Any
        ) -> Any:
            with WATCHDOG.guard(dbapi_conn, _limit):
                return _original(dbapi_conn, *args, **kwargs)

        setattr(dialect, name, on_conn)


class DatabaseProbe:
    """Whether the database answers, known at once: a poller runs `check()` (one bounded `SELECT 1`) every
    second, and `up` also turns false as soon as a check has waited longer than `stale_s`."""

    def __init__(self, engine: Engine, stale_s: float = 0.5) -> None:
        self.engine = engine
        self.stale_s = stale_s
        self._ok = False
        self._since: float | None = None
        event.listen(engine, "handle_error", self._on_error)

    def _on_error(self, context: Any) -> None:
        """A request that found the database gone says so at once (the next check says when it is back)."""
        if context.is_disconnect or isinstance(context.sqlalchemy_exception, OperationalError):
            self._ok = False

    def check(self) -> None:
        self._since = time.monotonic()
        try:
            with self.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
            self._ok = True
        except Exception:  # any failure means "down"; the next check retries
            self._ok = False
        finally:
            self._since = None

    @property
    def checking(self) -> bool:
        return self._since is not None

    @property
    def up(self) -> bool:
        since = self._since
        if since is not None and time.monotonic() - since > self.stale_s:
            return False
        return self._ok


def read(engine: Engine, work: Callable[[Connection], T]) -> T:
    """Run a read-only `work` on a connection; a pooled connection the server dropped fails once (SQLAlchemy
    then invalidates the pool) and the read runs again on a fresh one. A call that failed only after waiting
    (cut by the watchdog: the server is hung) is not retried, so the caller's wait stays bounded."""
    start = time.monotonic()
    try:
        with engine.connect() as conn:
            return work(conn)
    except DBAPIError as exc:
        if not exc.connection_invalidated or time.monotonic() - start > PING_BOUND_S:
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
