"""Popular and similar items over HTTP, and the decayed window counters on their own."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.serving.catalog import CatalogView
from app.serving.popular import ALL_TIME, PopularCounters, window_seconds
from app.settings import Settings
from tests.api.test_recommend import QUIET, state_of
from tests.conftest import ADMIN_KEY, READ_KEY, auth
from tests.serving_support import event_records, load_shop, register, trained, world

HOUR = 3600.0


def test_window_counts_decay_expire_and_rank() -> None:
    now = 1_000_000.0
    counters = PopularCounters(["1h", "24h"], {"view": 1.0, "purchase": 8.0})
    counters.add([("a", "view", now - 60)] * 3, now)  # 3 recent views
    counters.add([("b", "purchase", now - 2 * HOUR)], now)  # one purchase two hours ago: outside 1h
    counters.add([("c", "view", now - 30 * HOUR)] * 50, now)  # many, but older than every window
    counters.rank(now)
    assert counters.ranking("1h").item_ids == ["a"]
    day = counters.ranking("24h")
    assert day.item_ids == ["b", "a"]  # 8 x 0.5^(2/12) > 3 x ~1
    assert day.scores[0] == pytest.approx(8 * 0.5 ** (2 / 12), rel=0.05)
    assert counters.ranking(ALL_TIME).item_ids == ["c", "b", "a"]
    later = now + 23 * HOUR  # b leaves the 24h window, a stays
    counters.rank(later)
    assert counters.ranking("24h").item_ids == ["a"]
    assert window_seconds("7d") == 7 * 86_400
    with pytest.raises(ValueError, match="2x"):
        window_seconds("2x")


def test_ranking_filters_by_category_after_catalog_changes() -> None:
    from app.records import ItemRecord

    catalog = CatalogView()
    counters = PopularCounters(["24h"], {})
    counters.add([("a", "view", 0.0), ("a", "view", 0.0), ("b", "view", 0.0)], 0.0)
    counters.rank(0.0)
    ranking = counters.ranking("24h")
    assert ranking.positions_in("shoes", catalog) == []
    catalog.apply([ItemRecord("b", categories=("shoes",))])
    assert [ranking.item_ids[i] for i in ranking.positions_in("shoes", catalog)] == ["b"]


@pytest.fixture
def shop(settings: Settings) -> Iterator[TestClient]:
    """The shop with v1 active."""
    quiet = settings.model_copy(update=QUIET)
    with TestClient(create_app(quiet), headers=auth(READ_KEY)) as c:
        state = state_of(c)
        load_shop(state.sessions)
        register(state.sessions, quiet.artifact_dir, trained(0), "v1")
        state.registry.refresh_now()
        state.popular.poll()
        yield c


def test_popular_counts_events_of_the_window(shop: TestClient) -> None:
    log, _, _ = world(0)
    weights = state_of(shop).settings.event_weights
    weighted: dict[str, float] = {}
    for event in event_records(log):  # spread over ~33 hours ending an hour ago
        weighted[event.item_id] = weighted.get(event.item_id, 0.0) + weights[event.type]
    answer = shop.get("/v1/popular", params={"k": 5, "window": "30d"}).json()
    assert answer["window"] == "30d" and answer["strategy"] == "popular" and len(answer["items"]) == 5
    expected = sorted(weighted, key=weighted.__getitem__, reverse=True)[:8]
    got = [i["item_id"] for i in answer["items"]]
    assert got[0] in expected[:3] and len(set(got) & set(expected)) >= 4  # decay reorders near-ties only
    scores = [i["score"] for i in answer["items"]]
    assert scores == sorted(scores, reverse=True)
    hour = shop.get("/v1/popular", params={"k": 100, "window": "1h"}).json()["items"]
    # the newest event is an hour old: the 1h window is (about) empty and all-time counts fill it, scored 0
    assert len(hour) == 80 and sum(i["score"] > 0 for i in hour) <= 1
    best = max(weighted.values())
    assert weighted[hour[-1]["item_id"]] < best and any(weighted[i["item_id"]] == best for i in hour[:2])
    in_cat = shop.get("/v1/popular", params={"k": 50, "category": "cat1"}).json()
    assert {i["item_id"].split("-")[0] for i in in_cat["items"]} == {"cat1"}
    assert len(in_cat["items"]) == 20  # the 20 warm items of cat1; cold ones have no events


def test_popular_follows_new_events_incrementally(shop: TestClient) -> None:
    state = state_of(shop)
    events = [{"user_id": f"fan{j}", "item_id": "cat2-item22", "type": "purchase"} for j in range(40)]
    assert shop.post("/v1/events", json={"events": events}, headers=auth(ADMIN_KEY)).status_code == 200
    before = state.popular.watermark
    assert state.popular.poll() == 40  # only the new rows are read
    assert state.popular.watermark > before
    top = shop.get("/v1/popular", params={"k": 1, "window": "1h"}).json()["items"]
    assert top[0]["item_id"] == "cat2-item22"


def test_popular_validates_its_parameters(shop: TestClient) -> None:
    bad = shop.get("/v1/popular", params={"window": "2w"})
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["loc"] == ["query", "window"]
    assert "1h, 24h, 7d, 30d" in bad.json()["error"]["message"]
    assert shop.get("/v1/popular", params={"k": 501}).status_code == 422


def test_similar_items(shop: TestClient) -> None:
    answer = shop.get("/v1/items/cat0-item2/similar", params={"k": 8}).json()
    assert answer["strategy"] == "similar" and answer["model_version"] == "v1"
    got = [i["item_id"] for i in answer["items"]]
    assert "cat0-item2" not in got and len(got) == 8
    assert Counter(i.split("-")[0] for i in got)["cat0"] >= 7
    in_cat = shop.get("/v1/items/cat0-item2/similar", params={"k": 3, "category": "cat3"}).json()
    assert {i["item_id"].split("-")[0] for i in in_cat["items"]} == {"cat3"}
    hit = shop.get("/v1/items/cat0-item2/similar", params={"k": 8})
    assert hit.headers["x-cache"] == "hit"
    assert hit.json()["recommendation_id"] != answer.pop("recommendation_id")  # unique per answer, hits too
    assert {k: v for k, v in hit.json().items() if k != "recommendation_id"} == answer
    missing = shop.get("/v1/items/no-such-item/similar")
    assert missing.status_code == 404 and "no-such-item" in missing.json()["error"]["message"]
