"""Bad input answers a 4xx naming the field, never a 500; the key is checked before the body is read."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from tests.conftest import READ_KEY, auth

NUL_PATHS = [
    ("get", "/v1/users/a%00b"),
    ("put", "/v1/users/a%00b"),
    ("get", "/v1/items/a%00b"),
    ("put", "/v1/items/a%00b"),
    ("get", "/v1/items/a%00b/similar"),
    ("get", "/v1/admin/jobs/a%00b"),
    ("post", "/v1/admin/models/a%00b/activate"),
    ("get", "/v1/users/a%00b/recommendations"),
]


def _error(r: object, status: int = 422) -> dict:
    assert r.status_code == status, r.text  # type: ignore[attr-defined]
    body = r.json()  # type: ignore[attr-defined]
    assert set(body["error"]) == {"code", "message", "details"}
    return body["error"]


@pytest.mark.parametrize(("method", "path"), NUL_PATHS)
def test_nul_in_path_ids_is_4xx_naming_the_field(client: TestClient, method: str, path: str) -> None:
    kwargs = {"json": {}} if method == "put" else {}
    err = _error(getattr(client, method)(path, **kwargs))
    assert err["details"][0]["loc"][0] == "path"
    assert "control characters" in err["details"][0]["msg"]


def test_slash_in_ids_is_refused_everywhere(client: TestClient) -> None:
    err = _error(client.post("/v1/items", json={"items": [{"item_id": "a/b", "title": "x"}]}))
    assert "'/'" in err["message"] and "item_id" in err["message"]
    r = client.post("/v1/events", json={"events": [{"user_id": "u/1", "item_id": "i1", "type": "view"}]})
    err = _error(r)
    assert "user_id" in err["message"] and "'/'" in err["message"]
    assert client.get("/v1/items/a%2Fb").status_code in (404, 422)


@pytest.mark.parametrize(
    "path",
    [
        "/v1/items?category=a%00b",
        "/v1/popular?category=a%00b",
        "/v1/popular?window=a%00b",
        "/v1/users/u1/recommendations?category=a%00b",
        "/v1/users/u1/recommendations?exclude=i1,a%00b",
    ],
)
def test_nul_in_query_filters_is_422(client: TestClient, path: str) -> None:
    err = _error(client.get(path))
    assert err["details"][0]["loc"][0] == "query"


def test_cursor_overflow_is_422(client: TestClient) -> None:
    cursor = base64.urlsafe_b64encode(b"i:" + b"9" * 40).decode().rstrip("=")
    err = _error(client.get(f"/v1/items?cursor={cursor}"))
    assert err["details"][0]["loc"] == ["query", "cursor"]


def test_timestamp_before_year_1_utc_is_422(client: TestClient) -> None:
    event = {"user_id": "u1", "item_id": "i1", "type": "view", "timestamp": "0001-01-01T00:00:00+01:00"}
    err = _error(client.post("/v1/events", json={"events": [event]}))
    assert "timestamp" in err["message"] and "UTC" in err["message"]


def test_deep_json_is_422(client: TestClient) -> None:
    deep = "[" * 10_000 + "]" * 10_000
    for method, path in (("post", "/v1/events"), ("put", "/v1/items/i1"), ("put", "/v1/users/u1")):
        r = client.request(method.upper(), path, content=deep, headers={"content-type": "application/json"})
        assert "nested deeper" in _error(r)["message"], path
    attrs = '{"a":' * 995 + "{}" + "}" * 995  # built as text: json.dumps itself recurses too deep
    body = '{"attributes":' + attrs + "}"
    r = client.put("/v1/items/i1", content=body, headers={"content-type": "application/json"})
    assert "nested deeper" in _error(r)["message"]
    r = client.post(
        "/v1/items",
        content='{"items": [{"item_id": "i1", "attributes": ' + attrs + "}]}",
        headers={"content-type": "application/json"},
    )
    assert "nested deeper" in _error(r)["message"]


def test_events_refuse_unknown_fields(client: TestClient) -> None:
    event = {"user_id": "u1", "item_id": "i1", "type": "view", "colour": "red"}
    err = _error(client.post("/v1/events", json={"events": [event]}))
    assert "colour" in err["message"] and "not a known field" in err["message"]


def test_limit_errors_in_plain_words(client: TestClient) -> None:
    err = _error(client.get("/v1/items?limit=0"))
    assert err["message"] == "query.limit: must be at least 1 (got '0')"
    err = _error(client.get("/v1/items?limit=abc&cursor=" + "x" * 100))
    assert err["message"].startswith("query.limit: must be a whole number")
    assert err["message"].endswith("(and 1 more problem)")


def test_put_without_content_type_says_send_json(client: TestClient) -> None:
    err = _error(client.put("/v1/items/i1", content=b'{"title": "x"}', headers={"content-type": ""}))
    assert "application/json" in err["message"]


MALFORMED = [
    ("PUT", "/v1/items/i1"),
    ("PUT", "/v1/users/u1"),
    ("POST", "/v1/recommendations"),
    ("POST", "/v1/admin/retrain"),
]


@pytest.mark.parametrize(("method", "path"), MALFORMED)
def test_key_is_checked_before_the_body(client: TestClient, method: str, path: str) -> None:
    hdrs = {"content-type": "application/json"}
    r = client.request(method, path, content=b"{not json", headers={**hdrs, "Authorization": ""})
    assert _error(r, 401)["code"] == "unauthorized"
    if path != "/v1/recommendations":  # read keys may ask for recommendations
        r = client.request(method, path, content=b"{not json", headers={**hdrs, **auth(READ_KEY)})
        assert _error(r, 403)["code"] == "forbidden"


def test_seven_mb_body_without_key_is_401_unread(client: TestClient) -> None:
    sent = 0

    def body() -> Iterator[bytes]:
        nonlocal sent
        for _ in range(7):
            sent += 1
            yield b" " * (1 << 20)

    r = client.put(
        "/v1/items/i1", content=body(), headers={"Authorization": "", "content-type": "application/json"}
    )
    assert _error(r, 401)["code"] == "unauthorized"
    assert sent < 7  # the body was not read through


def test_openapi_documents_bearer_and_the_error_shape(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    op = spec["paths"]["/v1/items/{item_id}"]["put"]
    assert op["security"] == [{"HTTPBearer": []}]
    for status in ("401", "403", "422"):
        ref = op["responses"][status]["content"]["application/json"]["schema"]["$ref"]
        assert ref == "#/components/schemas/ErrorOut", status
    assert set(spec["components"]["schemas"]["ErrorOut"]["properties"]) == {"error"}


def test_available_null_is_422_not_500(client: TestClient) -> None:
    # found by scripts/fuzz_api.py: null reached the store's NOT NULL column
    err = _error(client.put("/v1/items/i1", json={"available": None}))
    assert err["message"].startswith("available: must be true or false")
    err = _error(client.post("/v1/items", json={"items": [{"item_id": "i1", "available": None}]}))
    assert "available" in err["message"]
