"""The ItemIndex contract held by the Milvus engine (a real milvus-lite, embedded, on a temp file).

Same world, same checks as tests/unit/test_index_contract.py: exclusions, allowed masks, brute-force recall
(exact for FLAT), k beyond the catalog, an empty catalog, rows added after the build; then the collection
lifecycle (retire after a grace, close, stale collections of dead processes) and bounded failures.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from app.index import IndexConfig, ItemIndex
from app.index.engine import FaissEngine, open_engine
from app.index.milvus import MilvusEngine, MilvusItemIndex, VectorEngineError, parse_spec
from app.settings import load_settings
from tests.unit.test_index_contract import (
    DIM,
    N_ITEMS,
    N_QUERIES,
    K,
    assert_consistent,
    brute_force,
    clustered,
    recall,
)

CONFIGS = {
    "flat": IndexConfig(kind="flat"),
    "ivf": IndexConfig(kind="ivf", nlist=32, nprobe=8),
    "hnsw": IndexConfig(kind="hnsw", M=16, ef_search=64),
}


def wait_until(check, timeout_s: float = 10.0) -> bool:
    """Poll `check` until it is true or `timeout_s` passes (bounded)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return bool(check())


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MilvusEngine]:
    """One milvus-lite for the module (it starts in about a second)."""
    found = MilvusEngine(str(tmp_path_factory.mktemp("milvus") / "contract.db"), retire_grace_s=0.2)
    yield found
    found.close()


@pytest.fixture(scope="module")
def world() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N_ITEMS, N_QUERIES)


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def built(request: pytest.FixtureRequest, engine: MilvusEngine, world) -> MilvusItemIndex:
    return engine.build(world[0], CONFIGS[request.param], label=f"contract-{request.param}")


def test_kind_shape_and_one_collection_each(built: MilvusItemIndex, engine: MilvusEngine) -> None:
    assert built.ntotal == N_ITEMS and built.dim == DIM and len(built) == N_ITEMS
    assert built.kind in CONFIGS
    assert built.collection_name in engine.client.list_collections()
    assert built.collection_name.startswith("reco_") and built.collection_name.endswith(built.kind)


def test_top_k_matches_brute_force_and_faiss(built: MilvusItemIndex, world) -> None:
    items, queries = world
    scores, rows = built.search(queries, K)
    assert scores.shape == rows.shape == (N_QUERIES, K)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    truth = brute_force(items, queries, K)
    assert_consistent(built, items, queries, scores, rows)
    if built.kind == "flat":
        np.testing.assert_array_equal(rows, truth)
        faiss_scores, faiss_rows = ItemIndex.build(items, IndexConfig(kind="flat")).search(queries, K)
        np.testing.assert_array_equal(rows, faiss_rows)
        np.testing.assert_allclose(scores, faiss_scores, rtol=1e-5, atol=1e-4)
    else:
        assert recall(rows, truth) >= 0.9


@pytest.mark.parametrize("filter_exact_max", [0, 4096])
def test_exclusions_never_returned_and_k_filled(built: MilvusItemIndex, world, filter_exact_max: int) -> None:
    items, queries = world
    index = built.with_search_params(filter_exact_max=filter_exact_max)
    rng = np.random.default_rng(1)
    top = brute_force(items, queries[:1], 30)[0]
    exclude = set(top.tolist()) | set(rng.choice(N_ITEMS, 500, replace=False).tolist()) | {-5, N_ITEMS + 7}
    scores, rows = index.search(queries, K, exclude=exclude)
    assert (rows >= 0).all(), "k rows exist, k must come back"
    assert not set(rows.ravel().tolist()) & exclude
    assert_consistent(index, items, queries, scores, rows)
    eligible = np.ones(N_ITEMS, bool)
    eligible[[r for r in exclude if 0 <= r < N_ITEMS]] = False
    truth = brute_force(items, queries, K, eligible)
    assert recall(rows, truth) >= (1.0 if built.kind == "flat" else 0.9)


@pytest.mark.parametrize("share", [0.3, 0.8])
@pytest.mark.parametrize("filter_exact_max", [0, 4096])
def test_allowed_mask_only_and_filled(
    built: MilvusItemIndex, world, filter_exact_max: int, share: float
) -> None:
    """A mask allowing few rows (filter `row in`) or most rows (filter `row not in`)."""
    items, queries = world
    index = built.with_search_params(filter_exact_max=filter_exact_max)
    allowed = np.random.default_rng(2).random(N_ITEMS) < share
    exclude = np.flatnonzero(allowed)[:50]
    scores, rows = index.search(queries, K, allowed=allowed, exclude=exclude)
    assert (rows >= 0).all()
    assert allowed[rows].all() and not np.isin(rows, exclude).any()
    assert_consistent(index, items, queries, scores, rows)
    eligible = allowed.copy()
    eligible[exclude] = False
    assert recall(rows, brute_force(items, queries, K, eligible)) >= (1.0 if built.kind == "flat" else 0.9)


