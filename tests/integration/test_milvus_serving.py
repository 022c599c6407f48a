"""The service on the Milvus vector engine (a real milvus-lite) answers as it does on FAISS, and swaps versions
collection by collection.

Two `reco serve` processes read one shop (SQLite, the same artifacts): one with the default FAISS engine, one
with RECO_VECTOR_ENGINE=milvus-lite:///...; every kind of answer (personal, category, exclusions, filter
expression, similar items, a session) must be the same list, before and after a version swap. In-process, the
registry's collections are watched through a swap: the new one is complete before it serves, the old one is
dropped after the grace, and none is left at shutdown.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from app.api.app import create_app
from app.db.engine import make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.index.milvus import MilvusEngine, MilvusItemIndex
from app.settings import Settings
from tests.conftest import ADMIN_KEY, READ_KEY, STATIC_KEYS, auth
from tests.helpers.servers import RECO, ROOT, free_port
from tests.serving_support import load_shop, register, set_active, trained, world

USERS = world(0)[0].users[:10]
ASKS: list[tuple[str, dict[str, object]]] = [
    ("personal", {"k": 10}),
    ("category", {"k": 8, "category": "cat1"}),
    ("exclude", {"k": 10, "exclude": "cat0-item0,cat1-item5,cat2-item7,cat3-item9"}),
    ("filter", {"k": 6, "filter": "price < 25", "include_seen": "true"}),
]


def wait_until(check, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return bool(check())


@pytest.fixture(scope="module")
def shop_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite shop with v1 (active) and v2 (registered, inactive)."""
    root = tmp_path_factory.mktemp("milvus-shop")
    settings = Settings(database_url=f"sqlite:///{root / 'reco.db'}", artifact_dir=root / "artifacts")
    engine = make_engine(settings)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    load_shop(sessions)
    register(sessions, settings.artifact_dir, trained(0), "v1")
    register(sessions, settings.artifact_dir, trained(1), "v2", active=False)
    engine.dispose()
    return root


