"""A real `reco serve` (SQLite, the embedded trainer, small fast training) that the client tests talk to."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.servers import FAST_TRAINING, uvicorn_server

ADMIN_KEY = "client-tests-admin-key-000000000"
READ_KEY = "client-tests-read-key-0000000000"


@dataclass
class Server:
    base: str
    db: Path

    def stored(self, prefix: str) -> tuple[int, int]:
        """(rows, distinct event_ids) of the events whose event_id starts with `prefix`."""
        with sqlite3.connect(self.db, timeout=10) as conn:
            rows, distinct = conn.execute(
                "SELECT count(*), count(DISTINCT event_id) FROM events WHERE event_id LIKE ?", (prefix + "%",)
            ).fetchone()
        return int(rows), int(distinct)

    def impressions(self, recommendation_id: str) -> int:
        with sqlite3.connect(self.db, timeout=10) as conn:
            (n,) = conn.execute(
                "SELECT count(*) FROM impressions WHERE recommendation_id = ?", (recommendation_id,)
            ).fetchone()
        return int(n)

    def stored_for_user(self, user_id: str) -> int:
        with sqlite3.connect(self.db, timeout=10) as conn:
            (n,) = conn.execute("SELECT count(*) FROM events WHERE user_id = ?", (user_id,)).fetchone()
        return int(n)


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    tmp = tmp_path_factory.mktemp("client-server")
    db = tmp / "reco.db"
    env = {
        "RECO_DATABASE_URL": f"sqlite:///{db}",
        "RECO_ARTIFACT_DIR": str(tmp / "artifacts"),
        "RECO_API_KEYS": f"{ADMIN_KEY}:admin,{READ_KEY}:read",
        "RECO_EMBEDDED_WORKER": "true",
        "RECO_WORKER_POLL_SECONDS": "0.5",
        "RECO_MODEL_POLL_SECONDS": "0.5",
        "RECO_GATE_TOLERANCE": "1",
        "RECO_LOG_LEVEL": "WARNING",
        **FAST_TRAINING,
    }
    with uvicorn_server(env) as base:
        yield Server(base=base, db=db)
