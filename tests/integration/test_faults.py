"""Faults: PostgreSQL cut mid-run (503 naming the database, then the retry stores every event once);
Redis cut (ingestion unaffected, reads degrade, /metrics counts the errors). A TCP proxy the test owns is
cut, never the shared servers."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy.engine import make_url

from app.api.app import create_app
from app.cache import keys as cache_keys
from app.db.engine import make_engine
from app.settings import Settings
from tests.conftest import ADMIN_KEY, PG_URL, STATIC_KEYS, _truncate
from tests.helpers.proxy import TcpProxy
from tests.helpers.servers import private_redis


@pytest.fixture
def pg_behind_proxy(pg_database: str) -> Iterator[tuple[str, TcpProxy]]:
    """The session's PostgreSQL database, emptied, reached through a proxy the test can cut."""
    _truncate(pg_database)
    url = make_url(pg_database)
    with TcpProxy(url.host or "127.0.0.1", url.port or 5432) as proxy:
        proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
        yield proxied, proxy


def make_client(tmp_path: Any, **overrides: Any) -> TestClient:
    """A TestClient over an app with these settings, authenticated as admin."""
    settings = Settings(
        artifact_dir=tmp_path / "artifacts",
        api_keys=STATIC_KEYS,  # type: ignore[arg-type]
        embedded_worker=False,
        **overrides,
    )
    return TestClient(create_app(settings), headers={"Authorization": f"Bearer {ADMIN_KEY}"})


def batch(start: int, n: int) -> dict[str, Any]:
    """Events e<start>..e<start+n-1>."""
    return {
        "events": [
            {"event_id": f"e{i}", "user_id": f"u{i % 13}", "item_id": f"i{i % 29}", "type": "view"}
            for i in range(start, start + n)
        ]
    }


def stored(database_url: str) -> tuple[int, int]:
    """(rows, distinct event ids) in events, read around the proxy."""
    engine = make_engine(Settings(database_url=database_url))
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT count(*), count(DISTINCT event_id) FROM events")).one()
    engine.dispose()
    return int(row[0]), int(row[1])


needs_pg = pytest.mark.skipif(not PG_URL, reason="RECO_TEST_DATABASE_URL is not set")


@needs_pg
def test_database_cut_answers_503_quickly_and_the_retry_stores_once(
    pg_behind_proxy: tuple[str, TcpProxy], pg_database: str, tmp_path: Any
) -> None:
    proxied, proxy = pg_behind_proxy
    with make_client(tmp_path, database_url=proxied) as client:
        assert client.post("/v1/events", json=batch(0, 100)).json()["accepted"] == 100

        proxy.cut()
        started = time.monotonic()
        r = client.post("/v1/events", json=batch(100, 100))
        assert time.monotonic() - started < 5, "a dead database must not hang the request"
        assert r.status_code == 503, r.text
        error = r.json()["error"]
        assert error["code"] == "unavailable"
        assert "database" in error["message"]
        assert {"dependency": "database"} in error["details"]
        assert r.headers["retry-after"] == "1"

        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "database" in ready.json()["error"]["message"]
        assert client.get("/healthz").status_code == 200  # the process itself is fine

        proxy.restore()
        retry = client.post("/v1/events", json=batch(100, 100))
        assert retry.status_code == 200, retry.text
        assert retry.json() == {"accepted": 100, "duplicates": 0, "rejected": []}
        assert client.post("/v1/events", json=batch(100, 100)).json()["duplicates"] == 100
        assert client.get("/readyz").status_code == 200
    assert stored(pg_database) == (200, 200)


@needs_pg
def test_database_cut_during_a_stream_of_batches_loses_and_doubles_nothing(
    pg_behind_proxy: tuple[str, TcpProxy], pg_database: str, tmp_path: Any
) -> None:
    proxied, proxy = pg_behind_proxy
    statuses: list[int] = []

    def outage() -> None:
        time.sleep(0.3)
        proxy.cut()  # connections die wherever they are: mid-insert, mid-commit, idle in the pool
        time.sleep(1.0)
        proxy.restore()

    n_batches, size = 40, 50
    with make_client(tmp_path, database_url=proxied) as client:
        cutter = threading.Thread(target=outage)
        cutter.start()
        for b in range(n_batches):
            deadline = time.monotonic() + 20
            while True:  # the client's retry loop: resend the same batch until acknowledged
                r = client.post("/v1/events", json=batch(b * size, size))
                statuses.append(r.status_code)
                if r.status_code == 200:
                    break
                assert r.status_code == 503, r.text
                assert r.json()["error"]["code"] == "unavailable"
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.02)
        cutter.join()
    assert 503 in statuses, "the outage was not seen: the test proves nothing"
    assert set(statuses) <= {200, 503}
    assert stored(pg_database) == (n_batches * size, n_batches * size)


