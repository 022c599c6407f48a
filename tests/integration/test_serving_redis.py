"""Serving with a Redis cache that is stopped mid-test: answers keep coming, uncached and fresh."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.api.test_recommend import QUIET, state_of
from tests.conftest import ADMIN_KEY, READ_KEY, auth
from tests.serving_support import load_shop, register, trained


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def redis_server() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A private redis-server on a free port (no persistence), killed at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed")
    port = _free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                raise
            time.sleep(0.05)
    yield proc, port
    proc.kill()
    proc.wait(timeout=10)


def test_redis_stopped_mid_test_still_answers(
    redis_server: tuple[subprocess.Popen[bytes], int], tmp_path: object, database_url: str
) -> None:
    proc, port = redis_server
    settings = Settings(
        database_url=database_url,
        redis_url=f"redis://127.0.0.1:{port}/0",
        artifact_dir=tmp_path / "artifacts",  # type: ignore[operator]
        api_keys=f"{ADMIN_KEY}:admin,{READ_KEY}:read",  # type: ignore[arg-type]
        **QUIET,  # type: ignore[arg-type]
    )
    with TestClient(create_app(settings), headers=auth(READ_KEY)) as client:
        state = state_of(client)
        assert state.cache.name == "redis"
        load_shop(state.sessions)
        register(state.sessions, settings.artifact_dir, trained(0), "v1")
        state.registry.refresh_now()
        state.popular.poll()
        url = "/v1/users/u1/recommendations"
        first = client.get(url)
        assert first.headers["x-cache"] == "miss"
        assert client.get(url).headers["x-cache"] == "hit"
        errors_before = state.cache.stats.errors

        proc.kill()
        proc.wait(timeout=10)
        down = client.get(url)
        assert down.status_code == 200 and down.headers["x-cache"] == "miss"
        assert down.json()["items"] == first.json()["items"]
        assert down.json()["recommendation_id"] != first.json()["recommendation_id"]
        assert state.cache.stats.errors > errors_before  # counted (and logged), never raised
        now = datetime.now(UTC).isoformat()
        events = [
            {"user_id": "u1", "item_id": f"cat3-item{j}", "type": "click", "timestamp": now} for j in range(8)
        ]
        assert client.post("/v1/events", json={"events": events}, headers=auth(ADMIN_KEY)).status_code == 200
        after = client.get(url).json()  # fresh even without the cache: computed from the store
        cat3_before = sum(i["item_id"].startswith("cat3-") for i in first.json()["items"])
        assert sum(i["item_id"].startswith("cat3-") for i in after["items"]) >= cat3_before + 3
        assert client.get("/v1/popular").status_code == 200
        assert client.get("/v1/items/cat1-item3/similar").status_code == 200
        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["checks"]["cache"].startswith("unavailable")
