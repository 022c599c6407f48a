"""/v1/admin on SQLite and PostgreSQL: retrain, jobs, models, activation (promotion, rollback, refusals)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.app import create_app
from app.db.engine import make_engine, make_sessionmaker
from app.settings import Settings
from app.trainer.worker import Worker
from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY, auth
from tests.e2e.support import load_chain_world, tiny


@pytest.fixture
def admin_settings(settings: Settings) -> Settings:
    return tiny(settings, model_poll_seconds=0.2)


@pytest.fixture
def sessions(admin_settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(admin_settings)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def api(admin_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(admin_settings), headers=auth(ADMIN_KEY)) as c:
        yield c


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)


def train(settings: Settings, sessions: sessionmaker[Session], **extra: object) -> None:
    assert Worker(settings.model_copy(update=extra), sessions).run(once=True) == 1


QUICK = {"train_epochs": 2, "gate_tolerance": 1.0}  # versions to promote and roll back, quality aside


def test_admin_routes_need_the_admin_scope(api: TestClient) -> None:
    assert api.post("/v1/admin/retrain", headers={"Authorization": ""}).status_code == 401
    for key in (READ_KEY, INGEST_KEY):
        response = api.post("/v1/admin/retrain", headers=auth(key))
        assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
        assert api.get("/v1/admin/models", headers=auth(key)).status_code == 403


def test_retrain_returns_the_open_job_until_it_ends(
    api: TestClient, admin_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    first = api.post("/v1/admin/retrain", json={"reason": "new catalog"})
    assert first.status_code == 202
    body = first.json()
    assert body["status"] == "queued" and body["reason"] == "new catalog" and body["trigger"] == "api"
    again = api.post("/v1/admin/retrain")  # no body at all is fine
    assert again.status_code == 202 and again.json()["job_id"] == body["job_id"]

    job = api.get(f"/v1/admin/jobs/{body['job_id']}").json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["model_version"] is None

    train(admin_settings, sessions)
    done = api.get(f"/v1/admin/jobs/{body['job_id']}").json()
    assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["error"] is None
    assert done["model_status"] == "active" and done["metrics"]["valid_NDCG@10"] > 0.8
    assert done["metrics"]["gate"]["accepted"] is True

    third = api.post("/v1/admin/retrain").json()  # the previous one ended: a new job
    assert third["job_id"] != body["job_id"] and third["status"] == "queued"


def test_concurrent_retrain_requests_share_one_job(api: TestClient) -> None:
    barrier = threading.Barrier(4)
    ids: list[str] = []

    def post() -> None:
        barrier.wait()
        response = api.post("/v1/admin/retrain", json={"reason": "race"})
        assert response.status_code == 202
        ids.append(response.json()["job_id"])

    threads = [threading.Thread(target=post) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == 4 and len(set(ids)) == 1


def test_bad_bodies_and_unknown_ids_get_the_error_shape(api: TestClient) -> None:
    bad = api.post("/v1/admin/retrain", json={"reason": 5})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"
    assert "reason" in bad.json()["error"]["message"]
    assert api.post("/v1/admin/retrain", json={"why": "x"}).status_code == 422
    missing = api.get("/v1/admin/jobs/nope")
    assert missing.status_code == 404 and "nope" in missing.json()["error"]["message"]
    unknown = api.post("/v1/admin/models/20990101-000000/activate")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "not_found"


def test_models_list_and_rollback_restores_the_previous_answers(
    api: TestClient, admin_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)

    def answer() -> dict[str, Any]:
        body = api.get("/v1/users/u3/recommendations?k=5", headers=auth(READ_KEY)).json()
        assert body.pop("recommendation_id")  # unique per answer: the rest is what must match
        return body  # type: ignore[no-any-return]

    answers = []
    for seed in (0, 1):  # two different models of the same data
        api.post("/v1/admin/retrain")
        train(admin_settings, sessions, **QUICK, train_seed=seed)
        active = api.get("/v1/admin/models").json()["active"]
        wait_for(lambda active=active: answer()["model_version"] == active, 15, f"the API to serve {active}")
        answers.append(answer())
    listing = api.get("/v1/admin/models").json()
    newer, older = (m["version"] for m in listing["models"])  # newest first
    assert listing["active"] == newer
    assert [m["status"] for m in listing["models"]] == ["active", "retired"]
    model = listing["models"][0]
    assert model["training_interactions"] == 120 * 12 and model["artifact"] is True
    assert model["metrics"]["valid_NDCG@10"] > 0 and model["created_at"] and model["activated_at"]
    assert answers[0]["items"] != answers[1]["items"]

    rollback = api.post(f"/v1/admin/models/{older}/activate")
    assert rollback.status_code == 200
    assert rollback.json() == {"version": older, "status": "active", "previous": newer, "serving": older}
    statuses = {m["version"]: m["status"] for m in api.get("/v1/admin/models").json()["models"]}
    assert statuses == {older: "active", newer: "retired"}
    assert answer() == answers[0]  # the same version, the same answer as before


def test_activation_refuses_missing_or_corrupt_files(
    api: TestClient, admin_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    for _ in range(2):
        api.post("/v1/admin/retrain")
        train(admin_settings, sessions, **QUICK)
    newer, older = (m["version"] for m in api.get("/v1/admin/models").json()["models"])
    vectors = admin_settings.artifact_dir / older / "item_vectors.npy"
    vectors.write_bytes(vectors.read_bytes()[:-8])
    corrupt = api.post(f"/v1/admin/models/{older}/activate")
    assert corrupt.status_code == 409 and corrupt.json()["error"]["code"] == "conflict"
    assert "item_vectors.npy" in corrupt.json()["error"]["message"]

    for path in sorted((admin_settings.artifact_dir / older).iterdir()):
        path.unlink()
    (admin_settings.artifact_dir / older).rmdir()
    missing = api.post(f"/v1/admin/models/{older}/activate")
    assert missing.status_code == 409 and older in missing.json()["error"]["message"]
    listing = api.get("/v1/admin/models").json()
    assert listing["active"] == newer  # nothing changed
    assert [m["artifact"] for m in listing["models"]] == [True, False]


def test_retrain_takes_a_mode_and_a_time_budget(api: TestClient) -> None:
    job = api.post("/v1/admin/retrain", json={"mode": "full", "time_budget_s": 30}).json()
    assert job["params"] == {"mode": "full", "time_budget_s": 30.0} and job["detail"] == {}
    shown = api.get(f"/v1/admin/jobs/{job['job_id']}").json()
    assert shown["params"] == job["params"]


def test_bad_mode_or_budget_is_a_422_naming_the_field(api: TestClient) -> None:
    bad = api.post("/v1/admin/retrain", json={"mode": "fast"})
    assert bad.status_code == 422 and "mode" in bad.json()["error"]["message"]
    bad = api.post("/v1/admin/retrain", json={"time_budget_s": 0})
    assert bad.status_code == 422 and "time_budget_s" in bad.json()["error"]["message"]
