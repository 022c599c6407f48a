"""One contract for every index kind (flat, IVF, HNSW), held against brute-force numpy on clustered vectors."""

from __future__ import annotations

import threading

import faiss
import numpy as np
import pytest

from app.index import IndexConfig, ItemIndex

N_ITEMS, DIM, N_CLUSTERS, N_QUERIES, K = 3000, 17, 30, 40, 10

CONFIGS = {
    "flat": IndexConfig(kind="flat"),
    "ivf": IndexConfig(kind="ivf", nlist=32, nprobe=8),
    "hnsw": IndexConfig(kind="hnsw", M=16, ef_search=64),
}


def clustered(n: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Items around random centres plus a bias column; queries near centres with a constant 1 for the bias."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((N_CLUSTERS, DIM - 1)).astype(np.float32)  # [C, D-1]
    items = centres[rng.integers(0, N_CLUSTERS, n)] + 0.35 * rng.standard_normal((n, DIM - 1))  # [N, D-1]
    bias = 0.3 * rng.standard_normal((n, 1))  # [N, 1]
    queries = centres[rng.integers(0, N_CLUSTERS, n_queries)] + 0.5 * rng.standard_normal(
        (n_queries, DIM - 1)
    )
    ones = np.ones((n_queries, 1))  # [Q, 1]
    return (
        np.hstack([items, bias]).astype(np.float32),  # [N, D]
        np.hstack([queries, ones]).astype(np.float32),  # [Q, D]
    )


def brute_force(
    items: np.ndarray, queries: np.ndarray, k: int, eligible: np.ndarray | None = None
) -> np.ndarray:
    """Exact top-k rows [Q, <=k] by inner product among the eligible rows (bool [N])."""
    sims = queries.astype(np.float64) @ items.T.astype(np.float64)  # [Q, N]
    if eligible is not None:
        sims[:, ~eligible] = -np.inf
    n_ok = items.shape[0] if eligible is None else int(eligible.sum())
    return np.argsort(-sims, axis=1, kind="stable")[:, : min(k, n_ok)]


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of the true top rows that were found."""
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found, truth, strict=True)]))


@pytest.fixture(scope="module")
def world() -> tuple[np.ndarray, np.ndarray]:
    return clustered(N_ITEMS, N_QUERIES)


# "mapped": the index of the first MAPPED_ROWS items saved, opened memory-mapped (as serving opens a model
# version's index) and the rest added, so they live in the in-memory tail beside the read-only mapped rows.
MAPPED_ROWS = 2600


@pytest.fixture(
    scope="module", params=[(kind, layout) for kind in sorted(CONFIGS) for layout in ("built", "mapped")]
)
def built(
    request: pytest.FixtureRequest,
    world: tuple[np.ndarray, np.ndarray],
    tmp_path_factory: pytest.TempPathFactory,
) -> ItemIndex:
    kind, layout = request.param
    if layout == "built":
        return ItemIndex.build(world[0], CONFIGS[kind])
    path = tmp_path_factory.mktemp(f"mapped-{kind}") / "items.faiss"
    ItemIndex.build(world[0][:MAPPED_ROWS], CONFIGS[kind]).save(path)
    index = ItemIndex.load(path, mmap=True)
    assert index.mapped and index.kind == kind
    np.testing.assert_array_equal(index.add(world[0][MAPPED_ROWS:]), np.arange(MAPPED_ROWS, N_ITEMS))
    assert index.tail_rows == N_ITEMS - MAPPED_ROWS
    return index


def assert_consistent(index: ItemIndex, items: np.ndarray, queries: np.ndarray, scores, rows) -> None:
    """Scores are the inner products of the returned rows, descending, padding only at the end."""
    for q, s, r in zip(queries, scores, rows, strict=True):
        filled = r >= 0
        assert not (~filled[:-1] & filled[1:]).any(), "padding before a result"
        np.testing.assert_allclose(s[filled], items[r[filled]] @ q, rtol=1e-4, atol=1e-4)
        assert np.all(np.diff(s[filled]) <= 1e-5)
        assert np.all(np.isneginf(s[~filled]))
        assert len(set(r[filled].tolist())) == int(filled.sum()), "a row returned twice"


def test_kind_and_shape(built: ItemIndex, world) -> None:
    assert built.ntotal == N_ITEMS and built.dim == DIM and len(built) == N_ITEMS
    assert built.kind in CONFIGS


def test_top_k_matches_brute_force(built: ItemIndex, world) -> None:
    items, queries = world
    scores, rows = built.search(queries, K)
    assert scores.shape == rows.shape == (N_QUERIES, K)
    assert scores.dtype == np.float32 and rows.dtype == np.int64
    truth = brute_force(items, queries, K)
    assert_consistent(built, items, queries, scores, rows)
    if built.kind == "flat":
        np.testing.assert_array_equal(rows, truth)
    else:
        assert recall(rows, truth) >= 0.9


@pytest.mark.parametrize("filter_exact_max", [0, 4096])
def test_exclusions_never_returned_and_k_filled(built: ItemIndex, world, filter_exact_max: int) -> None:
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


@pytest.mark.parametrize("filter_exact_max", [0, 4096])
def test_allowed_mask_only_and_filled(built: ItemIndex, world, filter_exact_max: int) -> None:
    items, queries = world
    index = built.with_search_params(filter_exact_max=filter_exact_max)
    allowed = np.random.default_rng(2).random(N_ITEMS) < 0.3
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
    built: ItemIndex, world, filter_exact_max: int, n_allowed: int
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
        np.testing.assert_array_equal(rows[:, :n_filled], truth)  # all eligible rows, or scored exactly
    else:
        assert recall(rows, truth) >= 0.6  # a filtered approximate search: refilled, not exact


def test_allowed_and_exclusions_leave_nothing(built: ItemIndex, world) -> None:
    _, queries = world
    allowed = np.zeros(N_ITEMS, bool)
    allowed[[4, 9]] = True
    scores, rows = built.search(queries[:3], K, allowed=allowed, exclude=[4, 9])
    assert (rows == -1).all() and np.isneginf(scores).all()


def test_add_then_search_finds_new_rows(world) -> None:
    items, queries = world
    for name, config in CONFIGS.items():
        index = ItemIndex.build(items[:2500], config)
        new_rows = index.add(items[2500:])
        np.testing.assert_array_equal(new_rows, np.arange(2500, N_ITEMS))
        assert index.ntotal == N_ITEMS
        _, rows = index.search(queries, K)
        assert recall(rows, brute_force(items, queries, K)) >= (1.0 if name == "flat" else 0.9), name
        # A query pointing straight at a new item finds it first.
        probe = items[2500:2510] * 10.0  # [10, D]
        _, top = index.search(probe, 1)
        truth = brute_force(items, probe, 1)
        assert (top[:, 0] == truth[:, 0]).mean() >= 0.9, name
        np.testing.assert_allclose(index.vectors(new_rows[:5]), items[2500:2505])


def test_vectors_returns_stored_rows(built: ItemIndex, world) -> None:
    items, _ = world
    np.testing.assert_array_equal(built.vectors([0, 17, N_ITEMS - 1]), items[[0, 17, N_ITEMS - 1]])
    assert built.vectors([]).shape == (0, DIM)
    with pytest.raises(ValueError, match=str(N_ITEMS)):
        built.vectors([N_ITEMS])


def test_exhaustive_ivf_is_exact(world) -> None:
    items, queries = world
    index = ItemIndex.build(items, CONFIGS["ivf"])
    assert index.nlist == 32
    _, rows = index.with_search_params(nprobe=32).search(queries, K)
    np.testing.assert_array_equal(rows, brute_force(items, queries, K))


def test_concurrent_searches_while_adding(world) -> None:
    items, queries = world
    index = ItemIndex.build(items[:1000], CONFIGS["hnsw"])
    errors: list[BaseException] = []
    stop = threading.Event()

    def searcher() -> None:
        try:
            while not stop.is_set():
                n_before = index.ntotal
                scores, rows = index.search(queries[:4], K, exclude=[0, 1, 2])
                assert (rows >= 0).all() and rows.max() < index.ntotal and n_before <= index.ntotal
                assert not np.isin(rows, [0, 1, 2]).any()
                np.testing.assert_allclose(
                    scores[:, 0], np.einsum("qd,qd->q", items[rows[:, 0]], queries[:4]), rtol=1e-4
                )
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(1000, N_ITEMS, 250):
        index.add(items[start : start + 250])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert index.ntotal == N_ITEMS


def test_concurrent_searches_while_adding_to_a_mapped_index(world, tmp_path) -> None:
    items, queries = world
    path = tmp_path / "items.faiss"
    ItemIndex.build(items[:1000], CONFIGS["ivf"]).save(path)
    index = ItemIndex.load(path, mmap=True)
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

    threads = [threading.Thread(target=searcher) for _ in range(3)]
    for t in threads:
        t.start()
    for start in range(1000, N_ITEMS, 250):
        index.add(items[start : start + 250])
    stop.set()
    for t in threads:
        t.join()
    assert not errors, errors[0]
    assert index.ntotal == N_ITEMS and index.tail_rows == N_ITEMS - 1000
    _, rows = index.search(queries, K)
    assert recall(rows, brute_force(items, queries, K)) >= 0.9


def test_search_keeps_the_callers_thread_count(world) -> None:
    items, queries = world
    index = ItemIndex.build(items[:500], IndexConfig(kind="flat", search_threads=1))
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(2)
    try:
        index.search(queries, K)
        assert faiss.omp_get_max_threads() == 2
    finally:
        faiss.omp_set_num_threads(before)
