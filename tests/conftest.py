"""Shared fixtures: every store test runs on SQLite and, when RECO_TEST_DATABASE_URL is set, on PostgreSQL;
every cache test on the in-process cache and, when RECO_TEST_REDIS_URL is set, on Redis.

Under CI=true an unreachable server fails the test; it never skips.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from app.api.app import create_app
from app.cache import Cache, MemoryCache, RedisCache
from app.db.engine import make_engine
from app.db.migrate import upgrade
from app.settings import Settings

PG_URL = os.environ.get("RECO_TEST_DATABASE_URL")
REDIS_URL = os.environ.get("RECO_TEST_REDIS_URL")
IN_CI = os.environ.get("CI", "").lower() == "true"

ADMIN_KEY = "test-admin-key-000000000000"
INGEST_KEY = "test-ingest-key-00000000000"
READ_KEY = "test-read-key-0000000000000"
STATIC_KEYS = f"{ADMIN_KEY}:admin,{INGEST_KEY}:ingest,{READ_KEY}:read"
TABLES_TO_KEEP = {"alembic_version"}

STORES = ["sqlite"] + (["postgresql"] if PG_URL else [])
CACHES = ["memory"] + (["redis"] if REDIS_URL else [])


def pytest_report_header() -> list[str]:
    return [f"reco stores: {', '.join(STORES)}; caches: {', '.join(CACHES)}; CI={IN_CI}"]


def pytest_sessionstart(session: pytest.Session) -> None:
    if IN_CI and not (PG_URL and REDIS_URL):
        raise pytest.UsageError("CI=true needs RECO_TEST_DATABASE_URL and RECO_TEST_REDIS_URL (see .ci/run)")


@pytest.fixture(scope="session")
def pg_database() -> Iterator[str]:
    """A private PostgreSQL database for this test session, migrated once, dropped at the end."""
    assert PG_URL, "RECO_TEST_DATABASE_URL is not set"
    name = f"reco_test_{uuid.uuid4().hex[:10]}"
    base = make_url(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))
    admin = sa.create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    url = base.set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    engine = make_engine(Settings(database_url=url))
    upgrade(engine)
    engine.dispose()
    yield url
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate(url: str) -> None:
    engine = make_engine(Settings(database_url=url))
    with engine.begin() as conn:
        tables = [t for t in sa.inspect(conn).get_table_names() if t not in TABLES_TO_KEEP]
        conn.execute(sa.text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(params=STORES)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A migrated, empty database: SQLite in tmp_path, or the session's PostgreSQL database truncated."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'reco.db'}"
        engine = make_engine(Settings(database_url=url))
        upgrade(engine)
        engine.dispose()
        return url
    url = request.getfixturevalue("pg_database")
    _truncate(url)
    return url


_RUN = uuid.uuid4().hex[:8]  # this test run's part of every Redis key: runs sharing one Redis never collide


@pytest.fixture
def redis_prefix(request: pytest.FixtureRequest) -> Iterator[str]:
    """The test's own Redis key prefix (RECO_REDIS_PREFIX); its keys are deleted afterwards."""
    prefix = f"test:{_RUN}:{hashlib.blake2b(request.node.nodeid.encode(), digest_size=6).hexdigest()}:"
    yield prefix
    if REDIS_URL:
        client = redis.Redis.from_url(REDIS_URL, socket_timeout=2)
        try:
            keys = list(client.scan_iter(match=prefix + "*", count=1000))
            if keys:
                client.delete(*keys)
        except redis.RedisError:
            pass
        finally:
            client.close()


@pytest.fixture(params=CACHES)
def cache_url(request: pytest.FixtureRequest) -> str | None:
    """None (in-process cache) or the test Redis (keys under the test's own `redis_prefix`)."""
    if request.param == "memory":
        return None
    assert REDIS_URL
    return REDIS_URL


@pytest.fixture
def cache(cache_url: str | None, redis_prefix: str) -> Iterator[Cache]:
    """A cache of each kind."""
    impl: Cache = RedisCache(cache_url, prefix=redis_prefix) if cache_url else MemoryCache()
    yield impl
    impl.close()


@pytest.fixture
def settings(database_url: str, cache_url: str | None, redis_prefix: str, tmp_path: Path) -> Settings:
    """Settings for one test: its store, its cache, static keys of each scope."""
    return Settings(
        database_url=database_url,
        redis_url=cache_url,
        redis_prefix=redis_prefix,
        artifact_dir=tmp_path / "artifacts",
        api_keys=STATIC_KEYS,  # type: ignore[arg-type]
        embedded_worker=False,
    )


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A TestClient over a fresh app (lifespan run), authenticated as admin by default."""
    app = create_app(settings)
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


def auth(key: str) -> dict[str, str]:
    """Headers for one request with another key."""
    return {"Authorization": f"Bearer {key}"}