@pytest.fixture
def redis_behind_proxy() -> Iterator[tuple[str, TcpProxy, int]]:
    """A private redis-server behind a proxy: (URL through the proxy, proxy, direct port)."""
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with private_redis() as (_, port), TcpProxy("127.0.0.1", port) as proxy:
        yield f"redis://127.0.0.1:{proxy.port}/0", proxy, port


def cache_errors(client: TestClient) -> float:
    """reco_cache_errors{backend="redis"} from /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('reco_cache_errors_total{backend="redis"}'):  # a counter since issue 11
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("reco_cache_errors is not exported")


def test_redis_cut_leaves_ingestion_working_and_is_counted(
    database_url: str, redis_behind_proxy: tuple[str, TcpProxy, int], tmp_path: Any
) -> None:
    url, proxy, direct_port = redis_behind_proxy
    direct = redis.Redis(port=direct_port)
    with make_client(tmp_path, database_url=database_url, redis_url=url) as client:
        assert client.post("/v1/events", json=batch(0, 10)).json()["accepted"] == 10
        assert cache_errors(client) == 0
        assert (
            direct.get(cache_keys.user_generation("u1")) == b"1"
        )  # the user's generation was bumped in Redis

        proxy.cut()
        started = time.monotonic()
        r = client.post("/v1/events", json=batch(10, 10))
        assert time.monotonic() - started < 3
        assert r.status_code == 200 and r.json()["accepted"] == 10
        assert client.post("/v1/events", json=batch(20, 10)).json()["accepted"] == 10  # breaker open: fast
        assert client.get("/v1/users/u1").json()["event_count"] == 3  # reads from the store still answer
        ready = client.get("/readyz")
        assert ready.status_code == 200, "a missing cache degrades, it does not make the service unready"
        assert ready.json()["checks"]["cache"].startswith("unavailable")
        assert cache_errors(client) >= 2

        proxy.restore()
        time.sleep(1.1)  # past the circuit breaker's pause
        assert client.post("/v1/events", json=batch(30, 10)).json()["accepted"] == 10
        # writes were missed while Redis was away: every cached answer is made unreachable once
        assert direct.get(cache_keys.EPOCH) == b"1"
        assert client.get("/readyz").json()["checks"]["cache"] == "ok"
        assert client.get("/v1/users/u1").json()["event_count"] == 3  # e1, e14, e27
    direct.close()


def test_redis_killed_ingestion_unaffected(database_url: str, tmp_path: Any) -> None:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed")
    with private_redis() as (proc, port):
        with make_client(
            tmp_path, database_url=database_url, redis_url=f"redis://127.0.0.1:{port}/0"
        ) as client:
            assert client.post("/v1/events", json=batch(0, 10)).json()["accepted"] == 10
            proc.kill()
            proc.wait(timeout=10)
            r = client.post("/v1/events", json=batch(10, 10))
            assert r.status_code == 200 and r.json()["accepted"] == 10
            assert client.delete("/v1/users/u1").status_code == 204  # erasure still works without the cache
            assert cache_errors(client) >= 1
        assert stored(database_url)[0] == 20 - 2  # u1 had e1 and e14


@needs_pg
def test_service_starts_with_the_database_down_and_recovers(
    pg_behind_proxy: tuple[str, TcpProxy], tmp_path: Any
) -> None:
    proxied, proxy = pg_behind_proxy
    proxy.cut()
    with make_client(tmp_path, database_url=proxied) as client:  # the lifespan must not crash
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "database" in ready.json()["error"]["message"]
        assert client.post("/v1/events", json=batch(0, 10)).status_code == 503
        proxy.restore()
        deadline = time.monotonic() + 20  # the background pollers catch up within their intervals
        while client.get("/readyz").status_code != 200:
            assert time.monotonic() < deadline, client.get("/readyz").text
            time.sleep(0.2)
        assert client.post("/v1/events", json=batch(0, 10)).json()["accepted"] == 10
        popular = client.get("/v1/popular?k=3")
        assert popular.status_code == 200, popular.text
