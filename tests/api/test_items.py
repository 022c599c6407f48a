"""The catalog: PUT partial update, batch POST with per-index rejections, GET, cursor pages with filters,
DELETE hides (events stay)."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.conftest import ADMIN_KEY

JSON = {"Content-Type": "application/json"}


def test_put_creates_then_updates_only_the_fields_given(client: TestClient) -> None:
    full = {
        "title": "Trail runner 2",
        "categories": ["shoes", "running"],
        "tags": ["trail"],
        "price": 59.9,
        "available": True,
        "published_at": "2026-11-01T00:00:00Z",
        "attributes": {"brand": "acme", "sizes": [41, 42]},
    }
    r = client.put("/v1/items/sku-1", json=full)
    assert r.status_code == 200, r.text
    created = r.json()
    assert {k: created[k] for k in full} == full
    assert created["item_id"] == "sku-1"

    r = client.put("/v1/items/sku-1", json={"price": 49.0, "available": False})
    updated = r.json()
    assert updated["price"] == 49.0 and updated["available"] is False
    assert {k: updated[k] for k in ("title", "categories", "tags", "attributes", "published_at")} == {
        k: full[k] for k in ("title", "categories", "tags", "attributes", "published_at")
    }
    assert updated["created_at"] == created["created_at"]
    assert updated["updated_at"] >= created["updated_at"]
    assert client.get("/v1/items/sku-1").json() == updated

    cleared = client.put("/v1/items/sku-1", json={"title": None}).json()
    assert cleared["title"] is None and cleared["price"] == 49.0


def test_put_bad_fields_are_422_naming_them(client: TestClient) -> None:
    cases: list[tuple[Any, str]] = [
        ({"price": "cheap"}, "price: must be a number"),
        ({"price": -1}, "price:"),
        ({"categories": "shoes"}, "categories:"),
        ({"categories": [""]}, "categories[0]: must not be empty"),
        ({"colour": "red"}, "colour: is not a known field"),
        ({"available": "perhaps"}, "available:"),
        ({"published_at": "soon"}, "published_at: must be an ISO 8601"),
        ({"title": "nul\x00"}, "title: must not contain NUL"),
        ({"tags": ["a\x00"]}, "tags[0]: must not contain NUL"),
    ]
    for body, message in cases:
        r = client.put("/v1/items/sku-1", json=body)
        assert r.status_code == 422, (body, r.text)
        assert r.json()["error"]["code"] == "validation_error"
        assert r.json()["error"]["message"].startswith(message), (body, r.json())
    for raw in (b'{"price": NaN}', b'{"price": Infinity}'):
        r = client.put("/v1/items/sku-1", content=raw, headers=JSON)
        assert r.status_code == 422
        assert r.json()["error"]["message"].startswith("price: must be a finite number")
    r = client.put("/v1/items/sku-1", content=b"{not json", headers=JSON)
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("body: not valid JSON")
    r = client.put("/v1/items/" + "x" * 257, json={})
    assert r.status_code == 422
    assert "item_id" in r.json()["error"]["message"] and "256" in r.json()["error"]["message"]
    assert client.put("/v1/items/a%00b", json={}).status_code == 422
    assert client.get("/v1/items/sku-1").status_code == 404  # nothing was created


def test_batch_post_upserts_and_rejects_by_index(client: TestClient) -> None:
    client.put("/v1/items/old", json={"title": "Old", "price": 5.0})
    items: list[Any] = [
        {"item_id": "a", "title": "A", "categories": ["x"]},
        {"item_id": "", "title": "no id"},
        {"item_id": "b", "price": "free"},
        {"item_id": "old", "price": 6.0},
        "not an item",
        {"item_id": "c", "available": False},
        {"item_id": "a", "title": "A again"},  # the last one wins
    ]
    r = client.post("/v1/items", json={"items": items})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == 3 and body["duplicates"] == 1
    assert [x["index"] for x in body["rejected"]] == [1, 2, 4]
    assert body["rejected"][0]["error"].startswith("item_id: must not be empty")
    assert body["rejected"][1]["error"].startswith("price: must be a number")
    assert client.get("/v1/items/a").json()["title"] == "A again"
    assert client.get("/v1/items/a").json()["categories"] == ["x"]
    assert client.get("/v1/items/old").json() | {"created_at": None, "updated_at": None} == {
        "item_id": "old",
        "title": "Old",
        "categories": [],
        "tags": [],
        "price": 6.0,
        "available": True,
        "published_at": None,
        "attributes": {},
        "created_at": None,
        "updated_at": None,
    }
    assert client.get("/v1/items/c").json()["available"] is False
    assert client.get("/v1/items/b").status_code == 404


def test_batch_post_limits_and_all_invalid(client: TestClient) -> None:
    r = client.post("/v1/items", json={"items": [{"item_id": f"i{n}"} for n in range(5001)]})
    assert r.status_code == 413
    r = client.post("/v1/items", json={"items": [{"item_id": ""}, {"price": 1}]})
    assert r.status_code == 422
    assert r.json()["error"]["message"].startswith("items[0].item_id: must not be empty")
    assert len(r.json()["error"]["details"]) == 2
    r = client.post("/v1/items", content=b'{"items": [{"item_id": "n", "price": NaN}]}', headers=JSON)
    assert r.status_code == 422 and "finite" in r.json()["error"]["message"]
    assert client.post("/v1/items", json={"items": {}}).status_code == 422


def _seed_catalog(client: TestClient) -> dict[str, dict[str, Any]]:
    """37 items: every third in `shoes`, every fourth unavailable, two hidden."""
    items: list[dict[str, Any]] = []
    for n in range(37):
        cats = ["shoes"] if n % 3 == 0 else ["hats"]
        if n % 5 == 0:
            cats.append("sale")
        items.append({"item_id": f"sku-{n:03d}", "categories": cats, "available": n % 4 != 0})
    assert client.post("/v1/items", json={"items": items}).json()["accepted"] == 37
    for hidden in ("sku-003", "sku-010"):
        assert client.delete(f"/v1/items/{hidden}").status_code == 204
    return {i["item_id"]: i for i in items if i["item_id"] not in ("sku-003", "sku-010")}


def _walk(client: TestClient, limit: int, **filters: Any) -> list[str]:
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params = {"limit": limit, **filters} | ({"cursor": cursor} if cursor else {})
        r = client.get("/v1/items", params=params)
        assert r.status_code == 200, r.text
        page = r.json()
        assert len(page["items"]) <= limit
        seen += [i["item_id"] for i in page["items"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert pages < 100
    return seen


def test_cursor_pages_with_filters_miss_nothing_and_repeat_nothing(client: TestClient) -> None:
    visible = _seed_catalog(client)
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({}, set(visible)),
        ({"category": "shoes"}, {k for k, v in visible.items() if "shoes" in v["categories"]}),
        ({"category": "sale"}, {k for k, v in visible.items() if "sale" in v["categories"]}),
        ({"available": "true"}, {k for k, v in visible.items() if v["available"]}),
        ({"available": "false"}, {k for k, v in visible.items() if not v["available"]}),
        (
            {"category": "hats", "available": "true"},
            {k for k, v in visible.items() if "hats" in v["categories"] and v["available"]},
        ),
        ({"category": "nothing-here"}, set()),
    ]
    for filters, expected in cases:
        for limit in (1, 4, 7, 1000):
            got = _walk(client, limit, **filters)
            assert len(got) == len(set(got)), (filters, limit)
            assert set(got) == expected, (filters, limit)
            assert got == sorted(got), "stable order: insertion order"


def test_items_added_between_pages_are_neither_repeated_nor_skipped_before_the_cursor(
    client: TestClient,
) -> None:
    _seed_catalog(client)
    first = client.get("/v1/items", params={"limit": 10}).json()
    client.put("/v1/items/late", json={"categories": ["hats"]})
    rest: list[str] = []
    cursor = first["next_cursor"]
    while cursor:
        page = client.get("/v1/items", params={"limit": 10, "cursor": cursor}).json()
        rest += [i["item_id"] for i in page["items"]]
        cursor = page["next_cursor"]
    ids = [i["item_id"] for i in first["items"]] + rest
    assert len(ids) == len(set(ids)) == 36
    assert ids[-1] == "late"


def test_bad_list_parameters_are_422(client: TestClient) -> None:
    for params, where in (
        ({"cursor": "garbage"}, "cursor"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"available": "perhaps"}, "available"),
    ):
        r = client.get("/v1/items", params=params)
        assert r.status_code == 422, params
        assert where in r.json()["error"]["message"]


def test_delete_hides_the_item_and_keeps_its_events(client: TestClient) -> None:
    client.put("/v1/items/sku-9", json={"title": "Nine"})
    events = [
        {"user_id": "u1", "item_id": "sku-9", "type": "purchase", "event_id": f"e{n}"} for n in range(3)
    ]
    assert client.post("/v1/events", json={"events": events}).json()["accepted"] == 3

    assert client.delete("/v1/items/sku-9").status_code == 204
    assert client.get("/v1/items/sku-9").status_code == 404
    assert client.get("/v1/items/sku-9").json()["error"]["code"] == "not_found"
    assert "sku-9" not in [i["item_id"] for i in client.get("/v1/items").json()["items"]]
    assert client.delete("/v1/items/sku-9").status_code == 404
    user = client.get("/v1/users/u1").json()
    assert user["event_count"] == 3
    assert {e["item_id"] for e in user["latest_events"]} == {"sku-9"}

    restored = client.put("/v1/items/sku-9", json={"price": 9.0})  # re-created from the fields given only
    assert (
        restored.status_code == 200 and restored.json()["title"] is None and restored.json()["price"] == 9.0
    )
    assert client.get("/v1/items/sku-9").status_code == 200


def test_unknown_item_is_404(client: TestClient) -> None:
    r = client.get("/v1/items/nope")
    assert r.status_code == 404
    assert r.json()["error"]["message"] == "item 'nope' not found"
    assert client.delete("/v1/items/nope").status_code == 404


def test_item_created_by_an_event_has_no_attributes_until_the_catalog_sends_them(client: TestClient) -> None:
    client.post("/v1/events", json={"events": [{"user_id": "u1", "item_id": "new", "type": "view"}]})
    item = client.get("/v1/items/new").json()
    assert item["title"] is None and item["categories"] == [] and item["available"] is True
    client.put("/v1/items/new", json={"title": "New", "categories": ["c"]})
    assert client.get("/v1/items/new").json()["categories"] == ["c"]
    assert _walk(client, 10, category="c") == ["new"]


def test_item_bodies_over_the_cap_are_413_also_chunked(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"max_body_bytes": 2048}))
    body = json.dumps({"title": "t", "attributes": {"blob": "x" * 4000}}).encode()
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        r = c.put("/v1/items/big", content=body, headers=JSON)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"
        assert "RECO_MAX_BODY_BYTES" in r.json()["error"]["message"]
        r = c.put("/v1/items/big", content=iter([body[:1000], body[1000:2000], body[2000:]]), headers=JSON)
        assert r.request.headers.get("transfer-encoding") == "chunked"
        assert r.status_code == 413
        assert "exceeds 2048 bytes" in r.json()["error"]["message"]
        r = c.post("/v1/items", content=iter([b'{"items": [', body, b"]}"]), headers=JSON)
        assert r.status_code == 413
        r = c.put("/v1/users/big", json={"attributes": {"blob": "x" * 4000}})
        assert r.status_code == 413
        assert c.get("/v1/items/big").status_code == 404
        assert c.put("/v1/items/big", json={"title": "small"}).status_code == 200
