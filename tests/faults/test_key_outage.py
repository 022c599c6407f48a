"""Reads that need no database survive a database outage (issue 11, item 5).

Proves: with PostgreSQL cut (a TCP proxy refusing and resetting connections), a key verified before the
outage is still accepted after its memory expired (within RECO_KEY_OUTAGE_GRACE_S), so an answer already in
the cache is served (200; the in-process cache's fence stays ready, so no X-Reco-Degraded header here), while a key never verified gets 503 naming the
database. Before, a failed key lookup ended in 503 once the 5 s memory expired. The fault is shown seen: the
proxy met connections while cut and the verifier counted keys accepted from memory.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.conftest import ADMIN_KEY, PG_URL, STATIC_KEYS, auth
from tests.helpers.proxy import TcpProxy

pytestmark = pytest.mark.skipif(not PG_URL, reason="RECO_TEST_DATABASE_URL is not set")
MEMO_S = 0.3


@pytest.fixture
def proxied(pg_database: str, tmp_path: Path) -> Iterator[tuple[TcpProxy, TestClient]]:
    from tests.conftest import _truncate

    _truncate(pg_database)
    parts = urlsplit(pg_database)
    with TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432) as proxy:
        netloc = f"{parts.username}@127.0.0.1:{proxy.port}" if parts.username else f"127.0.0.1:{proxy.port}"
        settings = Settings(
            database_url=urlunsplit(parts._replace(netloc=netloc)),
            redis_url=None,
            artifact_dir=tmp_path / "artifacts",
            api_keys=STATIC_KEYS,  # type: ignore[arg-type]
            embedded_worker=False,
            key_cache_seconds=MEMO_S,
            key_outage_grace_s=60,
        )
        with TestClient(create_app(settings)) as client:
            yield proxy, client


def test_verified_key_serves_cached_answer_through_outage(proxied: tuple[TcpProxy, TestClient]) -> None:
    proxy, client = proxied
    made = client.post("/v1/admin/keys", json={"scopes": ["read"]}, headers=auth(ADMIN_KEY))
    assert made.status_code == 201, made.text
    key = made.json()["key"]
    other = client.post("/v1/admin/keys", json={"scopes": ["read"]}, headers=auth(ADMIN_KEY)).json()["key"]
    events = [
        {"event_id": f"e{n}", "user_id": f"o{n}", "item_id": "i1", "type": "purchase"} for n in range(3)
    ]
    assert client.post("/v1/events", json={"events": events}, headers=auth(ADMIN_KEY)).status_code == 200
    url = "/v1/users/u1/recommendations?k=3"
    deadline = time.monotonic() + 10
    while client.get(url, headers=auth(key)).headers.get("X-Cache") != "hit":
        assert time.monotonic() < deadline, "the answer was never cached"
        time.sleep(0.05)
    verifier = client.app_state["app"].keys

    proxy.cut()
    time.sleep(MEMO_S + 0.1)  # the key's memory has expired: a lookup must go to the (cut) database
    served = client.get(url, headers=auth(key))
    unknown = client.get(url, headers=auth(other))  # a real key, but never verified by this process
    assert proxy.seen > 0, "the database was never reached while cut"
    assert verifier.outage_accepts >= 1, "the key was not accepted from memory: the outage was not met"
    assert served.status_code == 200, served.text
    assert served.headers["X-Cache"] == "hit"
    assert unknown.status_code == 503, unknown.text
    assert unknown.json()["error"]["details"] == [{"dependency": "database"}]
