"""API keys: 401 without or with an unknown key, 403 without the scope, keys made by `reco keys create`
work, are stored hashed and never appear in logs."""

from __future__ import annotations

import logging
import os
import subprocess
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.auth.keys import digest
from app.db.engine import make_engine
from app.settings import Settings
from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY, auth
from tests.helpers.servers import RECO, ROOT

EVENT = {"events": [{"user_id": "u1", "item_id": "i1", "type": "view"}]}


def create_key_with_cli(database_url: str, scopes: str) -> str:
    """Run `reco keys create --scopes ...` in a subprocess; the key is the last line of its output."""
    env = {**os.environ, "RECO_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [*RECO, "keys", "create", "--scopes", scopes, "--name", "from-test"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout.strip().splitlines()[-1]


def test_missing_key_is_401(client: TestClient) -> None:
    for headers in ({"Authorization": ""}, {"Authorization": "Bearer "}, {"Authorization": "Basic abc"}):
        r = client.post("/v1/events", json=EVENT, headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["error"]["code"] == "unauthorized"
        assert r.headers["www-authenticate"] == "Bearer"
    assert client.get("/v1/users/u1", headers={"Authorization": ""}).status_code == 401


def test_unknown_key_is_401(client: TestClient) -> None:
    r = client.post("/v1/events", json=EVENT, headers=auth("reco_not-a-key-that-exists-anywhere"))
    assert r.status_code == 401
    assert r.json()["error"]["message"] == "unknown or revoked API key"
    assert client.get("/v1/users/u1").status_code == 404  # nothing was stored


def test_key_without_the_scope_is_403(client: TestClient) -> None:
    r = client.post("/v1/events", json=EVENT, headers=auth(READ_KEY))
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "forbidden"
    assert "`ingest` scope" in r.json()["error"]["message"]
    assert client.put("/v1/items/i1", json={}, headers=auth(READ_KEY)).status_code == 403
    assert client.put("/v1/users/u1", json={}, headers=auth(READ_KEY)).status_code == 403
    assert client.get("/v1/items/i1", headers=auth(INGEST_KEY)).status_code == 403
    assert client.get("/v1/items", headers=auth(INGEST_KEY)).status_code == 403
    assert client.get("/v1/users/u1", headers=auth(INGEST_KEY)).status_code == 403


def test_deleting_a_user_needs_admin(client: TestClient) -> None:
    assert client.post("/v1/events", json=EVENT, headers=auth(INGEST_KEY)).json()["accepted"] == 1
    r = client.delete("/v1/users/u1", headers=auth(INGEST_KEY))
    assert r.status_code == 403
    assert "`admin` scope" in r.json()["error"]["message"]
    assert client.delete("/v1/users/u1", headers=auth(READ_KEY)).status_code == 403
    assert client.get("/v1/users/u1", headers=auth(READ_KEY)).json()["event_count"] == 1
    assert client.delete("/v1/users/u1", headers=auth(ADMIN_KEY)).status_code == 204


def test_admin_may_do_everything(client: TestClient) -> None:
    assert client.post("/v1/events", json=EVENT).status_code == 200
    assert client.get("/v1/users/u1").status_code == 200
    assert client.get("/v1/items").status_code == 200


def test_ops_routes_need_no_key(client: TestClient) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert client.get(path, headers={"Authorization": ""}).status_code == 200, path


def test_cli_key_works_is_stored_hashed_never_logged_and_revocable(
    database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    key = create_key_with_cli(database_url, "ingest,read")
    assert key.startswith("reco_") and len(key) > 30

    settings = Settings(database_url=database_url, artifact_dir=tmp_path / "artifacts", embedded_worker=False)
    engine = make_engine(settings)
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT key_hash, prefix, scopes, name FROM api_keys")).all()
    assert len(rows) == 1
    key_hash, prefix, scopes, name = rows[0]
    assert key_hash == digest(key) and key_hash != key
    assert key not in key_hash and len(prefix) < len(key) // 2
    assert scopes == "ingest,read" and name == "from-test"

    caplog.set_level(logging.DEBUG)
    with TestClient(create_app(settings)) as c:  # no static keys: only the database knows this key
        assert c.post("/v1/events", json=EVENT, headers=auth(key)).json()["accepted"] == 1
        assert c.get("/v1/users/u1", headers=auth(key)).json()["event_count"] == 1
        assert c.delete("/v1/users/u1", headers=auth(key)).status_code == 403  # no admin scope
        assert c.post("/v1/events", json={"events": "x"}, headers=auth(key)).status_code == 422
        assert c.get("/v1/users/u1", headers=auth(key + "x")).status_code == 401
        assert c.get("/v1/users/u1", headers=auth(ADMIN_KEY)).status_code == 401  # static keys are off
    logged = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert caplog.records, "the requests logged nothing at all: the check below would be empty"
    assert key not in logged
    assert key[12:] not in logged

    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE api_keys SET revoked_at = CURRENT_TIMESTAMP"))
    engine.dispose()
    with TestClient(create_app(settings)) as c:
        assert c.get("/v1/items", headers=auth(key)).status_code == 401
