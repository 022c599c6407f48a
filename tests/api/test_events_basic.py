"""Ingestion on every store and cache: acceptance, idempotency, per-index rejection."""

from __future__ import annotations

from fastapi.testclient import TestClient


def test_batch_stored_and_idempotent(client: TestClient) -> None:
    events = [
        {"event_id": f"e{i}", "user_id": f"u{i % 3}", "item_id": f"i{i % 5}", "type": "view"}
        for i in range(20)
    ]
    first = client.post("/v1/events", json={"events": events})
    assert first.status_code == 200, first.text
    assert first.json() == {"accepted": 20, "duplicates": 0, "rejected": []}
    again = client.post("/v1/events", json={"events": events})
    assert again.json() == {"accepted": 0, "duplicates": 20, "rejected": []}
    user = client.get("/v1/users/u1").json()
    assert user["event_count"] == 7
    assert client.get("/v1/items/i4").status_code == 200  # created on the fly


def test_invalid_event_rejected_valid_ones_stored(client: TestClient) -> None:
    events = [
        {"user_id": "u1", "item_id": "i1", "type": "view"},
        {"user_id": "u1", "item_id": "", "type": "view"},
        {"user_id": "u1", "item_id": "i2", "type": "teleport"},
    ]
    body = client.post("/v1/events", json={"events": events}).json()
    assert body["accepted"] == 1
    assert [r["index"] for r in body["rejected"]] == [1, 2]
    assert body["rejected"][0]["error"].startswith("item_id:")
    assert body["rejected"][1]["error"].startswith("type:")
    assert client.get("/v1/users/u1").json()["event_count"] == 1
