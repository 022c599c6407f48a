"""Users: PUT, GET with the latest events newest first, DELETE erases the user, its events and its cache."""

from __future__ import annotations

import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.cache import Cache
from app.cache import keys as cache_keys
from app.db.engine import make_engine
from app.settings import Settings


def app_cache(client: TestClient) -> Cache:
    """The cache the app's lifespan built (memory or Redis, as the test's settings say)."""
    cache: Cache = client.app_state["app"].cache
    return cache


def test_put_creates_and_replaces_attributes(client: TestClient) -> None:
    r = client.put("/v1/users/u1", json={"attributes": {"country": "fr", "tier": 2}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["user_id"] == "u1" and body["attributes"] == {"country": "fr", "tier": 2}
    assert body["event_count"] == 0 and body["latest_events"] == []
    again = client.put("/v1/users/u1", json={"attributes": {"country": "de"}}).json()
    assert again["attributes"] == {"country": "de"}
    assert again["created_at"] == body["created_at"]
    assert client.put("/v1/users/u2", json={}).json()["attributes"] == {}


def test_put_bad_bodies_are_422(client: TestClient) -> None:
    for body, where in (({"attributes": 5}, "attributes"), ({"name": "x"}, "name"), ([1], "body")):
        r = client.put("/v1/users/u1", json=body)
        assert r.status_code == 422, body
        assert r.json()["error"]["message"].startswith(where)
    assert client.put("/v1/users/" + "u" * 257, json={}).status_code == 422
    assert client.get("/v1/users/u1").status_code == 404


def test_get_shows_count_and_latest_events_newest_first(client: TestClient) -> None:
    stamps = ["2026-11-20T10:00:00Z", "2026-11-22T10:00:00Z", "2026-11-21T10:00:00Z", "2026-11-23T10:00:00Z"]
    events = [
        {"event_id": f"e{n}", "user_id": "u1", "item_id": f"i{n}", "type": "view", "timestamp": ts}
        for n, ts in enumerate(stamps)
    ]
    events.append({"event_id": "other", "user_id": "u2", "item_id": "i9", "type": "click"})
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 5
    user = client.get("/v1/users/u1").json()
    assert user["event_count"] == 4
    assert [e["event_id"] for e in user["latest_events"]] == ["e3", "e1", "e2", "e0"]
    assert user["latest_events"][0] == {
        "event_id": "e3",
        "item_id": "i3",
        "type": "view",
        "value": None,
        "timestamp": "2026-11-23T10:00:00Z",
    }
    two = client.get("/v1/users/u1", params={"events_limit": 2}).json()
    assert [e["event_id"] for e in two["latest_events"]] == ["e3", "e1"] and two["event_count"] == 4
    assert client.get("/v1/users/u1", params={"events_limit": 0}).json()["latest_events"] == []
    assert client.get("/v1/users/u1", params={"events_limit": 5000}).status_code == 422
    missing = client.get("/v1/users/nobody")
    assert missing.status_code == 404 and missing.json()["error"]["message"] == "user 'nobody' not found"


def test_delete_erases_user_events_and_cached_answers(client: TestClient, settings: Settings) -> None:
    events = [{"event_id": f"a{n}", "user_id": "u1", "item_id": f"i{n}", "type": "view"} for n in range(5)]
    events += [{"event_id": f"b{n}", "user_id": "u10", "item_id": f"i{n}", "type": "view"} for n in range(3)]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 8
    client.put("/v1/users/u1", json={"attributes": {"email_hash": "abc"}})

    cache = app_cache(client)
    mine = [
        cache_keys.recommendations("u1", "v1", "k=10"),
        cache_keys.recommendations("u1", "v2", "k=5"),
        cache_keys.user_history_prefix("u1") + "0",
    ]
    theirs = cache_keys.recommendations("u10", "v1", "k=10")  # `u1` is a prefix of `u10`: it must stay
    for key in [*mine, theirs]:
        cache.set(key, b"[...]", 300)
    generation = cache_keys.user_generation("u1")
    before = cache.get_many([generation])[0]

    assert client.delete("/v1/users/u1").status_code == 204

    assert client.get("/v1/users/u1").status_code == 404
    assert cache.get_many(mine) == [None, None, None]
    assert cache.get(theirs) == b"[...]"
    assert cache.get_many([generation])[0] != before  # answers stamped with the old generation are unusable
    engine = make_engine(settings)
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT user_id, count(*) FROM events GROUP BY user_id")).all()
        users = conn.execute(sa.text("SELECT user_id FROM users ORDER BY user_id")).scalars().all()
        items = conn.execute(sa.text("SELECT count(*) FROM items")).scalar_one()
    engine.dispose()
    assert [tuple(r) for r in left] == [("u10", 3)]
    assert users == ["u10"]
    assert items == 5  # items are the catalog's, not the user's
    assert client.get("/v1/users/u10").json()["event_count"] == 3

    assert client.delete("/v1/users/u1").status_code == 404
    # the same id may come back later as a new, empty user
    client.post("/v1/events", json={"events": [{"user_id": "u1", "item_id": "i1", "type": "view"}]})
    assert client.get("/v1/users/u1").json()["event_count"] == 1


def test_delete_of_a_user_known_only_by_events(client: TestClient) -> None:
    client.post("/v1/events", json={"events": [{"user_id": "ghost", "item_id": "i1", "type": "view"}]})
    assert client.delete("/v1/users/ghost").status_code == 204
    assert client.get("/v1/users/ghost").status_code == 404
