"""/healthz, /readyz, /metrics and the OpenAPI document (/readyz with the database cut: test_faults.py)."""

from __future__ import annotations

import time

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.conftest import ADMIN_KEY, INGEST_KEY, auth


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text, 0 when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith("#") or not line.startswith(name):
            continue
        head, value = line.rsplit(" ", 1)
        sample, _, rest = head.partition("{")
        found = ",".join(sorted(rest.rstrip("}").split(","))) if rest else ""
        if sample == name and found == want:
            return float(value)
    return 0.0


def test_healthz_and_readyz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200
    assert r.json()["status"] == "ready"
    assert r.json()["checks"]["database"] == "ok"
    assert r.json()["checks"]["cache"] == "ok"


def test_metrics_count_requests_per_route_and_events_by_outcome(client: TestClient) -> None:
    events = [
        {"event_id": "a", "user_id": "u1", "item_id": "i1", "type": "view"},
        {"event_id": "a", "user_id": "u1", "item_id": "i1", "type": "view"},
        {"event_id": "b", "user_id": "u1", "item_id": "", "type": "view"},
    ]
    client.post("/v1/events", json={"events": events})
    client.post("/v1/events", json={"events": events[:1]})
    client.get("/v1/users/u1")
    client.get("/v1/users/u2")
    client.get("/v1/users/u1", headers=auth(INGEST_KEY))
    client.get("/no/such/path")
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    text = r.text
    requests = "reco_http_requests_total"
    assert metric(text, requests, method="POST", route="/v1/events", status="200") == 2
    assert metric(text, requests, method="GET", route="/v1/users/{user_id}", status="200") == 1
    assert metric(text, requests, method="GET", route="/v1/users/{user_id}", status="404") == 1
    assert metric(text, requests, method="GET", route="/v1/users/{user_id}", status="403") == 1
    assert metric(text, "reco_http_request_seconds_count", method="POST", route="/v1/events") == 2
    assert metric(text, "reco_events_ingested_total", outcome="accepted") == 1
    assert metric(text, "reco_events_ingested_total", outcome="duplicate") == 2
    assert metric(text, "reco_events_ingested_total", outcome="rejected") == 1
    assert "reco_cache_hit_ratio" in text
    for name in ("hits", "misses", "errors"):
        assert (
            f"# TYPE reco_cache_{name}_total counter" in text and f"reco_cache_{name}_total{{backend=" in text
        )
    assert "/no/such/path" not in text  # unmatched paths do not blow up the label set


def test_metrics_show_training_jobs(settings: Settings) -> None:
    """Read by a background poller (a scrape never queries the store): the new job shows within a poll."""
    app = create_app(settings.model_copy(update={"metrics_poll_seconds": 0.1}))
    with TestClient(app, headers=auth(ADMIN_KEY)) as client:
        assert client.post("/v1/admin/retrain", json={"reason": "metrics test"}).status_code == 202
        deadline = time.monotonic() + 5
        while metric(text := client.get("/metrics").text, "reco_training_jobs", status="queued") != 1:
            assert time.monotonic() < deadline, "the training-job metrics were never refreshed"
            time.sleep(0.05)
        assert "reco_training_job_seconds_count" in text


