"""End to end: events in over HTTP -> admin retrain -> a worker process trains -> answers carry the new version."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.settings import Settings
from tests.conftest import ADMIN_KEY, INGEST_KEY, READ_KEY, STATIC_KEYS, auth
from tests.e2e.support import PYTHON, TINY, chain_events, tiny, worker_env
from tests.helpers.servers import RECO, ROOT, free_port

N_ITEMS = 40


def event_batch() -> list[dict[str, Any]]:
    return [
        {
            "event_id": f"e{n}",
            "user_id": e.user_id,
            "item_id": e.item_id,
            "type": e.type,
            "timestamp": e.timestamp.isoformat().replace("+00:00", "Z"),
        }
        for n, e in enumerate(chain_events())
    ]


def last_items() -> dict[str, int]:
    """Each chain user's latest item number."""
    latest: dict[str, int] = {}
    for e in chain_events():
        latest[e.user_id] = int(e.item_id[1:])
    return latest


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def test_ingest_retrain_worker_and_the_answers_change(settings: Settings) -> None:
    settings = tiny(settings, model_poll_seconds=0.2)
    with TestClient(create_app(settings)) as api:
        ingest = api.post("/v1/events", json={"events": event_batch()}, headers=auth(INGEST_KEY))
        assert ingest.status_code == 200 and ingest.json()["accepted"] == 120 * 12

        def answer(user: str) -> dict[str, Any]:
            response = api.get(f"/v1/users/{user}/recommendations?k=5", headers=auth(READ_KEY))
            assert response.status_code == 200
            return response.json()  # type: ignore[no-any-return]

        before = answer("u0")
        assert before["strategy"] == "popular" and before["model_version"] is None

        job = api.post("/v1/admin/retrain", json={"reason": "e2e"}, headers=auth(ADMIN_KEY)).json()
        assert job["status"] == "queued"
        worker = subprocess.run(
            [PYTHON, "-m", "app.trainer", "--once"],
            env=worker_env(settings),
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert worker.returncode == 0, worker.stderr[-2000:]
        done = api.get(f"/v1/admin/jobs/{job['job_id']}", headers=auth(ADMIN_KEY)).json()
        assert done["status"] == "succeeded" and done["model_status"] == "active"
        version = done["model_version"]

        wait_for(lambda: answer("u0")["model_version"] == version, 15, "the API to serve the new version")
        after = answer("u0")
        assert after["strategy"] == "personalized"
        assert [i["item_id"] for i in after["items"]] != [i["item_id"] for i in before["items"]]
        # The new model answers with what the chains imply: the item after each user's latest one (a random
        # ranking would have it in the top 5 for about 5 users in 28).
        latest = last_items()
        users = [f"u{n}" for n in range(20)]
        hits = sum(
            f"i{(latest[u] + 1) % N_ITEMS}" in [i["item_id"] for i in answer(u)["items"]] for u in users
        )
        assert hits >= 16, f"{hits} of {len(users)} users got their next chain item in the top 5"


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                out.append(int(entry.name))
    return out


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads child processes from /proc")
def test_embedded_worker_runs_beside_reco_serve_and_stops_with_it(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "RECO_DATABASE_URL": f"sqlite:///{tmp_path / 'reco.db'}",
            "RECO_ARTIFACT_DIR": str(tmp_path / "artifacts"),
            "RECO_API_KEYS": STATIC_KEYS,
            "RECO_WORKER_POLL_SECONDS": "0.2",
            "RECO_MODEL_POLL_SECONDS": "0.2",
            **{f"RECO_{k.upper()}": str(v) for k, v in TINY.items()},
        }
    )
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        server = subprocess.Popen(
            [*RECO, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=log
        )
        try:
            wait_for(lambda: _up(base, server), 60, "reco serve to answer /healthz")
            (trainer,) = _children(server.pid)  # the embedded worker
            with httpx.Client(base_url=base, timeout=30) as http:
                ingest = http.post("/v1/events", json={"events": event_batch()}, headers=auth(INGEST_KEY))
                assert ingest.status_code == 200
                job = http.post("/v1/admin/retrain", headers=auth(ADMIN_KEY)).json()

                def finished() -> bool:
                    status = http.get(f"/v1/admin/jobs/{job['job_id']}", headers=auth(ADMIN_KEY)).json()
                    assert status["status"] != "failed", status
                    return status["status"] == "succeeded"

                wait_for(finished, 120, "the embedded worker to run the job")
                version = http.get("/v1/admin/models", headers=auth(ADMIN_KEY)).json()["active"]
                wait_for(
                    lambda: (
                        http.get("/v1/users/u1/recommendations", headers=auth(READ_KEY)).json()[
                            "model_version"
                        ]
                        == version
                    ),
                    15,
                    "the API to serve the version",
                )
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
            log.seek(0)
            output = log.read().decode(errors="replace")
    assert server.returncode in (0, -signal.SIGTERM), output[-3000:]
    assert "stopped after 1 job(s)" in output
    assert (
        not Path(f"/proc/{trainer}").exists() or "Z" in Path(f"/proc/{trainer}/stat").read_text().split()[2]
    ), "the embedded worker outlived reco serve"


def _up(base: str, server: subprocess.Popen[bytes]) -> bool:
    if server.poll() is not None:
        raise AssertionError(f"reco serve exited with {server.returncode}")
    try:
        return httpx.get(base + "/healthz", timeout=0.5).status_code == 200
    except httpx.TransportError:
        return False
