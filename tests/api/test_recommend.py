"""Recommendations over HTTP on a tiny trained shop: personalisation, freshness, filters, fallbacks, cache."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.state import AppState
from app.cache import MemoryCache
from app.cache import keys as cache_keys
from app.db.tables import Item
from app.events.repository import latest_history, recent_events
from app.serving.recommender import RecParams
from app.settings import Settings
from tests.conftest import ADMIN_KEY, READ_KEY, auth
from tests.serving_support import load_shop, register, trained, world

QUIET = {"model_poll_seconds": 0, "catalog_poll_seconds": 0, "popular_poll_seconds": 0}


def state_of(client: TestClient) -> AppState:
    """The app's state (built by the lifespan)."""
    return client.app.state.reco  # type: ignore[attr-defined]


@pytest.fixture
def quiet_settings(settings: Settings) -> Settings:
    """The test's settings with every background poll off: the tests drive the registry themselves."""
    return settings.model_copy(update=QUIET)


@pytest.fixture
def empty(quiet_settings: Settings) -> Iterator[TestClient]:
    """A service with nothing in it."""
    with TestClient(create_app(quiet_settings), headers=auth(ADMIN_KEY)) as c:
        yield c


@pytest.fixture
def shop(quiet_settings: Settings) -> Iterator[TestClient]:
    """The synthetic shop (catalog + events) with model v1 active and loaded."""
    with TestClient(create_app(quiet_settings), headers=auth(READ_KEY)) as c:
        state = state_of(c)
        load_shop(state.sessions)
        register(state.sessions, quiet_settings.artifact_dir, trained(0), "v1")
        state.registry.refresh_now()
        state.registry.sync_catalog()
        state.popular.poll()
        yield c