def test_metrics_can_be_disabled(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metrics_enabled": False}))
    with TestClient(app) as client:
        r = client.get("/metrics")
        assert r.status_code == 404 and "RECO_METRICS_ENABLED" in r.json()["error"]["message"]


def test_openapi_has_every_route_and_the_batch_schemas(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    expected = {
        "/v1/events": {"post"},
        "/v1/items": {"get", "post"},
        "/v1/items/{item_id}": {"get", "put", "delete"},
        "/v1/users/{user_id}": {"get", "put", "delete"},
        "/healthz": {"get"},
        "/readyz": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in doc["paths"], path
        assert methods <= set(doc["paths"][path]), (path, set(doc["paths"][path]))
        for method in methods:
            assert doc["paths"][path][method].get("description") or doc["paths"][path][method].get("summary")
    schemas = doc["components"]["schemas"]
    events_body = doc["paths"]["/v1/events"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert events_body == {"$ref": "#/components/schemas/EventBatchIn"}
    items_body = doc["paths"]["/v1/items"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert items_body == {"$ref": "#/components/schemas/ItemBatchIn"}
    assert schemas["EventBatchIn"]["properties"]["events"]["items"] == {
        "$ref": "#/components/schemas/EventIn"
    }
    assert schemas["ItemBatchIn"]["properties"]["items"]["items"] == {"$ref": "#/components/schemas/ItemIn"}
    event = schemas["EventIn"]
    assert set(event["required"]) == {"user_id", "type"}  # item_id: every type but impression (items)
    assert {"event_id", "value", "timestamp"} <= set(event["properties"])
    assert event["examples"][0]["type"] == "purchase"
    assert {"accepted", "duplicates", "rejected"} <= set(schemas["IngestResult"]["properties"])
    post_events = doc["paths"]["/v1/events"]["post"]
    assert "200" in post_events["responses"] and "413" in post_events["responses"]


def test_metrics_key_restricts_the_scrape(settings: Settings) -> None:
    app = create_app(settings.model_copy(update={"metrics_key": "s3cret"}))
    with TestClient(app) as client:
        for headers in ({}, auth("wrong"), auth(ADMIN_KEY)):
            r = client.get("/metrics", headers=headers)
            assert r.status_code == 401 and "RECO_METRICS_KEY" in r.json()["error"]["message"]
        r = client.get("/metrics", headers=auth("s3cret"))
        assert r.status_code == 200 and "reco_http_requests_total" in r.text
        assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200


def test_docs_can_be_turned_off(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert all(client.get(p).status_code == 200 for p in ("/docs", "/redoc", "/openapi.json"))
    with TestClient(create_app(settings.model_copy(update={"docs_enabled": False}))) as client:
        for path in ("/docs", "/redoc", "/openapi.json"):
            r = client.get(path)
            assert r.status_code == 404 and r.json()["error"]["code"] == "not_found", path


def test_readyz_names_the_dependency_without_internals(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        probe = client.app.state.reco.db_probe  # type: ignore[attr-defined]
        probe._ok = False  # as the probe finds it when the database is down (and every check confirms it)
        probe.check = lambda: None
        r = client.get("/readyz")
    assert r.status_code == 503
    error = r.json()["error"]
    assert error["code"] == "unavailable" and "database" in error["message"]
    assert {"dependency": "database", "status": "unavailable"} in error["details"]
    for leak in ("127.0.0.1", "5432", "psycopg", "sqlite", "connection"):
        assert leak not in r.text


def test_metrics_count_which_strategy_answered_and_an_unknown_category_says_so(client: TestClient) -> None:
    """reco_recommendations_total{kind,strategy}: computed answers and cache hits alike; an empty answer for
    an unknown category carries a `note` (before: an empty list, no hint, no counter)."""
    events = [{"event_id": f"e{n}", "user_id": f"u{n}", "item_id": "i1", "type": "view"} for n in range(3)]
    client.put("/v1/items/i1", json={"title": "t", "categories": ["toys"]})
    assert client.post("/v1/events", json={"events": events}).status_code == 200
    for _ in range(2):  # a miss, then (once stored) maybe a hit: both counted
        assert client.get("/v1/users/nobody/recommendations").status_code == 200
    empty = client.get("/v1/users/nobody/recommendations", params={"category": "no-such-category"}).json()
    assert empty["items"] == [] and "no-such-category" in empty["note"]
    assert "note" not in client.get("/v1/users/nobody/recommendations").json()
    pop = client.get("/v1/popular", params={"category": "no-such-category"}).json()
    assert pop["items"] == [] and "note" in pop
    text = client.get("/metrics").text
    name = "reco_recommendations_total"
    assert metric(text, name, kind="user", strategy="popular") == 3
    assert metric(text, name, kind="user", strategy="popular_category") == 1
    assert metric(text, name, kind="popular", strategy="popular_category") == 1
