"""SIGKILL of a worker process mid-training: serving stays on the old version, the job recovers by lease."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.api.app import create_app
from app.artifacts import list_versions
from app.db.engine import make_engine, make_sessionmaker
from app.registry import repository as registry
from app.settings import Settings
from app.trainer.worker import Worker
from tests.conftest import READ_KEY, auth
from tests.e2e.support import PYTHON, enqueue, job_row, load_chain_world, tiny, worker_env

LEASE_S = 2.0


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def wait_for(condition: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def served_version(api: TestClient) -> str | None:
    answer = api.get("/v1/users/u3/recommendations?k=3", headers=auth(READ_KEY))
    assert answer.status_code == 200
    return answer.json()["model_version"]  # type: ignore[no-any-return]


def test_sigkill_mid_training_keeps_the_old_version_and_the_job_recovers(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    enqueue(sessions)
    Worker(tiny(settings), sessions).run(once=True)
    with sessions() as s:
        old = registry.active_version(s)
    assert old is not None

    job_id = enqueue(sessions)
    slow = worker_env(settings, train_epochs=500, train_patience=500, job_lease_seconds=LEASE_S)
    victim = subprocess.Popen([PYTHON, "-m", "app.trainer"], env=slow, stderr=subprocess.DEVNULL)
    try:
        # Kill it once it reported an epoch: in the middle of training, long before it could finish.
        wait_for(lambda: job_row(sessions, job_id)["progress"] > 0.1, 90, "the worker to report an epoch")
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(10)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()

    job = job_row(sessions, job_id)
    assert job["status"] == "running" and job["attempts"] == 1  # nobody knows yet that it died
    with sessions() as s:
        assert registry.active_version(s) == old
    assert list_versions(settings.artifact_dir) == [old]  # no partial version is visible
    with TestClient(create_app(settings)) as api:
        assert served_version(api) == old

        # A restarted worker takes the job back once the lease expired and completes it.
        time.sleep(LEASE_S + 0.2)
        restarted = subprocess.run(
            [PYTHON, "-m", "app.trainer", "--once"],
            env=worker_env(settings, job_lease_seconds=LEASE_S),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert restarted.returncode == 0, restarted.stderr[-2000:]
        assert "stopped heartbeating" in restarted.stderr

        job = job_row(sessions, job_id)
        assert job["status"] == "succeeded" and job["attempts"] == 2 and job["error"] is None
        new = job["model_version"]
        assert new is not None and new != old
        with sessions() as s:
            assert registry.active_version(s) == new
        assert list_versions(settings.artifact_dir) == [old, new]
        wait_for(lambda: served_version(api) == new, 15, "the API to hot-swap to the new version")
