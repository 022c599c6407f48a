"""Publishable keys: only events and recommendation reads, only from their origins (CORS answered for those
alone), and under RECO_REQUIRE_USER_TOKEN only for the signed token's user; `reco keys create --publishable`
and `reco keys user-token` from the command line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.auth import user_tokens
from app.cli import main
from app.settings import Settings
from tests.conftest import ADMIN_KEY, INGEST_KEY, STATIC_KEYS, auth

SHOP = "https://shop.example"
EVIL = "https://evil.example"
SECRET = "test-user-token-secret-0123456789"


def _settings(tmp_path: Path, **extra: object) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path / 'reco.db'}",
        artifact_dir=tmp_path / "artifacts",
        api_keys=STATIC_KEYS,  # type: ignore[arg-type]
        embedded_worker=False,
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path))) as c:
        yield c


@pytest.fixture
def token_client(tmp_path: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_settings(tmp_path, require_user_token=True, user_token_secret=SECRET))) as c:
        yield c


def _publishable(client: TestClient, origins: list[str] | None = None) -> str:
    made = client.post(
        "/v1/admin/keys",
        json={"publishable": True, "origins": origins or [SHOP], "name": "web"},
        headers=auth(ADMIN_KEY),
    )
    assert made.status_code == 201, made.text
    body = made.json()
    assert body["key"].startswith("pk_") and body["kind"] == "publishable"
    assert body["allowed_origins"] == (origins or [SHOP])
    return str(body["key"])


def _event(user: str, item: str = "i1") -> dict[str, object]:
    return {"user_id": user, "item_id": item, "type": "view"}


def test_publishable_key_reaches_events_and_recommendations_only(app_client: TestClient) -> None:
    pk = _publishable(app_client)
    h = auth(pk)
    sent = app_client.post("/v1/events", json={"events": [_event("u1"), _event("u2", "i2")]}, headers=h)
    assert sent.status_code == 200 and sent.json()["accepted"] == 2, sent.text
    assert app_client.get("/v1/users/u1/recommendations?k=3", headers=h).status_code == 200
    assert app_client.post("/v1/recommendations", json={"recent_items": ["i1"]}, headers=h).status_code == 200
    assert app_client.get("/v1/popular", headers=h).status_code == 200
    assert app_client.get("/v1/items/i1/similar", headers=h).status_code != 403  # reached (no model: 404/200)
    refused = [
        ("GET", "/v1/admin/models", None),
        ("POST", "/v1/admin/retrain", {}),
        ("GET", "/v1/admin/keys", None),
        ("POST", "/v1/admin/keys", {"scopes": ["admin"]}),
        ("GET", "/v1/admin/stats/overview", None),
        ("PUT", "/v1/admin/placements/home", {"rules": {}}),
        ("PUT", "/v1/items/i1", {"title": "x"}),
        ("POST", "/v1/items", {"items": [{"item_id": "i9"}]}),
        ("DELETE", "/v1/items/i1", None),
        ("PUT", "/v1/users/u1", {"attributes": {}}),
        ("GET", "/v1/users/u1", None),  # another user's data: history
        ("DELETE", "/v1/users/u1", None),  # erasure
        ("GET", "/v1/items", None),
    ]
    for method, path, body in refused:
        answer = app_client.request(method, path, json=body, headers=h)
        assert answer.status_code == 403, (method, path, answer.text)
        assert "publishable keys may only" in answer.json()["error"]["message"], (method, path)
    # nothing changed: the item is still there for a secret key, the user too
    assert app_client.get("/v1/users/u1", headers=auth(ADMIN_KEY)).json()["event_count"] == 1
    login = app_client.post("/dashboard/login", data={"key": pk}, follow_redirects=False)
    assert login.status_code == 200 and "neither" in login.text  # no dashboard session either


def test_cors_answered_for_the_keys_origins_only(app_client: TestClient) -> None:
    pk = _publishable(app_client)
    pre = {
        "Origin": SHOP,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization",
    }
    ok = app_client.options("/v1/users/u1/recommendations", headers=pre)
    assert ok.status_code == 204, ok.text
    assert ok.headers["access-control-allow-origin"] == SHOP
    assert "authorization" in ok.headers["access-control-allow-headers"]
    assert "x-reco-user-token" in ok.headers["access-control-allow-headers"]
    post = app_client.options("/v1/events", headers={"Origin": SHOP, "Access-Control-Request-Method": "POST"})
    assert post.status_code == 204 and "POST" in post.headers["access-control-allow-methods"]
    # another origin, or a route publishable keys may not use: refused, no CORS headers (the browser blocks)
    for path, origin, method in [
        ("/v1/popular", EVIL, "GET"),
        ("/v1/users/u1", SHOP, "DELETE"),
        ("/v1/admin/models", SHOP, "GET"),
        ("/v1/events", SHOP, "DELETE"),
    ]:
        no = app_client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method})
        assert no.status_code == 403, (path, origin, no.text)
        assert "access-control-allow-origin" not in no.headers
    assert (
        "not allowed by any publishable key"
        in app_client.options(
            "/v1/popular", headers={"Origin": EVIL, "Access-Control-Request-Method": "GET"}
        ).json()["error"]["message"]
    )
    # actual requests: the key's origin gets the header; another origin is a 403 without it
    got = app_client.get("/v1/popular", headers={**auth(pk), "Origin": SHOP})
    assert got.status_code == 200 and got.headers["access-control-allow-origin"] == SHOP
    assert "retry-after" in got.headers["access-control-expose-headers"] and "Origin" in got.headers["vary"]
    bad = app_client.get("/v1/popular", headers={**auth(pk), "Origin": EVIL})
    assert bad.status_code == 403 and "access-control-allow-origin" not in bad.headers
    assert "origin" in bad.json()["error"]["message"]
    # a second publishable key for another origin: the preflight opens for it, the first key still refuses it
    _publishable(app_client, ["http://localhost:3000"])
    other = {"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"}
    assert app_client.options("/v1/popular", headers=other).status_code == 204
    assert (
        app_client.get("/v1/popular", headers={**auth(pk), "Origin": "http://localhost:3000"}).status_code
        == 403
    )
    # secret keys: unchanged, and no CORS headers for them
    secret = app_client.get("/v1/popular", headers={**auth(ADMIN_KEY), "Origin": SHOP})
    assert secret.status_code == 200 and "access-control-allow-origin" not in secret.headers
    # without an Origin (a server or the Node client), a publishable key works and no CORS headers are sent
    plain = app_client.get("/v1/popular", headers=auth(pk))
    assert plain.status_code == 200 and "access-control-allow-origin" not in plain.headers


def test_key_in_the_query_for_beacons(app_client: TestClient) -> None:
    pk = _publishable(app_client)
    beacon = app_client.post(
        f"/v1/events?key={pk}",
        content=b'{"events": [{"user_id": "u1", "item_id": "i1", "type": "click"}]}',
        headers={"Content-Type": "text/plain;charset=UTF-8", "Origin": SHOP},
    )
    assert beacon.status_code == 200 and beacon.json()["accepted"] == 1, beacon.text
    secret = app_client.post(f"/v1/events?key={INGEST_KEY}", json={"events": [_event("u1")]})
    assert secret.status_code == 401 and "query.key" in secret.json()["error"]["message"]


def test_user_token_binds_the_user(token_client: TestClient) -> None:
    pk = _publishable(token_client)
    token = user_tokens.issue("u1", SECRET, 60)
    h = {**auth(pk), user_tokens.HEADER: token}
    missing = token_client.get("/v1/users/u1/recommendations", headers=auth(pk))
    assert missing.status_code == 401 and user_tokens.HEADER in missing.json()["error"]["message"]
    assert token_client.get("/v1/users/u1/recommendations", headers=h).status_code == 200
    other = token_client.get("/v1/users/u2/recommendations", headers=h)
    assert other.status_code == 403 and other.json()["error"]["message"].startswith("path.user_id")
    mixed = token_client.post("/v1/events", json={"events": [_event("u1"), _event("u2")]}, headers=h)
    assert mixed.status_code == 403 and mixed.json()["error"]["message"].startswith("events[1].user_id")
    assert token_client.get("/v1/users/u2", headers=auth(ADMIN_KEY)).status_code == 404  # nothing stored
    own = token_client.post("/v1/events", json={"events": [_event("u1"), _event("u1", "i2")]}, headers=h)
    assert own.status_code == 200 and own.json()["accepted"] == 2
    assert token_client.get("/v1/popular", headers=h).status_code == 200
    # expired, forged (another secret, an edited payload), garbage: 401
    expired = user_tokens.issue("u1", SECRET, 1, now=0)
    forged = user_tokens.issue("u1", "another-secret-0123456789", 60)
    _body, sig = user_tokens.issue("u2", SECRET, 60).split(".")
    edited = f"{user_tokens.issue('u1', SECRET, 60).split('.')[0]}.{sig}"
    for bad, words in [
        (expired, "expired"),
        (forged, "signature"),
        (edited, "signature"),
        ("x.y.z", "not a"),
    ]:
        answer = token_client.get(
            "/v1/users/u1/recommendations", headers={**auth(pk), user_tokens.HEADER: bad}
        )
        assert answer.status_code == 401 and words in answer.json()["error"]["message"], (bad, answer.text)
    # the token in the query (beacons), and secret keys are not asked for one
    query = token_client.post(
        f"/v1/events?key={pk}&user_token={token}",
        content=b'{"events": [{"user_id": "u1", "item_id": "i3", "type": "view"}]}',
    )
    assert query.status_code == 200, query.text
    assert token_client.get("/v1/users/u2/recommendations", headers=auth(ADMIN_KEY)).status_code == 200


def test_admin_route_validates_publishable_fields(app_client: TestClient) -> None:
    h = auth(ADMIN_KEY)
    for body, field in [
        ({"publishable": True}, "origins"),
        ({"publishable": True, "origins": ["shop.example"]}, "origins"),
        ({"publishable": True, "origins": ["https://shop.example/path"]}, "origins"),
        ({"publishable": True, "origins": [SHOP], "scopes": ["admin"]}, "scopes"),
        ({"scopes": ["read"], "origins": [SHOP]}, "origins"),
        ({"scopes": ["read"], "rate_limits": "read=fast"}, "rate_limits"),
        ({"publishable": "yes", "origins": [SHOP]}, "publishable"),
    ]:
        answer = app_client.post("/v1/admin/keys", json=body, headers=h)
        assert answer.status_code == 422, (body, answer.text)
        assert answer.json()["error"]["message"].startswith(field), (body, answer.text)
    listed = app_client.get("/v1/admin/keys", headers=h).json()["keys"]
    assert listed == []


def test_cli_creates_publishable_keys_and_user_tokens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _settings(tmp_path, require_user_token=True, user_token_secret=SECRET)
    monkeypatch.setenv("RECO_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RECO_USER_TOKEN_SECRET", SECRET)
    origins = f"{SHOP},http://localhost:8000"
    assert (
        main(["keys", "create", "--publishable", "--origins", origins, "--rate-limits", "events=10/s"]) == 0
    )
    pk = capsys.readouterr().out.strip().splitlines()[-1]
    assert pk.startswith("pk_")
    assert main(["keys", "user-token", "--user", "u7", "--ttl", "120"]) == 0
    token = capsys.readouterr().out.strip().splitlines()[-1]
    assert user_tokens.verify(token, SECRET) == "u7"
    with pytest.raises(SystemExit, match="--origins"):
        main(["keys", "create", "--publishable"])
    with pytest.raises(SystemExit, match="--origins"):
        main(["keys", "create", "--publishable", "--origins", "shop.example"])
    with TestClient(create_app(settings)) as c:
        h = {**auth(pk), user_tokens.HEADER: token, "Origin": "http://localhost:8000"}
        got = c.get("/v1/users/u7/recommendations", headers=h)
        assert (
            got.status_code == 200 and got.headers["access-control-allow-origin"] == "http://localhost:8000"
        )
        listed = c.get("/v1/admin/keys", headers=auth(ADMIN_KEY)).json()["keys"]
        assert listed[0]["kind"] == "publishable" and listed[0]["rate_limits"] == "events=10/s"