@pytest.mark.parametrize("filter_exact_max", [0, 4096])
@pytest.mark.parametrize("n_allowed", [3, 12, 200])
def test_tiny_allowed_mask_is_filled_exactly(
    built: MilvusItemIndex, world, filter_exact_max: int, n_allowed: int
) -> None:
    items, queries = world
    index = built.with_search_params(filter_exact_max=filter_exact_max)
    allowed = np.zeros(N_ITEMS, bool)
    allowed[np.random.default_rng(n_allowed).choice(N_ITEMS, n_allowed, replace=False)] = True
    scores, rows = index.search(queries, K, allowed=allowed)
    n_filled = min(K, n_allowed)
    assert (rows[:, :n_filled] >= 0).all() and (rows[:, n_filled:] == -1).all()
    assert allowed[rows[:, :n_filled]].all()
    assert_consistent(index, items, queries, scores, rows)
    truth = brute_force(items, queries, K, allowed)
    if n_allowed <= K or built.kind == "flat" or filter_exact_max >= n_allowed:
        np.testing.assert_array_equal(rows[:, :n_filled], truth)
    else:
        assert recall(rows, truth) >= 0.6


def test_allowed_and_exclusions_leave_nothing(built: MilvusItemIndex, world) -> None:
    _, queries = world
    allowed = np.zeros(N_ITEMS, bool)
    allowed[[4, 9]] = True
    scores, rows = built.search(queries[:3], K, allowed=allowed, exclude=[4, 9])
    assert (rows == -1).all() and np.isneginf(scores).all()


def test_vectors_returns_stored_rows(built: MilvusItemIndex, world) -> None:
    items, _ = world
    picked = [0, 17, N_ITEMS - 1, 17]
    np.testing.assert_array_equal(built.vectors(picked), items[picked])
    assert built.vectors([]).shape == (0, DIM)
    with pytest.raises(ValueError, match=str(N_ITEMS)):
        built.vectors([N_ITEMS])


def test_k_larger_than_the_catalog(engine: MilvusEngine, world) -> None:
    items, queries = world
    index = engine.build(items[:7], IndexConfig(kind="flat"), label="tiny")
    scores, rows = index.search(queries[:4], 20, exclude=[2])
    assert (rows[:, :6] >= 0).all() and (rows[:, 6:] == -1).all() and np.isneginf(scores[:, 6:]).all()
    assert not (rows == 2).any()
    np.testing.assert_array_equal(rows[:, :6], brute_force(items[:7], queries[:4], 6, np.arange(7) != 2))
    assert index.search(queries[:2], 0)[1].shape == (2, 0)
    with pytest.raises(ValueError, match="k: -1"):
        index.search(queries[:2], -1)
    with pytest.raises(ValueError, match="queries: dimension 3"):
        index.search(np.ones((1, 3)), 5)


def test_empty_catalog_then_added_rows(engine: MilvusEngine, world) -> None:
    items, queries = world
    index = engine.build(np.empty((0, DIM), np.float32), IndexConfig(), label="empty")
    assert index.ntotal == 0 and index.kind == "flat"
    scores, rows = index.search(queries[:3], K)
    assert (rows == -1).all() and np.isneginf(scores).all()
    assert index.vectors([]).shape == (0, DIM)
    np.testing.assert_array_equal(index.add(items[:5]), np.arange(5))
    _, rows = index.search(queries[:3], K)
    np.testing.assert_array_equal(rows[:, :5], brute_force(items[:5], queries[:3], 5))
    assert (rows[:, 5:] == -1).all()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_add_then_search_finds_new_rows(engine: MilvusEngine, world, name: str) -> None:
    items, queries = world
    index = engine.build(items[:2500], CONFIGS[name], label=f"add-{name}")
    new_rows = index.add(items[2500:])
    np.testing.assert_array_equal(new_rows, np.arange(2500, N_ITEMS))
    assert index.ntotal == N_ITEMS
    _, rows = index.search(queries, K)
    assert recall(rows, brute_force(items, queries, K)) >= (1.0 if name == "flat" else 0.9)
    probe = items[2500:2510] * 10.0  # [10, D] pointing straight at new items
    _, top = index.search(probe, 1)
    assert (top[:, 0] == brute_force(items, probe, 1)[:, 0]).mean() >= 0.9
    np.testing.assert_array_equal(index.vectors(new_rows[:5]), items[2500:2505])
    # A mask taken before the add (a snapshot of the old rows) never lets the new rows through.
    _, rows = index.search(probe, K, allowed=np.ones(2500, bool))
    assert (rows >= 0).all() and (rows < 2500).all()
    engine.retire(index)


def test_concurrent_searches_while_adding(engine: MilvusEngine, world) -> None:
    items, queries = world
    index = engine.build(items[:1000], CONFIGS["flat"], label="concurrent")
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                scores, rows = index.search(queries[:4], K, exclude=[0, 1, 2])
                assert (rows >= 0).all() and rows.max() < index.ntotal
                assert not np.isin(rows, [0, 1, 2]).any()
                np.testing.assert_allclose(
                    scores[:, 0], np.einsum("qd,qd->q", items[rows[:, 0]], queries[:4]), rtol=1e-4
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(2)]
    for t in threads:
        t.start()
    for start in range(1000, N_ITEMS, 500):
        index.add(items[start : start + 500])
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not errors, errors[0]
    assert index.ntotal == N_ITEMS
    _, rows = index.search(queries, K)
    np.testing.assert_array_equal(rows, brute_force(items, queries, K))
    engine.retire(index)


