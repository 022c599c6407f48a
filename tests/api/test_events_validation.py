"""Bad input on POST /v1/events: a 4xx in the error shape naming the field, valid events of a batch stored."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.conftest import ADMIN_KEY

JSON = {"Content-Type": "application/json"}


@pytest.fixture
def small_client(settings: Settings) -> Iterator[TestClient]:
    """A client whose app accepts at most 10 events and 4 KiB a request."""
    app = create_app(settings.model_copy(update={"max_batch": 10, "max_body_bytes": 4096}))
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        yield c


def ok_event(i: int, **extra: Any) -> dict[str, Any]:
    """A valid event of user u1."""
    return {"event_id": f"ok-{i}", "user_id": "u1", "item_id": f"i{i}", "type": "view", **extra}


def stored_count(client: TestClient, user_id: str = "u1") -> int:
    """How many events the store holds for the user (0 when unknown)."""
    r = client.get(f"/v1/users/{user_id}")
    return r.json()["event_count"] if r.status_code == 200 else 0


def assert_error_shape(body: dict[str, Any], code: str) -> str:
    """The one error shape; returns the message."""
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], list)
    return str(body["error"]["message"])


BAD_EVENTS: list[tuple[str, Any, str]] = [
    ("user_id not a string", {"user_id": 5, "item_id": "i", "type": "view"}, "user_id: must be a string"),
    ("item_id a list", {"user_id": "u1", "item_id": ["i"], "type": "view"}, "item_id: must be a string"),
    ("missing item_id", {"user_id": "u1", "type": "view"}, "item_id: is required"),
    ("missing user_id", {"item_id": "i", "type": "view"}, "user_id: is required"),
    ("missing type", {"user_id": "u1", "item_id": "i"}, "type: is required"),
    ("empty user_id", {"user_id": "", "item_id": "i", "type": "view"}, "user_id: must not be empty"),
    ("blank item_id", {"user_id": "u1", "item_id": "   ", "type": "view"}, "item_id: must not be empty"),
    ("empty event_id", {"event_id": "", "user_id": "u1", "item_id": "i", "type": "view"}, "event_id: must"),
    (
        "user_id too long",
        {"user_id": "u" * 257, "item_id": "i", "type": "view"},
        "user_id: must have at most 256",
    ),
    (
        "event_id too long",
        {"event_id": "e" * 257, "user_id": "u1", "item_id": "i", "type": "view"},
        "event_id:",
    ),
    (
        "unknown type",
        {"user_id": "u1", "item_id": "i", "type": "teleport"},
        "type: unknown event type 'teleport'",
    ),
    (
        "value a word",
        {"user_id": "u1", "item_id": "i", "type": "rating", "value": "five"},
        "value: must be a number",
    ),
    (
        "bad timestamp",
        {"user_id": "u1", "item_id": "i", "type": "view", "timestamp": "yesterday"},
        "timestamp:",
    ),
    ("NUL in user_id", {"user_id": "u\x00", "item_id": "i", "type": "view"}, "user_id: must not contain NUL"),
    ("NUL in type", {"user_id": "u1", "item_id": "i", "type": "vi\x00ew"}, "type: must not contain NUL"),
    ("entry not an object", "just a string", "must be an object"),
    ("entry null", None, "must be an object"),
]


def test_each_bad_event_rejected_by_index_and_the_valid_ones_stored(client: TestClient) -> None:
    events: list[Any] = []
    for i, (_, bad, _) in enumerate(BAD_EVENTS):
        events += [ok_event(i), bad]  # valid at even indexes, bad at odd ones
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["accepted"] == len(BAD_EVENTS) and body["duplicates"] == 0
    assert [x["index"] for x in body["rejected"]] == [2 * i + 1 for i in range(len(BAD_EVENTS))]
    for rejection, (name, _, error) in zip(body["rejected"], BAD_EVENTS, strict=True):
        assert error in rejection["error"], name
        assert rejection["loc"][:2] == ["events", rejection["index"]]
    assert stored_count(client) == len(BAD_EVENTS)


def test_wrong_types_ids_and_lengths_name_the_field_when_nothing_is_valid(client: TestClient) -> None:
    r = client.post("/v1/events", json={"events": [b for _, b, _ in BAD_EVENTS]})
    assert r.status_code == 422, r.text
    message = assert_error_shape(r.json(), "validation_error")
    assert message.startswith("events[0].user_id: must be a string")
    details = r.json()["error"]["details"]
    assert [d["loc"][1] for d in details] == list(range(len(BAD_EVENTS)))
    for detail, (_, _, error) in zip(details, BAD_EVENTS, strict=True):
        assert error in detail["msg"]


def test_nan_and_infinite_values_rejected_with_the_field(client: TestClient) -> None:
    literals = [b"NaN", b"Infinity", b"-Infinity", b"1e999"]
    bad = [b'{"user_id": "u1", "item_id": "i1", "type": "rating", "value": ' + lit + b"}" for lit in literals]
    body = b'{"events": [{"event_id": "ok-0", "user_id": "u1", "item_id": "i0", "type": "view"}, '
    body += b", ".join(bad) + b"]}"
    r = client.post("/v1/events", content=body, headers=JSON)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["accepted"] == 1
    assert [x["index"] for x in out["rejected"]] == [1, 2, 3, 4]
    for rejection in out["rejected"]:
        assert rejection["error"].startswith("value: must be a finite number"), rejection
    assert stored_count(client) == 1


def test_only_nan_is_a_422_naming_the_value(client: TestClient) -> None:
    body = b'{"events": [{"user_id": "u1", "item_id": "i1", "type": "rating", "value": NaN}]}'
    r = client.post("/v1/events", content=body, headers=JSON)
    assert r.status_code == 422
    assert assert_error_shape(r.json(), "validation_error").startswith("events[0].value: must be a finite")


def test_timestamp_more_than_a_day_ahead_rejected(client: TestClient) -> None:
    now = datetime.now(UTC)
    events = [
        ok_event(0, timestamp=(now + timedelta(hours=23)).isoformat()),  # within the tolerance
        ok_event(1, timestamp=(now + timedelta(days=1, minutes=5)).isoformat()),
        ok_event(2, timestamp="2031-01-01T00:00:00Z"),
        ok_event(3, timestamp="2026-01-01T09:00:00+09:00"),  # converted to UTC
        ok_event(4, timestamp="2020-01-01T00:00:00"),  # naive: read as UTC
    ]
    body = client.post("/v1/events", json={"events": events}).json()
    assert body["accepted"] == 3
    assert [r["index"] for r in body["rejected"]] == [1, 2]
    assert "2031-01-01T00:00:00+00:00 is more than 1 day" in body["rejected"][1]["error"]
    assert body["rejected"][1]["error"].startswith("timestamp:")
    latest = client.get("/v1/users/u1").json()["latest_events"]
    assert {e["event_id"] for e in latest} == {"ok-0", "ok-3", "ok-4"}
    stamps = {e["event_id"]: e["timestamp"] for e in latest}
    assert stamps["ok-4"] == "2020-01-01T00:00:00Z"
    assert stamps["ok-3"] == "2026-01-01T00:00:00Z"


def test_configured_event_type_is_accepted(settings: Settings) -> None:
    weights = {**settings.event_weights, "wishlist": 3.0}
    app = create_app(settings.model_copy(update={"event_weights": weights}))
    with TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as c:
        r = c.post("/v1/events", json={"events": [{"user_id": "u1", "item_id": "i", "type": "wishlist"}]})
        assert r.json() == {"accepted": 1, "duplicates": 0, "rejected": []}


def test_batch_over_the_limit_is_413(small_client: TestClient) -> None:
    r = small_client.post("/v1/events", json={"events": [ok_event(i) for i in range(11)]})
    assert r.status_code == 413
    assert "at most 10" in assert_error_shape(r.json(), "payload_too_large")
    assert r.json()["error"]["details"][0]["loc"] == ["events"]
    assert stored_count(small_client) == 0
    r = small_client.post("/v1/events", json={"events": [ok_event(i) for i in range(10)]})
    assert r.json()["accepted"] == 10


def test_default_batch_limit_is_5000(client: TestClient) -> None:
    events = [{"user_id": "u1", "item_id": "i", "type": "view"}] * 5001
    r = client.post("/v1/events", json={"events": events})
    assert r.status_code == 413
    assert "5001 entries; at most 5000" in r.json()["error"]["message"]


def _big_body() -> bytes:
    events = [ok_event(i, value=1.0, timestamp="2026-01-01T00:00:00Z") for i in range(10)]
    return json.dumps({"events": events, "padding": "x" * 5000}).encode()


def test_body_over_the_cap_is_413_with_content_length(small_client: TestClient) -> None:
    r = small_client.post("/v1/events", content=_big_body(), headers=JSON)
    assert r.status_code == 413
    assert "RECO_MAX_BODY_BYTES" in assert_error_shape(r.json(), "payload_too_large")
    assert stored_count(small_client) == 0


def test_body_over_the_cap_is_413_when_chunked(small_client: TestClient) -> None:
    body = _big_body()

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 512):
            yield body[start : start + 512]

    r = small_client.post("/v1/events", content=chunks(), headers=JSON)
    assert r.request.headers.get("transfer-encoding") == "chunked"
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    assert "exceeds 4096 bytes" in assert_error_shape(r.json(), "payload_too_large")
    assert stored_count(small_client) == 0


def test_chunked_body_within_the_cap_is_stored(small_client: TestClient) -> None:
    body = json.dumps({"events": [ok_event(i) for i in range(3)]}).encode()
    r = small_client.post("/v1/events", content=iter([body[:20], body[20:]]), headers=JSON)
    assert r.status_code == 200, r.text
    assert r.json()["accepted"] == 3


NOT_A_BATCH: list[tuple[bytes, str]] = [
    (b"not json", "body: not valid JSON"),
    (b'{"events": [', "body: not valid JSON"),
    (b"\xff\xfe\x00", "body: not valid JSON"),
    (b"", "body: a JSON body is required"),
    (b"[1, 2]", "body: must be an object"),
    (b'"events"', "body: must be an object"),
    (b"{}", "events: is required"),
    (b'{"events": 5}', "events: must be a list"),
    (b'{"events": {"user_id": "u1"}}', "events: must be a list"),
]


def test_body_that_is_not_a_batch_is_422(client: TestClient) -> None:
    for body, message in NOT_A_BATCH:
        r = client.post("/v1/events", content=body, headers=JSON)
        assert r.status_code == 422, (body, r.text)
        assert assert_error_shape(r.json(), "validation_error").startswith(message), body


def test_empty_batch_is_accepted_as_nothing(client: TestClient) -> None:
    r = client.post("/v1/events", json={"events": []})
    assert r.json() == {"accepted": 0, "duplicates": 0, "rejected": []}


def test_timestamp_defaults_to_receipt_and_value_is_kept(client: TestClient) -> None:
    before = datetime.now(UTC)
    client.post("/v1/events", json={"events": [ok_event(0, type="rating", value=4.5)]})
    event = client.get("/v1/users/u1").json()["latest_events"][0]
    assert event["value"] == 4.5 and event["type"] == "rating"
    stamp = datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00"))
    assert before - timedelta(seconds=1) <= stamp <= datetime.now(UTC) + timedelta(seconds=1)


def test_unknown_fields_are_refused_and_ids_trimmed(client: TestClient) -> None:
    r = client.post("/v1/events", json={"events": [ok_event(0, user_id=" u1 ", session="s-9")]})
    assert r.status_code == 422 and "session: is not a known field" in r.json()["error"]["message"]
    r = client.post("/v1/events", json={"events": [ok_event(0, user_id=" u1 ")]})
    assert r.json()["accepted"] == 1
    assert stored_count(client, "u1") == 1
