"""The same event_id from two clients at once, against a real `reco serve` (two worker processes on
PostgreSQL): stored once, counted once as a duplicate (on SQLite and PostgreSQL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from app.db.engine import make_engine
from app.settings import Settings
from tests.conftest import INGEST_KEY, STATIC_KEYS
from tests.helpers.servers import uvicorn_server


@pytest.fixture
def server(database_url: str) -> Iterator[str]:
    """`reco serve` on the test's store: two worker processes on PostgreSQL (as in production), one on SQLite
    (its threads still race; a second worker would only double the slow start)."""
    env = {
        "RECO_DATABASE_URL": database_url,
        "RECO_API_KEYS": STATIC_KEYS,
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_LOG_LEVEL": "WARNING",
    }
    with uvicorn_server(env, workers=1 if database_url.startswith("sqlite") else 2) as base:
        yield base


def count_rows(database_url: str) -> tuple[int, int]:
    """(events, distinct event_ids) in the store."""
    engine = make_engine(Settings(database_url=database_url))
    with engine.connect() as conn:
        row = conn.execute(sa.text("SELECT count(*), count(DISTINCT event_id) FROM events")).one()
    engine.dispose()
    return int(row[0]), int(row[1])


def post_together(base: str, batches: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Send each batch from its own thread and connection, released at the same instant."""
    barrier = threading.Barrier(len(batches))
    results: list[dict[str, Any]] = [{} for _ in batches]

    def send(slot: int) -> None:
        with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {INGEST_KEY}"}, timeout=30) as c:
            c.get("/healthz")  # connection open before the race
            barrier.wait()
            r = c.post("/v1/events", json={"events": batches[slot]})
            results[slot] = {"status": r.status_code, **r.json()}

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(batches))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results


def events(ids: range, user_of: int = 7) -> list[dict[str, Any]]:
    """Events e<id>, spread over a few users and items."""
    return [
        {"event_id": f"e{i}", "user_id": f"u{i % user_of}", "item_id": f"i{i % 11}", "type": "click"}
        for i in ids
    ]


def test_same_event_ids_from_two_clients_at_once_are_stored_once(server: str, database_url: str) -> None:
    # the same batch from both clients, twice (one server start covers every race: it is the slow part)
    for round_ in range(2):
        ids = range(round_ * 300, round_ * 300 + 300)
        results = post_together(server, [events(ids), events(ids)])
        assert [r["status"] for r in results] == [200, 200], results
        assert sum(r["accepted"] for r in results) == 300
        assert sum(r["duplicates"] for r in results) == 300
    assert count_rows(database_url) == (600, 600)

    # overlapping batches in opposite orders: neither a deadlock nor a double
    first = events(range(1000, 1400))
    second = list(reversed(events(range(1200, 1600))))  # 200 shared ids
    results = post_together(server, [first, second])
    assert [r["status"] for r in results] == [200, 200], results
    assert sum(r["accepted"] for r in results) == 600
    assert sum(r["duplicates"] for r in results) == 200
    assert all(r["rejected"] == [] for r in results)
    assert count_rows(database_url) == (1200, 1200)

    # a retry after the race: every id already there
    again = post_together(server, [first])
    assert again[0]["accepted"] == 0 and again[0]["duplicates"] == 400
    assert count_rows(database_url) == (1200, 1200)
