"""reco_events_ingested_total{outcome="rejected"} counts all-invalid 422 batches and 413s too (issue 11)."""

from __future__ import annotations

from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.conftest import ADMIN_KEY, STATIC_KEYS, auth


def _rejected(client: TestClient) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith('reco_events_ingested_total{outcome="rejected"}'):
            return float(line.split()[-1])
    return 0.0


def test_rejected_counts_422_and_413(tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'r.db'}",
        artifact_dir=tmp_path / "a",
        api_keys=STATIC_KEYS,  # type: ignore[arg-type]
        embedded_worker=False,
        max_batch=3,
        max_body_bytes=4096,
    )
    from app.db.engine import make_engine
    from app.db.migrate import upgrade

    upgrade(make_engine(settings))
    with TestClient(create_app(settings)) as client:
        bad = {"events": [{"user_id": "u", "item_id": "i", "type": "nope"}] * 2}
        assert client.post("/v1/events", json=bad, headers=auth(ADMIN_KEY)).status_code == 422
        assert _rejected(client) == 2
        many = {"events": [{"user_id": "u", "item_id": "i", "type": "view"}] * 4}
        assert client.post("/v1/events", json=many, headers=auth(ADMIN_KEY)).status_code == 413
        assert _rejected(client) == 6
        big = b'{"events": [' + b" " * 5000 + b"]}"
        r = client.post(
            "/v1/events", content=big, headers={**auth(ADMIN_KEY), "content-type": "application/json"}
        )
        assert r.status_code == 413
        assert _rejected(client) == 7