@contextmanager
def reco_servers(envs: list[dict[str, str]], timeout_s: float = 120.0) -> Iterator[list[str]]:
    """`reco serve` processes started side by side (a loaded machine starts torch and milvus-lite slowly);
    yields their base URLs once each answers /healthz, within `timeout_s`."""
    procs: list[tuple[subprocess.Popen[bytes], str, tempfile._TemporaryFileWrapper[bytes]]] = []
    try:
        for env in envs:
            port = free_port()
            log = tempfile.NamedTemporaryFile(prefix="reco-serve-", suffix=".log")  # noqa: SIM115
            proc = subprocess.Popen(
                [*RECO, "serve", "--port", str(port)],
                cwd=ROOT,
                env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            procs.append((proc, f"http://127.0.0.1:{port}", log))
        deadline = time.monotonic() + timeout_s
        for proc, base, log in procs:
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise RuntimeError(f"reco serve exited with {proc.returncode}: {log.read()[-2000:]!r}")
                try:
                    if httpx.get(base + "/healthz", timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reco serve at {base} did not start within {timeout_s} s")
                time.sleep(0.2)
        yield [base for _, base, _ in procs]
    finally:
        for proc, _, log in procs:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
            log.close()


def env_for(root: Path, vector_engine: str) -> dict[str, str]:
    return {
        "RECO_DATABASE_URL": f"sqlite:///{root / 'reco.db'}",
        "RECO_ARTIFACT_DIR": str(root / "artifacts"),
        "RECO_API_KEYS": STATIC_KEYS,
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_MODEL_POLL_SECONDS": "0.3",
        "RECO_VECTOR_ENGINE": vector_engine,
        "RECO_LOG_LEVEL": "WARNING",
    }


def answers(http: httpx.Client) -> dict[str, list[tuple[str, float]]]:
    """Every ask for every user, and similar items and a session answer: item ids with scores."""
    out: dict[str, list[tuple[str, float]]] = {}

    def items(response: httpx.Response) -> list[tuple[str, float]]:
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["strategy"] != "popular", f"fell back: {body}"
        return [(i["item_id"], i["score"]) for i in body["items"]]

    for user in USERS:
        for name, params in ASKS:
            out[f"{name}/{user}"] = items(http.get(f"/v1/users/{user}/recommendations", params=params))
    for item in ("cat0-item3", "cat2-item15"):
        out[f"similar/{item}"] = items(http.get(f"/v1/items/{item}/similar", params={"k": 5}))
    out["session"] = items(
        http.post("/v1/recommendations", json={"recent_items": ["cat3-item8", "cat3-item11"], "k": 5})
    )
    return out


def assert_same(faiss: dict, milvus: dict) -> None:
    assert faiss.keys() == milvus.keys()
    for key in faiss:
        assert [i for i, _ in milvus[key]] == [i for i, _ in faiss[key]], key
        assert milvus[key], key
        for (_, a), (_, b) in zip(faiss[key], milvus[key], strict=True):
            assert a == pytest.approx(b, rel=1e-4, abs=1e-4), key


def serving_version(base: str) -> str | None:
    body = httpx.get(base + "/readyz", timeout=5).json()
    return body.get("serving", {}).get("model_version")


def shop_settings(root: Path, **changes: object) -> Settings:
    return Settings(
        database_url=f"sqlite:///{root / 'reco.db'}",
        artifact_dir=root / "artifacts",
        api_keys=STATIC_KEYS,  # type: ignore[arg-type]
        embedded_worker=False,
        model_poll_seconds=0,
        catalog_poll_seconds=0,
        popular_poll_seconds=0,
        **changes,  # type: ignore[arg-type]
    )


def test_milvus_lite_service_answers_as_faiss_before_and_after_a_swap(shop_dir: Path) -> None:
    """`reco serve` with RECO_VECTOR_ENGINE=milvus-lite://... against the same shop served on FAISS."""
    settings = shop_settings(shop_dir)
    sessions = make_sessionmaker(make_engine(settings))
    set_active(sessions, "v1")
    milvus_env = env_for(shop_dir, f"milvus-lite://{shop_dir / 'vectors.db'}")
    with (
        reco_servers([milvus_env]) as (milvus_base,),
        TestClient(create_app(settings), headers=auth(READ_KEY)) as faiss_client,
        httpx.Client(base_url=milvus_base, headers=auth(READ_KEY), timeout=10) as milvus_client,
    ):
        faiss_registry = faiss_client.app.state.reco.registry  # type: ignore[attr-defined]
        faiss_registry.sync_catalog()
        assert faiss_registry.engine.name == "faiss" and faiss_registry.version == "v1"
        assert wait_until(lambda: serving_version(milvus_base) == "v1"), "milvus server never served v1"
        ready = httpx.get(milvus_base + "/readyz", timeout=5).json()
        assert ready["serving"]["vector_engine"] == "milvus", ready
        before = answers(faiss_client)
        assert_same(before, answers(milvus_client))

        set_active(sessions, "v2")
        assert faiss_registry.refresh_now() == "v2"
        assert wait_until(lambda: serving_version(milvus_base) == "v2"), "milvus server never swapped to v2"
        after = answers(faiss_client)
        assert after != before, "two models: the swap must show"
        assert_same(after, answers(milvus_client))


def test_swap_builds_the_new_collection_first_and_drops_the_old(shop_dir: Path, tmp_path: Path) -> None:
    settings = shop_settings(shop_dir, vector_engine=f"milvus-lite://{tmp_path / 'swap.db'}")
    sessions = make_sessionmaker(make_engine(settings))
    set_active(sessions, "v1")
    with TestClient(create_app(settings), headers=auth(ADMIN_KEY)) as client:
        registry = client.app.state.reco.registry  # type: ignore[attr-defined]
        engine = registry.engine
        assert isinstance(engine, MilvusEngine)
        engine.retire_grace_s = 0.5
        old = registry.current
        assert old is not None and old.version == "v1" and isinstance(old.index, MilvusItemIndex)
        old_name = old.index.collection_name
        user = USERS[0]
        v1_answer = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()

        set_active(sessions, "v2")
        assert registry.refresh_now() == "v2"
        new = registry.current
        assert isinstance(new.index, MilvusItemIndex)
        new_name = new.index.collection_name
        assert new_name != old_name and new_name.endswith("v2")
        stats = engine.client.get_collection_stats(new_name)
        assert int(stats["row_count"]) == new.index.ntotal == new.n_rows  # complete when it was swapped in
        # The old snapshot still answers inside the grace (a request that read `current` before the swap).
        _, rows = old.search(old.loaded.item_vectors[:1, :], 3, exclude=old.rows([]), category=None)
        assert (rows >= 0).all()
        assert wait_until(lambda: old_name not in engine.client.list_collections(), 10), "old one kept"
        assert engine.collections() == [new_name]
        v2_answer = client.get(f"/v1/users/{user}/recommendations", params={"k": 5}).json()
        assert v2_answer["model_version"] == "v2" and v1_answer["model_version"] == "v1"
    assert engine.collections() == [], "shutdown must drop this process's collections"
