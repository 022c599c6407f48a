"""A/B experiments over HTTP on the tiny trained shop: assignment, variants answering, the report with
attribution, stopping, and the offline replay of a candidate on logged traffic."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.api.state import AppState
from app.experiments.assign import assign
from app.settings import Settings
from tests.conftest import ADMIN_KEY, auth
from tests.serving_support import load_shop, register, trained, world

QUIET = {
    "model_poll_seconds": 0,
    "catalog_poll_seconds": 0,
    "popular_poll_seconds": 0,
    "placement_poll_seconds": 0,
}
VARIANTS = [{"name": "control", "share": 0.5}, {"name": "fresh", "share": 0.5, "model_version": "v2"}]


def state_of(client: TestClient) -> AppState:
    return client.app.state.reco  # type: ignore[attr-defined]


@pytest.fixture
def shop(settings: Settings) -> Iterator[TestClient]:
    """The shop with v1 active and v2 registered (not active), and a placement `home`."""
    quiet = settings.model_copy(update=QUIET)
    with TestClient(create_app(quiet), headers=auth(ADMIN_KEY)) as c:
        state = state_of(c)
        load_shop(state.sessions)
        register(state.sessions, quiet.artifact_dir, trained(0), "v1")
        register(state.sessions, quiet.artifact_dir, trained(0), "v2", active=False)
        state.registry.refresh_now()
        state.registry.sync_catalog()
        state.popular.poll()
        assert c.put("/v1/admin/placements/home", json={"k": 5}).status_code == 201
        yield c


def users(n: int) -> list[str]:
    return list(world(0)[0].users[:n])


def start(client: TestClient, **extra: object) -> dict:
    body = {"experiment_id": "home-v2", "placement": "home", "variants": VARIANTS, **extra}
    response = client.post("/v1/admin/experiments", json=body)
    assert response.status_code == 201, response.text
    state_of(client).registry.refresh_now()  # the model poller is off here: load the pinned version now
    return response.json()


def answer(client: TestClient, user: str) -> dict:
    response = client.get(f"/v1/users/{user}/recommendations", params={"placement": "home"})
    assert response.status_code == 200, response.text
    return response.json()


def test_variants_follow_the_stable_assignment_and_answer_with_their_model(shop: TestClient) -> None:
    start(shop)
    shares = [(v["name"], v["share"]) for v in VARIANTS]
    seen = Counter()
    for user in users(40):
        got = answer(shop, user)
        assert got["experiment"] == "home-v2"
        assert got["variant"] == assign(user, "home-v2", shares)
        assert got["model_version"] == ("v2" if got["variant"] == "fresh" else "v1")
        assert got["recommendation_id"].endswith(f"~home~home-v2~{got['variant']}")
        assert answer(shop, user)["variant"] == got["variant"]  # the same user keeps their arm
        seen[got["variant"]] += 1
    assert seen["control"] > 5 and seen["fresh"] > 5


def test_create_refuses_what_cannot_run(shop: TestClient) -> None:
    def post(**body: object) -> int:
        full = {"experiment_id": "x", "placement": "home", "variants": VARIANTS, **body}
        return shop.post("/v1/admin/experiments", json=full).status_code

    assert post(placement="nowhere") == 422
    assert post(variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.4}]) == 422
    assert (
        post(variants=[{"name": "a", "share": 0.5}, {"name": "b", "share": 0.5, "model_version": "v9"}])
        == 422
    )
    both = {"name": "b", "share": 0.5, "model_version": "v2", "strategy": "popular"}
    assert post(variants=[{"name": "a", "share": 0.5}, both]) == 422
    assert post() == 201
    assert post() == 409  # the id is taken
    assert post(experiment_id="y") == 409  # the placement already runs one
    assert shop.delete("/v1/admin/placements/home").status_code == 409


def test_report_attributes_each_click_once_and_stop_moves_everyone(shop: TestClient) -> None:
    start(shop)
    now = datetime.now(UTC)
    events: list[dict] = []
    by_variant: Counter[str] = Counter()
    clicks: Counter[str] = Counter()
    for n, user in enumerate(users(30)):
        got = answer(shop, user)
        shown = [i["item_id"] for i in got["items"]]
        rid = got["recommendation_id"]
        ts = (now - timedelta(minutes=30)).isoformat()
        events.append(
            {"user_id": user, "type": "impression", "recommendation_id": rid, "items": shown, "timestamp": ts}
        )
        by_variant[got["variant"]] += len(shown)
        if n % 3 == 0:  # a click with the id, reported twice (a client retry), and a view of the same item
            click = {
                "user_id": user,
                "item_id": shown[0],
                "type": "click",
                "recommendation_id": rid,
                "timestamp": (now - timedelta(minutes=20)).isoformat(),
            }
            events += [click, dict(click), {**click, "type": "view"}]
            clicks[got["variant"]] += 1
        if n % 5 == 0:  # a purchase with no id: attributed to the latest impression of the item
            events.append(
                {
                    "user_id": user,
                    "item_id": shown[1],
                    "type": "purchase",
                    "value": 10.0,
                    "timestamp": (now - timedelta(minutes=10)).isoformat(),
                }
            )
            clicks[got["variant"]] += 1
    assert shop.post("/v1/events", json={"events": events}).status_code == 200
    report = shop.get("/v1/admin/experiments/home-v2").json()["report"]
    arms = {v["name"]: v for v in report["variants"]}
    for name in ("control", "fresh"):
        assert arms[name]["impressions"] == by_variant[name]
        assert arms[name]["clicks"] == clicks[name]
    assert report["comparisons"][0]["verdict"] == "too_small"
    assert report["winner"] is None
    stopped = shop.post("/v1/admin/experiments/home-v2/stop", json={"winner": "fresh"})
    assert stopped.status_code == 200 and stopped.json()["status"] == "stopped"
    assert shop.post("/v1/admin/experiments/home-v2/stop", json={"winner": "fresh"}).status_code == 409
    for user in users(10):
        got = answer(shop, user)
        assert "experiment" not in got and got["model_version"] == "v2"
    bad = shop.post("/v1/admin/experiments/nope/stop", json={"winner": "fresh"})
    assert bad.status_code == 404


def test_replay_scores_the_candidate_beside_live_and_logged(shop: TestClient) -> None:
    now = datetime.now(UTC)
    events: list[dict] = []
    for user in users(20):
        got = answer(shop, user)
        shown = [i["item_id"] for i in got["items"]]
        events.append(
            {
                "user_id": user,
                "type": "impression",
                "recommendation_id": got["recommendation_id"],
                "items": shown,
                "timestamp": (now - timedelta(hours=2)).isoformat(),
            }
        )
        events.append(
            {
                "user_id": user,
                "item_id": shown[2],
                "type": "click",
                "recommendation_id": got["recommendation_id"],
                "timestamp": (now - timedelta(hours=1)).isoformat(),
            }
        )
    assert shop.post("/v1/events", json={"events": events}).status_code == 200
    out = shop.post(
        "/v1/admin/experiments/replay",
        json={"placement": "home", "candidate": {"strategy": "popular"}, "days": 1},
    )
    assert out.status_code == 200, out.text
    body = out.json()
    assert body["answers"] == 20 and body["clicks"] == 20
    # Every logged list held its clicked item at position 3: HR 1 and NDCG 1/log2(4) = 0.5.
    assert body["logged"] == {"HR@5": 1.0, "NDCG@5": 0.5}
    # The live placement recomputes the same lists from the same history (the click came later).
    assert body["live"]["HR@5"] == 1.0
    assert 0.0 <= body["candidate"]["HR@5"] <= 1.0 and "lift" in body and "note" in body
    unknown = shop.post("/v1/admin/experiments/replay", json={"placement": "x", "candidate": {}})
    assert unknown.status_code == 404
