"""Hot swap under concurrent load, corrupt versions, and the background polls that drive them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.artifacts.store import VECTORS_FILE
from app.settings import Settings
from tests.api.test_recommend import QUIET, state_of
from tests.conftest import READ_KEY, auth
from tests.serving_support import load_shop, register, set_active, trained

USERS = [f"u{i}" for i in range(8)]


@pytest.fixture
def two_versions(settings: Settings) -> Iterator[TestClient]:
    """The shop with v1 (seed 0) and v2 (seed 1) registered, v1 active."""
    quiet = settings.model_copy(update=QUIET)
    with TestClient(create_app(quiet), headers=auth(READ_KEY)) as c:
        state = state_of(c)
        load_shop(state.sessions)
        register(state.sessions, quiet.artifact_dir, trained(0), "v1")
        register(state.sessions, quiet.artifact_dir, trained(1), "v2", active=False)
        state.registry.refresh_now()
        yield c


def answers(client: TestClient) -> dict[str, list[str]]:
    out = {}
    for user in USERS:
        body = client.get(f"/v1/users/{user}/recommendations", params={"k": 10}).json()
        out[user] = [i["item_id"] for i in body["items"]]
    return out


def test_swap_under_concurrent_load_never_fails_or_mixes_versions(two_versions: TestClient) -> None:
    client = two_versions
    state = state_of(client)
    expected = {"v1": answers(client)}
    set_active(state.sessions, "v2")
    assert state.registry.refresh_now() == "v2"
    expected["v2"] = answers(client)
    assert expected["v1"] != expected["v2"]  # two different models: a mixed answer would show
    stop = threading.Event()
    results: list[tuple[int, str, dict]] = []

    def fire(worker: int) -> None:
        n = 0
        while not stop.is_set():
            user = USERS[(worker + n) % len(USERS)]
            k = 1 + (n % 10)  # many parameter sets: most requests miss the cache and compute
            response = client.get(
                f"/v1/users/{user}/recommendations", params={"k": k, "exclude": f"none{n % 7}"}
            )
            results.append((response.status_code, user, response.json()))
            n += 1

    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(fire, w) for w in range(4)]
        for version in ["v1", "v2", "v1", "v2", "v1"]:
            set_active(state.sessions, version)
            assert state.registry.refresh_now() == version
            time.sleep(0.3)
        stop.set()
        for future in futures:
            future.result()
    seen_versions = {body.get("model_version") for _, _, body in results}
    assert len(results) > 50 and seen_versions == {"v1", "v2"}
    for status, user, body in results:
        assert status == 200, body
        got = [i["item_id"] for i in body["items"]]
        assert got == expected[body["model_version"]][user][: len(got)] and got, (user, body)


def test_a_corrupt_version_keeps_the_old_one_serving(two_versions: TestClient, settings: Settings) -> None:
    state = state_of(two_versions)
    register(state.sessions, settings.artifact_dir, trained(1), "v3", active=False)
    vectors = settings.artifact_dir / "v3" / VECTORS_FILE
    vectors.write_bytes(vectors.read_bytes()[:-64] + b"\0" * 64)
    set_active(state.sessions, "v3")
    assert state.registry.refresh_now() == "v1"
    assert state.registry.last_error is not None and "v3" in state.registry.last_error
    response = two_versions.get("/v1/users/u1/recommendations")
    assert response.status_code == 200 and response.json()["model_version"] == "v1"
    ready = two_versions.get("/readyz").json()
    assert ready["serving"]["model_version"] == "v1" and "v3" in ready["serving"]["model_error"]


def test_background_polls_pick_up_activations_and_catalog_changes(settings: Settings) -> None:
    fast = settings.model_copy(
        update={"model_poll_seconds": 0.1, "catalog_poll_seconds": 0.1, "popular_poll_seconds": 0.1}
    )
    with TestClient(create_app(fast), headers=auth(READ_KEY)) as client:
        state = state_of(client)
        load_shop(state.sessions)
        register(state.sessions, fast.artifact_dir, trained(0), "v1")
        deadline = time.monotonic() + 20
        while state.registry.version != "v1" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/v1/users/u1/recommendations").json()["model_version"] == "v1"
        while not state.popular.counters.ranking("7d").item_ids and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(client.get("/v1/popular", params={"k": 3}).json()["items"]) == 3