# ---- lifecycle and failures -----------------------------------------------------------------------------------


def test_retire_drops_the_collection_after_the_grace(engine: MilvusEngine, world) -> None:
    items, queries = world
    index = engine.build(items[:100], IndexConfig(kind="flat"), label="retired")
    name = index.collection_name
    engine.retire(index)
    # Within the grace a request holding the old snapshot still gets its answer.
    assert (index.search(queries[:1], 3)[1] >= 0).all()
    assert wait_until(lambda: name not in engine.client.list_collections()), "not dropped after the grace"
    assert name not in engine.collections()
    with pytest.raises(VectorEngineError, match=name):
        index.search(queries[:1], 3)
    engine.retire(index)  # twice: nothing happens


def test_stale_collections_of_dead_processes_are_dropped(tmp_path: Path, world) -> None:
    items, _ = world
    path = str(tmp_path / "stale.db")
    first = MilvusEngine(path)
    mine = first.build(items[:10], IndexConfig(kind="flat"), label="mine")
    # A collection this host's process 99999999 (not running) left behind, and one of another host.
    from pymilvus import DataType, MilvusClient

    schema = MilvusClient.create_schema(auto_id=False)
    schema.add_field("row", DataType.INT64, is_primary=True)
    schema.add_field("vec", DataType.FLOAT_VECTOR, dim=4)
    dead = f"reco_{first._host}_99999999_abcd0123_v0"
    other_host = "reco_otherhost_99999999_abcd0123_v0"
    for name in (dead, other_host):
        first.client.create_collection(name, schema=schema)
    first.close()  # drops what it owns; the client goes
    assert not first.collections()
    second = MilvusEngine(path)
    try:
        names = second.client.list_collections()
        assert dead not in names, "a dead process's collection survived"
        assert other_host in names, "another host's collection must be left alone"
        assert mine.collection_name not in names, "close() did not drop its own collections"
    finally:
        second.close()


def test_unreachable_server_fails_fast_with_a_clear_error(world) -> None:
    items, _ = world
    engine = MilvusEngine("milvus://127.0.0.1:9/", timeout_s=1.0)
    started = time.monotonic()
    with pytest.raises(VectorEngineError, match=r"milvus http://127\.0\.0\.1:9: connect"):
        engine.build(items[:10], IndexConfig(), label="nowhere")
    assert time.monotonic() - started < 10


# ---- configuration ------------------------------------------------------------------------------------------


def test_engine_specs() -> None:
    assert parse_spec("milvus://10.0.0.5:19531") == ("http://10.0.0.5:19531", {})
    assert parse_spec("milvus://u:p%40ss@db.local/reco") == (
        "http://db.local:19530",
        {"token": "u:p@ss", "db_name": "reco"},
    )
    assert parse_spec("milvus-lite:///var/reco/v.db") == ("/var/reco/v.db", {})
    assert parse_spec("./vectors.db") == ("./vectors.db", {})
    with pytest.raises(ValueError, match=r"\.db"):
        parse_spec("milvus-lite:///var/reco/vectors")
    assert isinstance(open_engine("faiss"), FaissEngine)
    assert isinstance(open_engine("milvus-lite:///tmp/x.db"), MilvusEngine)  # connects on first use only
    with pytest.raises(ValueError, match="vector engine 'qdrant://x'"):
        open_engine("qdrant://x")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("qdrant://x:1", "must be faiss, milvus://host:port"),
        ("milvus://", "milvus:// needs a host"),
        ("milvus-lite:///tmp/vectors", "must end with .db"),
    ],
)
def test_invalid_vector_engine_setting_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, value: str, message: str
) -> None:
    monkeypatch.setenv("RECO_VECTOR_ENGINE", value)
    with pytest.raises(SystemExit) as failure:
        load_settings()
    assert "RECO_VECTOR_ENGINE:" in str(failure.value.code) and message in str(failure.value.code)


def test_vector_engine_setting_default_and_milvus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RECO_VECTOR_ENGINE", raising=False)
    assert load_settings().vector_engine == "faiss"
    monkeypatch.setenv("RECO_VECTOR_ENGINE", "milvus://milvus:19530")
    assert load_settings().vector_engine == "milvus://milvus:19530"


def test_milvus_lite_with_several_workers_is_refused_at_start(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from app.cli.service import run_server

    monkeypatch.setenv("RECO_VECTOR_ENGINE", f"milvus-lite://{tmp_path / 'v.db'}")
    monkeypatch.setenv("RECO_DATABASE_URL", f"sqlite:///{tmp_path / 'reco.db'}")
    with pytest.raises(SystemExit) as failure:
        run_server("127.0.0.1", 1, workers=2)
    assert "RECO_VECTOR_ENGINE: milvus-lite opens its file in one process only" in str(failure.value.code)
