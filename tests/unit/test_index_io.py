"""ItemIndex save/load, corrupt files, configuration and edge cases."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from app.index import IndexConfig, IndexFileError, ItemIndex

DIM = 9
CONFIGS = {
    "flat": IndexConfig(kind="flat"),
    "ivf": IndexConfig(kind="ivf", nlist=16, nprobe=4),
    "hnsw": IndexConfig(kind="hnsw", M=8, ef_search=32),
}


def vectors(n: int, seed: int = 0) -> np.ndarray:
    """Random float32 [n, DIM] rows."""
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_save_load_round_trip_gives_identical_results(tmp_path: Path, name: str) -> None:
    index = ItemIndex.build(vectors(800), CONFIGS[name])
    index.add(vectors(50, seed=1))
    queries = vectors(20, seed=2)
    allowed = np.random.default_rng(3).random(850) < 0.5
    path = tmp_path / "v1" / "items.faiss"
    index.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["items.faiss", "items.faiss.json"], (
        "temp files left"
    )
    loaded = ItemIndex.load(path)
    assert (loaded.kind, loaded.ntotal, loaded.dim, loaded.config) == (name, 850, DIM, CONFIGS[name])
    for kwargs in ({}, {"exclude": [1, 2, 3]}, {"allowed": allowed}):
        for a, b in zip(
            index.search(queries, 10, **kwargs), loaded.search(queries, 10, **kwargs), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(loaded.add(vectors(5, seed=4)), np.arange(850, 855))


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_memory_mapped_load_gives_identical_results_and_grows_beside_the_file(
    tmp_path: Path, name: str
) -> None:
    index = ItemIndex.build(vectors(800), CONFIGS[name])
    path = tmp_path / "items.faiss"
    index.save(path)
    read = ItemIndex.load(path)
    mapped = ItemIndex.load(path, mmap=True)
    assert mapped.mapped and not read.mapped and not index.mapped
    queries = vectors(20, seed=2)
    allowed = np.random.default_rng(3).random(800) < 0.5
    for kwargs in ({}, {"exclude": [1, 2, 3]}, {"allowed": allowed}, {"exclude": np.arange(600)}):
        for a, b in zip(
            read.search(queries, 10, **kwargs), mapped.search(queries, 10, **kwargs), strict=True
        ):
            np.testing.assert_array_equal(a, b)
    # FAISS aborts the process when a mapped index grows: the rows go beside it, and the file is untouched.
    before = path.read_bytes()
    extra = vectors(30, seed=4) * 10.0  # the new rows win every query
    np.testing.assert_array_equal(mapped.add(extra), np.arange(800, 830))
    assert (mapped.ntotal, mapped.tail_rows) == (830, 30) and path.read_bytes() == before
    np.testing.assert_allclose(mapped.vectors([0, 805]), np.vstack([vectors(800)[0], extra[5]]))
    assert (mapped.search(queries, 5)[1] >= 800).all()
    # Saving a mapped index with rows beside it writes one index holding them all.
    copy = tmp_path / "copy.faiss"
    mapped.save(copy)
    again = ItemIndex.load(copy)
    assert again.ntotal == 830
    if name == "flat":
        np.testing.assert_array_equal(again.search(queries, 10)[1], mapped.search(queries, 10)[1])


def test_memory_mapped_load_refuses_a_corrupt_or_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "items.faiss"
    ItemIndex.build(vectors(300), CONFIGS["ivf"]).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=r"items\.faiss.*corrupt"):
        ItemIndex.load(path, mmap=True)
    path.write_bytes(bytes(data[: len(data) // 2]))  # a half-written file
    with pytest.raises(IndexFileError, match=r"items\.faiss.*corrupt or partially written"):
        ItemIndex.load(path, mmap=True)


def test_build_differences_name_the_structural_settings() -> None:
    wanted = IndexConfig(exact_max_items=100, nprobe=4)
    assert wanted.build_differences(IndexConfig(exact_max_items=100, nprobe=32), 5000) == []
    assert wanted.build_differences(IndexConfig(exact_max_items=10_000), 5000) == ["kind flat, wanted ivf"]
    assert wanted.build_differences(IndexConfig(exact_max_items=100, nlist=7), 5000) == ["nlist 7, wanted 71"]
    assert IndexConfig(kind="hnsw").build_differences(IndexConfig(kind="hnsw", M=8), 10) == ["M 8, wanted 32"]


def test_load_with_other_search_settings(tmp_path: Path) -> None:
    path = tmp_path / "items.faiss"
    ItemIndex.build(vectors(500), CONFIGS["ivf"]).save(path)
    loaded = ItemIndex.load(path, IndexConfig(kind="ivf", nprobe=16))
    assert loaded.config.nprobe == 16 and loaded.nlist == 16


def test_save_overwrites_atomically(tmp_path: Path) -> None:
    path = tmp_path / "items.faiss"
    ItemIndex.build(vectors(100), CONFIGS["flat"]).save(path)
    ItemIndex.build(vectors(300), CONFIGS["flat"]).save(path)
    assert ItemIndex.load(path).ntotal == 300
    assert len(list(tmp_path.iterdir())) == 2


def test_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nowhere.faiss"
    with pytest.raises(FileNotFoundError, match=r"nowhere\.faiss does not exist"):
        ItemIndex.load(path)


def test_corrupt_file_is_refused_with_its_name(tmp_path: Path) -> None:
    path = tmp_path / "items.faiss"
    ItemIndex.build(vectors(200), CONFIGS["hnsw"]).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IndexFileError, match=r"items\.faiss.*corrupt"):
        ItemIndex.load(path)
    path.write_bytes(bytes(data[:100]))  # truncated
    with pytest.raises(IndexFileError, match=r"items\.faiss"):
        ItemIndex.load(path)


def test_unreadable_file_with_matching_sidecar_is_refused(tmp_path: Path) -> None:
    """Even when the checksum agrees, a file FAISS cannot parse raises IndexFileError naming it."""
    path = tmp_path / "items.faiss"
    ItemIndex.build(vectors(50), CONFIGS["flat"]).save(path)
    garbage = b"not an index" * 10
    path.write_bytes(garbage)
    sidecar = path.with_name("items.faiss.json")
    meta = json.loads(sidecar.read_text())
    meta["size"] = len(garbage)
    meta["sha256"] = hashlib.sha256(garbage).hexdigest()
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match=r"items\.faiss: FAISS cannot read it"):
        ItemIndex.load(path)


def test_missing_or_broken_sidecar_is_named(tmp_path: Path) -> None:
    path = tmp_path / "items.faiss"
    ItemIndex.build(vectors(50), CONFIGS["flat"]).save(path)
    sidecar = path.with_name("items.faiss.json")
    sidecar.write_text("{not json")
    with pytest.raises(IndexFileError, match=r"items\.faiss\.json"):
        ItemIndex.load(path)
    sidecar.unlink()
    with pytest.raises(IndexFileError, match=r"items\.faiss\.json does not exist"):
        ItemIndex.load(path)


def test_sidecar_kind_mismatch_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "items.faiss"
    ItemIndex.build(vectors(300), CONFIGS["ivf"]).save(path)
    sidecar = path.with_name("items.faiss.json")
    meta = json.loads(sidecar.read_text())
    meta["kind"] = "hnsw"
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(IndexFileError, match="IndexIVFFlat"):
        ItemIndex.load(path)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_k_larger_than_n_pads(name: str) -> None:
    items = vectors(40)
    index = ItemIndex.build(items, CONFIGS[name] if name != "ivf" else IndexConfig(kind="ivf", nlist=4))
    scores, rows = index.search(vectors(3, seed=5), 50, exclude=[0])
    assert rows.shape == (3, 50)
    assert (rows[:, :39] >= 0).all() and (rows[:, 39:] == -1).all() and np.isneginf(scores[:, 39:]).all()
    assert all(set(r[:39].tolist()) == set(range(1, 40)) for r in rows)


def test_k_zero_and_no_queries() -> None:
    index = ItemIndex.build(vectors(30), CONFIGS["flat"])
    assert index.search(vectors(4), 0)[1].shape == (4, 0)
    assert index.search(np.empty((0, DIM), np.float32), 5)[1].shape == (0, 5)
    with pytest.raises(ValueError, match="k: -1"):
        index.search(vectors(1), -1)


def test_empty_index() -> None:
    index = ItemIndex.build(np.empty((0, DIM), np.float32))
    assert (index.kind, index.ntotal, index.dim) == ("flat", 0, DIM)
    scores, rows = index.search(vectors(2), 5)
    assert (rows == -1).all() and np.isneginf(scores).all()
    np.testing.assert_array_equal(index.add(vectors(3)), [0, 1, 2])
    assert (index.search(vectors(2), 5)[1][:, :3] >= 0).all()
    assert ItemIndex.build(np.empty((0, DIM), np.float32), CONFIGS["hnsw"]).search(vectors(1), 3)[
        1
    ].tolist() == [[-1, -1, -1]]
    with pytest.raises(ValueError, match="IVF index needs at least one vector"):
        ItemIndex.build(np.empty((0, DIM), np.float32), CONFIGS["ivf"])


def test_dimension_mismatch_is_a_clear_value_error() -> None:
    index = ItemIndex.build(vectors(30), CONFIGS["flat"])
    with pytest.raises(ValueError, match=f"queries: dimension 4 does not match the index dimension {DIM}"):
        index.search(np.ones((1, 4), np.float32), 3)
    with pytest.raises(ValueError, match=f"vectors: dimension 5 does not match the index dimension {DIM}"):
        index.add(np.ones((2, 5), np.float32))


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda ix: ix.search(np.ones(DIM, np.float32), 3), r"queries: expected a 2-D array"),
        (lambda ix: ix.search(np.full((1, DIM), np.nan), 3), r"queries\[0\]: contains NaN"),
        (lambda ix: ix.search(np.ones((1, DIM)), 3, exclude=np.ones(30, bool)), "boolean array"),
        (
            lambda ix: ix.search(np.ones((1, DIM)), 3, allowed=np.ones(31, bool)),
            "31 entries but the index holds 30",
        ),
        (lambda ix: ix.search(np.ones((1, DIM)), 3, allowed=np.ones(30, np.int8)), "boolean mask"),
        (lambda ix: ix.add(np.ones((2, DIM, 1))), r"vectors: expected a 2-D array"),
    ],
)
def test_bad_inputs_are_named(call, message: str) -> None:
    index = ItemIndex.build(vectors(30), CONFIGS["flat"])
    with pytest.raises(ValueError, match=message):
        call(index)


def test_short_allowed_mask_leaves_newer_rows_out() -> None:
    index = ItemIndex.build(vectors(30), CONFIGS["flat"])
    mask = np.ones(30, bool)
    index.add(vectors(10, seed=9) * 100.0)  # new rows would win every query
    _, rows = index.search(vectors(3, seed=7), 5, allowed=mask)
    assert (rows < 30).all() and (rows >= 0).all()


def test_float64_and_integer_inputs_are_accepted() -> None:
    items = vectors(60).astype(np.float64)
    index = ItemIndex.build(items)
    _, rows = index.search(items[:3], 1)
    assert rows[:, 0].tolist() == np.argmax(items[:3] @ items.T, axis=1).tolist()
    assert index.search(np.ones((1, DIM), np.int64), 2)[1].shape == (1, 2)


def test_auto_picks_flat_then_the_approximate_kind() -> None:
    config = IndexConfig(exact_max_items=100, nlist=8)
    assert ItemIndex.build(vectors(100), config).kind == "flat"
    assert ItemIndex.build(vectors(101), config).kind == config.resolve_kind(101) != "flat"
    assert IndexConfig().resolve_kind(200_000) == "flat"


def test_ivf_nlist_defaults_to_sqrt_n_and_never_exceeds_n() -> None:
    assert IndexConfig().ivf_nlist(1_000_000) == 1000
    assert IndexConfig(nlist=64).ivf_nlist(10) == 10
    assert ItemIndex.build(vectors(400), IndexConfig(kind="ivf")).nlist == 20


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "lsh"}, "kind: 'lsh'"),
        ({"nprobe": 0}, "nprobe: 0"),
        ({"nlist": 0}, "nlist: 0"),
        ({"exact_max_items": -1}, "exact_max_items: -1"),
    ],
)
def test_config_rejects_bad_values(kwargs, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IndexConfig(**kwargs)


def test_with_search_params_rejects_build_settings() -> None:
    index = ItemIndex.build(vectors(30), CONFIGS["flat"])
    with pytest.raises(ValueError, match="nlist"):
        index.with_search_params(nlist=4)
