"""Deletion (issue 11): a PUT to a deleted item re-creates it from only the fields given, never its old ones;
a created item or user has updated_at equal to created_at (never earlier)."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_put_after_delete_recreates_from_given_fields(client: TestClient) -> None:
    assert client.put(
        "/v1/items/i1", json={"title": "old", "categories": ["a"], "price": 3.0}
    ).status_code in (200, 201)
    assert client.delete("/v1/items/i1").status_code in (200, 204)
    assert client.get("/v1/items/i1").status_code == 404
    back = client.put("/v1/items/i1", json={"tags": ["new"]})
    assert back.status_code in (200, 201), back.text
    item = client.get("/v1/items/i1").json()
    assert (
        item["tags"] == ["new"]
        and item["title"] is None
        and item["categories"] == []
        and item["price"] is None
    )


def test_updated_at_never_before_created_at(client: TestClient) -> None:
    item = client.put("/v1/items/i2", json={"title": "t"}).json()
    assert item["updated_at"] >= item["created_at"]
    user = client.put("/v1/users/u2", json={"attributes": {"a": 1}}).json()
    if "updated_at" in user:
        assert user["updated_at"] >= user["created_at"]


def test_a_deleted_item_has_no_similar_items(client: TestClient) -> None:
    """Deleted means gone from every route: GET, /similar (before: 200 with popular items) and PUT re-creates."""
    client.put("/v1/items/i3", json={"title": "t", "categories": ["c"]})
    client.put("/v1/items/i4", json={"title": "u", "categories": ["c"]})
    assert client.get("/v1/items/i3/similar", params={"k": 3}).status_code == 200
    assert client.delete("/v1/items/i3").status_code in (200, 204)
    r = client.get("/v1/items/i3/similar", params={"k": 3})
    assert r.status_code == 404, r.text
    assert "deleted" in r.json()["error"]["message"]
    assert client.put("/v1/items/i3", json={"title": "t"}).status_code in (200, 201)
    assert client.get("/v1/items/i3/similar", params={"k": 3}).status_code == 200
