"""Merchandising over HTTP on the tiny trained shop: filter expressions, placements with boosts, pins,
promotions, diversity and rotation, recommendation ids, impressions, not_interested, the rules in the cache key."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.state import AppState
from app.catalog.service import load_items
from app.settings import Settings
from tests.conftest import ADMIN_KEY, auth
from tests.serving_support import load_shop, register, trained, world

QUIET = {
    "model_poll_seconds": 0,
    "catalog_poll_seconds": 0,
    "popular_poll_seconds": 0,
    "placement_poll_seconds": 0,
}
BRANDS = ("acme", "globex", "initech")


def state_of(client: TestClient) -> AppState:
    return client.app.state.reco  # type: ignore[attr-defined]


def brand(item_id: str) -> str:
    return BRANDS[int(item_id.rsplit("item", 1)[-1]) % 3]


@pytest.fixture
def shop(settings: Settings) -> Iterator[TestClient]:
    """The synthetic shop with a brand attribute on every item; model v1 active and loaded."""
    quiet = settings.model_copy(update=QUIET)
    with TestClient(create_app(quiet), headers=auth(ADMIN_KEY)) as c:
        state = state_of(c)
        load_shop(state.sessions)
        _, catalog, _ = world(0)
        load_items(
            state.sessions, [replace(r, attributes={"brand": brand(r.item_id)}) for r in catalog.values()]
        )
        register(state.sessions, quiet.artifact_dir, trained(0), "v1")
        state.registry.refresh_now()
        state.registry.sync_catalog()
        state.popular.poll()
        yield c


def catalog() -> dict:
    return world(0)[1]


def a_user() -> str:
    return world(0)[0].users[0]


def recs(client: TestClient, user: str, **params: object) -> dict:
    response = client.get(f"/v1/users/{user}/recommendations", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def ids(answer: dict) -> list[str]:
    return [item["item_id"] for item in answer["items"]]


def put(client: TestClient, name: str, body: dict) -> dict:
    response = client.put(f"/v1/admin/placements/{name}", json=body)
    assert response.status_code in (200, 201), response.text
    return response.json()


# ---- filter expressions -------------------------------------------------------------------------------------


def test_filter_keeps_k_results_and_never_leaks(shop: TestClient) -> None:
    items = catalog()
    expr = 'price < 25 and attributes.brand != "acme"'
    eligible = {i for i, r in items.items() if r.price < 25 and brand(i) != "acme"}
    assert len(eligible) >= 20
    for user in world(0)[0].users[:5]:
        answer = recs(shop, user, k=10, filter=expr, include_seen="true")
        got = ids(answer)
        assert len(got) == 10 and set(got) <= eligible, got
        assert answer["strategy"] == "personalized"


def test_filter_on_popular_fallback_and_unknown_user(shop: TestClient) -> None:
    answer = recs(shop, "a-new-user", k=5, filter='"tag-cat2" in tags')
    assert answer["strategy"].startswith("popular")
    assert ids(answer) and all(catalog()[i].categories == ("cat2",) for i in ids(answer))


@pytest.mark.parametrize(
    ("expr", "position", "words"),
    [
        ("prise < 5", 0, "unknown field"),
        ("price < 'cheap'", 8, ""),
        ("price <", 7, ""),
        ('"x" in price', 0, ""),
        ("__import__('os')", 0, ""),
    ],
)
def test_bad_filter_is_a_422_naming_the_position(
    shop: TestClient, expr: str, position: int, words: str
) -> None:
    response = shop.get(f"/v1/users/{a_user()}/recommendations", params={"filter": expr})
    assert response.status_code == 422, response.text
    body = response.json()
    text = json.dumps(body)
    assert "filter" in text and "position" in text and words in text


# ---- placements ---------------------------------------------------------------------------------------------


def test_placement_crud_and_bad_rules(shop: TestClient) -> None:
    created = shop.put("/v1/admin/placements/home", json={"k": 4, "filter": "price <= 20"})
    assert created.status_code == 201, created.text
    assert created.json()["revision"] == 1
    again = put(shop, "home", {"k": 5})
    assert again["revision"] == 2 and again["filter"] is None
    assert shop.get("/v1/admin/placements/home").json()["k"] == 5
    assert [p["name"] for p in shop.get("/v1/admin/placements").json()] == ["home"]
    bad = shop.put("/v1/admin/placements/home", json={"boosts": [{"filter": "tags > 3", "weight": 2}]})
    assert bad.status_code == 422 and "boosts" in bad.text and "position" in bad.text
    bad = shop.put(
        "/v1/admin/placements/home", json={"promotions": [{"filter": "price < 5", "share": 0.7}] * 2}
    )
    assert bad.status_code == 422 and "shares add up" in bad.text
    bad = shop.put("/v1/admin/placements/home", json={"diversity": {"field": "colour", "max_per_list": 1}})
    assert bad.status_code == 422 and "field" in bad.text
    assert shop.delete("/v1/admin/placements/home").status_code == 200
    missing = shop.get(f"/v1/users/{a_user()}/recommendations", params={"placement": "home"})
    assert missing.status_code == 404 and "PUT /v1/admin/placements/home" in missing.text


def test_placement_default_k_filter_pins_and_labels(shop: TestClient) -> None:
    user = a_user()
    plain = ids(recs(shop, user, k=6))
    pinned = next(
        i for i in catalog() if i not in plain and catalog()[i].price == 10.0 and i not in seen(user)
    )
    put(shop, "home", {"k": 6, "filter": "price <= 20", "pins": [{"item_id": pinned, "position": 2}]})
    answer = recs(shop, user, placement="home")
    got = ids(answer)
    assert len(got) == 6 and got[1] == pinned
    assert all(catalog()[i].price <= 20 for i in got)
    assert answer["placement"] == "home" and "experiment" not in answer
    assert answer["recommendation_id"].split("~")[1] == "home"


def seen(user: str) -> set[str]:
    log = world(0)[0]
    code = log.users.index(user)
    return {log.items[i] for i in log.item_codes[log.user_codes == code].tolist()}


def test_boost_promotion_and_diversity_on_the_served_list(shop: TestClient) -> None:
    user = a_user()
    plain = recs(shop, user, k=10)
    top_category = Counter(catalog()[i].categories[0] for i in ids(plain)).most_common(1)[0][0]
    other = next(c for c in ("cat0", "cat1", "cat2", "cat3") if c != top_category)
    # A huge boost on another category moves its items ahead of everything else.
    put(shop, "boosted", {"k": 10, "boosts": [{"filter": f'"{other}" in categories', "weight": 1e6}]})
    boosted = ids(recs(shop, user, placement="boosted"))
    assert catalog()[boosted[0]].categories == (other,)
    # A promotion of 30% reserves 3 of 10 slots for the other category.
    put(shop, "promo", {"k": 10, "promotions": [{"filter": f'"{other}" in categories', "share": 0.3}]})
    promoted = ids(recs(shop, user, placement="promo"))
    assert sum(catalog()[i].categories == (other,) for i in promoted) >= 3
    # Diversity: at most 2 items of one brand.
    put(shop, "diverse", {"k": 6, "diversity": {"field": "attributes.brand", "max_per_list": 2}})
    diverse = ids(recs(shop, user, placement="diverse"))
    assert len(diverse) == 6 and max(Counter(brand(i) for i in diverse).values()) <= 2


# ---- recommendation ids, cache, feedback ---------------------------------------------------------------------


def test_recommendation_id_unique_per_answer_and_rules_in_the_cache_key(shop: TestClient) -> None:
    user = a_user()
    first = shop.get(f"/v1/users/{user}/recommendations", params={"k": 5, "filter": "price <= 20"})
    second = shop.get(f"/v1/users/{user}/recommendations", params={"k": 5, "filter": "price <= 20"})
    assert first.headers["X-Cache"] == "miss" and second.headers["X-Cache"] == "hit"
    assert first.json()["recommendation_id"] != second.json()["recommendation_id"]
    assert first.json()["items"] == second.json()["items"]
    other = shop.get(f"/v1/users/{user}/recommendations", params={"k": 5, "filter": "price > 20"})
    assert other.headers["X-Cache"] == "miss"
    assert all(catalog()[i].price > 20 for i in ids(other.json()))


def test_not_interested_removes_the_item_at_once(shop: TestClient) -> None:
    user = a_user()
    top = ids(recs(shop, user, k=5, include_seen="true"))[0]
    sent = shop.post(
        "/v1/events", json={"events": [{"user_id": user, "item_id": top, "type": "not_interested"}]}
    )
    assert sent.status_code == 200 and sent.json()["accepted"] == 1, sent.text
    assert top not in ids(recs(shop, user, k=20, include_seen="true"))


def test_impressions_stored_once_and_need_a_recommendation_id(shop: TestClient) -> None:
    user = a_user()
    answer = recs(shop, user, k=3)
    event = {
        "user_id": user,
        "type": "impression",
        "recommendation_id": answer["recommendation_id"],
        "items": ids(answer),
    }
    first = shop.post("/v1/events", json={"events": [event]}).json()
    again = shop.post("/v1/events", json={"events": [event]}).json()
    assert (first["accepted"], first["duplicates"]) == (1, 0)
    assert (again["accepted"], again["duplicates"]) == (0, 1)
    bad = shop.post("/v1/events", json={"events": [{"user_id": user, "type": "impression", "items": ["x"]}]})
    assert bad.status_code == 422 and "recommendation_id" in bad.text
    bad = shop.post("/v1/events", json={"events": [{"user_id": user, "type": "click"}]})
    assert bad.status_code == 422 and "item_id" in bad.text


def test_rotation_demotes_items_shown_often_without_a_click(shop: TestClient) -> None:
    user = a_user()
    put(shop, "rotating", {"k": 5, "rotation": {"after": 2, "window_s": 3600, "factor": 0}})
    first = recs(shop, user, placement="rotating")
    shown = ids(first)[:2]
    for n in range(2):
        event = {
            "user_id": user,
            "type": "impression",
            "recommendation_id": f"r{n}-{first['recommendation_id']}",
            "items": shown,
        }
        assert shop.post("/v1/events", json={"events": [event]}).status_code == 200
    # Impressions do not invalidate cached answers: a new event (or the cache TTL) makes the next one a miss.
    view = {"user_id": user, "item_id": ids(first)[-1], "type": "view"}
    assert shop.post("/v1/events", json={"events": [view]}).status_code == 200
    after = ids(recs(shop, user, placement="rotating"))
    assert not set(shown) & set(after[:3]), (shown, after)


def test_session_and_similar_take_placement_and_filter(shop: TestClient) -> None:
    some = next(iter(catalog()))
    similar = shop.get(f"/v1/items/{some}/similar", params={"k": 5, "filter": "price >= 30"})
    assert similar.status_code == 200, similar.text
    assert all(catalog()[i].price >= 30 for i in ids(similar.json())) and similar.json()["recommendation_id"]
    put(shop, "cart", {"k": 4, "filter": "price >= 30"})
    session = shop.post("/v1/recommendations", json={"recent_items": [some], "placement": "cart"})
    assert session.status_code == 200, session.text
    assert len(ids(session.json())) == 4 and all(catalog()[i].price >= 30 for i in ids(session.json()))
    bad = shop.post("/v1/recommendations", json={"recent_items": [some], "filter": "price <"})
    assert bad.status_code == 422