def recs(client: TestClient, user: str, **params: object) -> dict:
    response = client.get(f"/v1/users/{user}/recommendations", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(answer: dict) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def category(item_id: str) -> str:
    return item_id.split("-")[0]


def seen_by(user: str) -> set[str]:
    log, _, _ = world(0)
    code = log.users.index(user)
    return {log.items[i] for i in log.item_codes[log.user_codes == code].tolist()}


def test_no_model_unknown_user_and_no_history_all_answer_popular(empty: TestClient) -> None:
    answer = recs(empty, "nobody", k=5)
    assert len(answer.pop("recommendation_id")) == 20  # 80 random bits, hex
    assert answer == {"user_id": "nobody", "model_version": None, "strategy": "popular", "items": []}
    state = state_of(empty)
    load_shop(state.sessions)
    state.registry.sync_catalog()
    state.popular.poll()
    answer = recs(empty, "u1", k=5)  # history, but no model yet
    assert answer["model_version"] is None and len(answer["items"]) == 5
    assert answer["strategy"] == "popular_category"  # popular in the category the user's items share
    assert {category(i) for i in ids(answer)} == {world(0)[2]["u1"]}
    assert not set(ids(answer)) & seen_by("u1")
    overall = recs(empty, "stranger", k=5)
    assert overall["strategy"] == "popular" and len(overall["items"]) == 5
    assert empty.get("/readyz").json()["checks"]["model"] == "ok"


def test_personalised_answer_follows_the_users_taste_and_skips_seen(shop: TestClient) -> None:
    favourite = world(0)[2]
    for user in ("u1", "u2", "u7"):
        answer = recs(shop, user, k=10)
        assert answer["strategy"] == "personalized" and answer["model_version"] == "v1"
        got = ids(answer)
        assert len(got) == 10 and len(set(got)) == 10
        assert not set(got) & seen_by(user)
        share = Counter(category(i) for i in got)[favourite[user]] / 10
        assert share >= 0.8, (user, got)
        scores = [item["score"] for item in answer["items"]]
        assert scores == sorted(scores, reverse=True)
    with_seen = ids(recs(shop, "u1", k=10, include_seen="true"))
    assert set(with_seen) & seen_by("u1")  # the user's own items rank high once allowed


def test_answer_matches_brute_force_numpy(shop: TestClient) -> None:
    state = state_of(shop)
    model = state.registry.current
    assert model is not None and model.index.kind == "flat"
    with state.sessions() as session:
        from_store = [(r.item_id, r.type) for r in reversed(recent_events(session, "u3", 50))]
    query = model.loaded.query_vector(from_store)
    assert query is not None
    table = model.index.vectors(np.arange(model.n_rows))  # [N, d+1]: trained rows and embedded cold items
    scores = table @ query  # [N]
    order = [model.item_ids[r] for r in np.argsort(-scores, kind="stable")]
    expected = [i for i in order if i not in seen_by("u3")][:20]
    answer = recs(shop, "u3", k=20)
    assert ids(answer) == expected
    np.testing.assert_allclose(
        [item["score"] for item in answer["items"]],
        [scores[model.row_of[i]] for i in expected],
        rtol=1e-4,
        atol=1e-4,
    )


def test_an_event_sent_a_moment_ago_changes_the_next_answer(shop: TestClient) -> None:
    user = "u0"
    before = recs(shop, user, k=10)
    assert shop.get(f"/v1/users/{user}/recommendations", params={"k": 10}).headers["x-cache"] == "hit"
    home = world(0)[2][user]
    other = next(c for c in ("cat0", "cat1", "cat2", "cat3") if c != home)
    now = datetime.now(UTC).isoformat()
    events = [
        {"user_id": user, "item_id": f"{other}-item{j}", "type": "click", "timestamp": now} for j in range(8)
    ]
    posted = shop.post("/v1/events", json={"events": events}, headers=auth(ADMIN_KEY))
    assert posted.status_code == 200 and posted.json()["accepted"] == 8
    response = shop.get(f"/v1/users/{user}/recommendations", params={"k": 10})
    assert response.headers["x-cache"] == "miss"
    after = response.json()
    count_before = sum(category(i) == other for i in ids(before))
    count_after = sum(category(i) == other for i in ids(after))
    assert count_after >= count_before + 3, (ids(before), ids(after))
    assert not {f"{other}-item{j}" for j in range(8)} & set(ids(after))  # just seen: excluded


def test_cached_history_follows_the_store_through_events_duplicates_and_late_events(shop: TestClient) -> None:
    state = state_of(shop)
    recommender = state.recommender
    user = "u5"

    def cached() -> list[tuple[str, str]] | None:
        looked = state.cache.lookup_user(user, "reco:t:none", recommender.limits.history_read)
        if looked.history is None:
            return None
        return [pair for pair in map(cache_keys.parse_history_entry, looked.history) if pair is not None]

    def stored() -> list[tuple[str, str]]:
        with state.engine.connect() as conn:
            rows = latest_history(conn, user, recommender.limits.history_read)
        return [(item, kind) for item, kind, _ in rows]

    def post(events: list[dict]) -> dict:
        response = shop.post("/v1/events", json={"events": events}, headers=auth(ADMIN_KEY))
        assert response.status_code == 200, response.text
        return response.json()

    assert cached() is None  # nothing read yet: no list
    recs(shop, user, k=5)
    assert cached() == stored()  # the miss read the store once and kept the list
    now = datetime.now(UTC)
    fresh = [
        {
            "event_id": f"h{j}",
            "user_id": user,
            "item_id": f"cat1-item{j}",
            "type": "click",
            "timestamp": now.isoformat(),
        }
        for j in range(3)
    ]
    assert post(fresh)["accepted"] == 3
    assert cached() == stored() and stored()[0] == ("cat1-item2", "click")  # pushed on top, in order
    assert post(fresh[:1])["duplicates"] == 1
    assert cached() is None  # a batch with duplicates drops the list (which events were stored is unknown)
    recs(shop, user, k=5)
    assert cached() == stored()
    late = {"user_id": user, "item_id": "cat2-item1", "type": "view", "timestamp": "2020-01-01T00:00:00Z"}
    assert post([late])["accepted"] == 1
    assert cached() is None  # older than the newest held event: the list cannot place it, so it is dropped
    answer = recs(shop, user, k=5)
    assert cached() == stored() and ("cat2-item1", "view") in stored()
    assert not {"cat1-item0", "cat1-item1", "cat1-item2", "cat2-item1"} & set(ids(answer))  # all seen


def test_exclude_and_category_filters_refill_to_k(shop: TestClient) -> None:
    first = ids(recs(shop, "u1", k=5))
    excluded = ids(recs(shop, "u1", k=5, exclude=",".join(first[:3])))
    assert not set(first[:3]) & set(excluded) and len(excluded) == 5
    in_cat = recs(shop, "u1", k=25, category="cat2")
    assert in_cat["strategy"] == "personalized"
    assert len(in_cat["items"]) == 25 and {category(i) for i in ids(in_cat)} == {"cat2"}
    assert len(recs(shop, "u1", k=40, category="cat2")["items"]) == 25  # every eligible item, no more
    own = recs(shop, "u1", k=25, category=world(0)[2]["u1"])
    assert len(own["items"]) == 25 - len(seen_by("u1"))  # seen ones are not eligible
    unknown = recs(shop, "u1", k=5, category="no-such-category")
    assert "no-such-category" in unknown.pop("note")  # an empty answer says why
    assert unknown.pop("recommendation_id")
    assert unknown == {"user_id": "u1", "model_version": "v1", "strategy": "popular_category", "items": []}


def test_explanations_name_items_from_the_users_history(shop: TestClient) -> None:
    answer = recs(shop, "u5", k=5, explain="true")
    history = seen_by("u5")
    for item in answer["items"]:
        because = item["explanation"]["because"]
        assert 1 <= len(because) <= 2 and set(because) <= history
    assert "explanation" not in recs(shop, "u5", k=5)["items"][0]


def test_history_unknown_to_the_model_falls_back_to_popular_in_its_category(shop: TestClient) -> None:
    now = datetime.now(UTC).isoformat()
    fresh = [
        {"user_id": "newbie", "item_id": f"brand-new-{j}", "type": "view", "timestamp": now} for j in range(3)
    ]
    assert shop.post("/v1/events", json={"events": fresh}, headers=auth(ADMIN_KEY)).status_code == 200
    for j in range(3):
        put = shop.put(f"/v1/items/brand-new-{j}", json={"categories": ["cat3"]}, headers=auth(ADMIN_KEY))
        assert put.status_code == 200
    state_of(shop).registry.sync_catalog()
    answer = recs(shop, "newbie", k=4)
    assert answer["strategy"] == "popular_category" and {category(i) for i in ids(answer)} == {"cat3"}


def test_deleted_and_unavailable_items_are_never_returned(shop: TestClient) -> None:
    top = ids(recs(shop, "u2", k=3))
    popular_top = [i["item_id"] for i in shop.get("/v1/popular", params={"k": 3}).json()["items"]]
    assert shop.delete(f"/v1/items/{top[0]}", headers=auth(ADMIN_KEY)).status_code == 204
    put = shop.put(f"/v1/items/{top[1]}", json={"available": False}, headers=auth(ADMIN_KEY))
    assert put.status_code == 200
    assert shop.delete(f"/v1/items/{popular_top[0]}", headers=auth(ADMIN_KEY)).status_code == 204
    gone = {top[0], top[1], popular_top[0]}
    # no manual sync: the epoch the writes bumped makes the next uncached answer re-read the catalog
    assert not gone & set(ids(recs(shop, "u2", k=3)))
    assert not gone & set(ids(recs(shop, "u2", k=100, include_seen="true")))
    assert not gone & {i["item_id"] for i in shop.get("/v1/popular", params={"k": 100}).json()["items"]}
    assert not gone & set(ids(recs(shop, "stranger", k=100)))


def test_items_added_after_training_are_recommendable(shop: TestClient) -> None:
    _, catalog, _ = world(0)
    fan = next(u for u, c in world(0)[2].items() if c == "cat2")
    template = catalog["cat2-item3"]
    body = {"title": "cat2 product 99", "categories": ["cat2"], "tags": ["tag-cat2"], "price": template.price}
    assert shop.put("/v1/items/cat2-item99", json=body, headers=auth(ADMIN_KEY)).status_code == 200
    state = state_of(shop)
    state.registry.sync_catalog()
    model = state.registry.current
    assert (
        model is not None
        and model.row("cat2-item99") is not None
        and "cat2-item99" not in model.loaded.row_of
    )
    answer = recs(shop, fan, k=30, category="cat2", explain="true")
    assert "cat2-item99" in ids(answer)
    item = next(i for i in answer["items"] if i["item_id"] == "cat2-item99")
    assert set(item["explanation"]["because"]) <= seen_by(fan)
    similar = shop.get("/v1/items/cat2-item99/similar", params={"k": 5}).json()
    assert similar["strategy"] == "similar" and Counter(map(category, ids(similar)))["cat2"] >= 4


def test_catalog_sync_reads_settled_rows_once_and_late_commits_still(shop: TestClient) -> None:
    state = state_of(shop)
    registry = state.registry
    with state.engine.begin() as conn:  # the whole catalog was written an hour ago (a bulk import)
        conn.execute(sa.update(Item).values(updated_at=datetime.now(UTC) - timedelta(hours=1)))
    registry.catalog.watermark = None
    assert registry.sync_catalog() > 0  # the first sync reads everything
    assert registry.sync_catalog() == 0  # settled rows are not read again on every poll
    assert (
        shop.put("/v1/items/cat1-item1", json={"available": False}, headers=auth(ADMIN_KEY)).status_code
        == 200
    )
    assert registry.sync_catalog() == 1
    assert (
        registry.sync_catalog() == 1
    )  # a recent change is read again for a while (a commit may be late) ...
    with state.engine.begin() as conn:  # ... so a row stamped before it but committed after it is not missed
        stamped = datetime.now(UTC) - timedelta(seconds=3)
        conn.execute(
            sa.update(Item).where(Item.item_id == "cat1-item2").values(available=False, updated_at=stamped)
        )
    assert registry.sync_catalog() == 2
    assert registry.catalog.is_blocked("cat1-item1") and registry.catalog.is_blocked("cat1-item2")


def test_anonymous_session(shop: TestClient) -> None:
    recent = ["cat3-item1", "cat3-item2", "cat3-item4"]
    response = shop.post("/v1/recommendations", json={"recent_items": recent, "k": 6, "explain": True})
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["user_id"] is None and answer["strategy"] == "personalized"
    assert Counter(map(category, ids(answer)))["cat3"] >= 5
    assert not set(recent) & set(ids(answer))
    for item in answer["items"]:
        assert set(item["explanation"]["because"]) <= set(recent)
    cold = shop.post("/v1/recommendations", json={"recent_items": [], "k": 3}).json()
    assert cold["strategy"] == "popular" and len(cold["items"]) == 3
    bad = shop.post("/v1/recommendations", json={"recent_items": ["a"], "k": 0})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"][-1] == "k"


def test_erasing_a_user_leaves_no_cached_answer_or_history(shop: TestClient) -> None:
    state = state_of(shop)
    params = RecParams(k=10)
    recs(shop, "u4", k=10)
    key = state.recommender.user_key("u4", params, state.registry.current)
    looked = state.cache.lookup_user("u4", key, 50)
    assert looked.answer is not None  # the answer, and (after the miss) the user's latest events are cached
    assert state.cache.get(key) is not None
    recs(shop, "u4", k=3)
    assert state.cache.lookup_user("u4", "reco:t:none", 50).history

    assert shop.delete("/v1/users/u4", headers=auth(ADMIN_KEY)).status_code == 204
    assert state.cache.get(key) is None
    after = state.cache.lookup_user("u4", key, 50)
    assert after.answer is None and after.history is None
    if isinstance(state.cache, MemoryCache):  # nothing under the user's prefix any more
        assert not [k for k in list(state.cache._data) if k.startswith(cache_keys.user_prefix("u4"))]
    assert recs(shop, "u4", k=10)["strategy"] == "popular"  # no history any more
    assert state.cache.lookup_user("u4", "reco:t:none", 50).history == [b""]  # refilled: empty


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ({"k": 0}, "k"),
        ({"k": 501}, "k"),
        ({"k": "ten"}, "k"),
        ({"category": ""}, "category"),
        ({"exclude": ",".join(["x" * 300])}, "exclude"),
        ({"explain": "maybe"}, "explain"),
    ],
)
def test_invalid_parameters_are_422_naming_them(shop: TestClient, query: dict, field: str) -> None:
    response = shop.get("/v1/users/u1/recommendations", params=query)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error" and field in error["message"]
    assert error["details"][0]["loc"] == ["query", field]


def test_read_scope_is_required(shop: TestClient) -> None:
    assert shop.get("/v1/users/u1/recommendations", headers={"Authorization": ""}).status_code == 401
