"""Key administration: GET/POST /v1/admin/keys and DELETE /v1/admin/keys/{id} (admin scope); the secret is
shown only in the creation answer; a revocation holds at once in the process that revoked, even for a key it
had just verified (and memoized); `reco keys list` / `revoke` from the command line."""

from __future__ import annotations

import os
import subprocess

from fastapi.testclient import TestClient

from tests.conftest import ADMIN_KEY, READ_KEY, auth
from tests.helpers.servers import RECO, ROOT


def test_create_list_revoke_at_once(client: TestClient) -> None:
    made = client.post("/v1/admin/keys", json={"scopes": ["read"], "name": "shop"}, headers=auth(ADMIN_KEY))
    assert made.status_code == 201, made.text
    secret, key_id = made.json()["key"], made.json()["id"]
    assert client.get("/v1/popular", headers=auth(secret)).status_code == 200  # verified and memoized
    listed = client.get("/v1/admin/keys", headers=auth(ADMIN_KEY)).json()["keys"]
    assert [k["id"] for k in listed] == [key_id] and "key" not in listed[0] and "key_hash" not in listed[0]
    assert secret not in str(listed)
    gone = client.delete(f"/v1/admin/keys/{key_id}", headers=auth(ADMIN_KEY))
    assert gone.status_code == 200 and gone.json()["revoked_at"]
    assert client.get("/v1/popular", headers=auth(secret)).status_code == 401  # at once, despite the memo
    assert client.delete("/v1/admin/keys/999999", headers=auth(ADMIN_KEY)).status_code == 404


def test_key_routes_need_admin_and_valid_scopes(client: TestClient) -> None:
    assert client.get("/v1/admin/keys", headers=auth(READ_KEY)).status_code == 403
    bad = client.post("/v1/admin/keys", json={"scopes": ["root"]}, headers=auth(ADMIN_KEY))
    assert bad.status_code == 422 and "scopes" in bad.json()["error"]["message"]
    assert client.delete("/v1/admin/keys/abc", headers=auth(ADMIN_KEY)).status_code == 422


def test_cli_list_and_revoke(database_url: str, client: TestClient) -> None:
    made = client.post("/v1/admin/keys", json={"scopes": "ingest,read"}, headers=auth(ADMIN_KEY)).json()
    env = {**os.environ, "RECO_DATABASE_URL": database_url, "PYTHONPATH": str(ROOT)}
    listed = subprocess.run(
        [*RECO, "keys", "list"], env=env, capture_output=True, text=True, check=True
    ).stdout
    assert made["prefix"] in listed and made["key"] not in listed
    done = subprocess.run(
        [*RECO, "keys", "revoke", str(made["id"])], env=env, capture_output=True, text=True, check=True
    )
    assert "revoked" in done.stdout
    assert client.get("/v1/popular", headers=auth(made["key"])).status_code == 401  # never verified here
