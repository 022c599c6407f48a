"""Model versions on disk: round trip, atomic layout, refusal of corrupt or missing files, serving queries."""

import json
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from app.artifacts import ArtifactError, list_versions, load_version, save_version
from app.ml.config import ModelConfig, TrainConfig
from app.ml.scoring import user_queries
from app.ml.synthetic import category_world, chain_world
from app.ml.train import FitResult, fit
from app.records import ItemRecord

CFG = TrainConfig(
    model=ModelConfig(
        d=16, max_len=10, layers=1, heads=2, dropout=0.1, attn_dropout=0.1, feature_buckets=256
    ),
    epochs=25,
    batch_size=32,
    lr=3e-3,
    warmup_steps=5,
    patience=4,
    device="cpu",
    threads=1,
)


@pytest.fixture(scope="module")
def chain() -> FitResult:
    log, items = chain_world(n_items=30, n_users=90, length=10, seed=5)
    return fit(log, items, CFG)


def test_round_trip_gives_identical_scores(chain: FitResult, tmp_path: Path) -> None:
    path = save_version(chain, tmp_path)
    loaded = load_version(path)
    assert loaded.version == path.name and loaded.manifest["version"] == path.name
    assert loaded.item_ids == chain.item_ids
    assert loaded.item_vectors.shape == (30, 17) and loaded.item_vectors.dtype == np.float32
    assert loaded.manifest["metrics"]["best_epoch"] == chain.metrics["best_epoch"]
    assert loaded.manifest["data"]["users"] == 90
    with torch.inference_mode():
        table = chain.model.item_vectors(None).numpy()
    np.testing.assert_array_equal(loaded.item_vectors, table)
    history = [(f"i{k}", "view") for k in range(3, 9)]
    split_rows = [chain.item_ids.index(i) for i, _ in history]
    expected = user_queries(
        chain.model, [(np.array(split_rows), np.zeros(len(split_rows), dtype=np.int64))], torch.device("cpu")
    )[0].numpy()
    query = loaded.query_vector(history)
    assert query is not None and query.shape == (17,) and query[-1] == 1.0
    np.testing.assert_allclose(query, expected, rtol=1e-5, atol=1e-5)
    top = np.argsort(-(loaded.item_vectors @ query))[:3]
    assert loaded.item_ids[top[0]] == "i9"  # the chain's next item


def test_query_vectors_batch_matches_single_queries_and_handles_empty(
    chain: FitResult, tmp_path: Path
) -> None:
    loaded = load_version(save_version(chain, tmp_path))
    histories = [
        [("i1", "view"), ("i2", "click")],
        [],
        [("nope", "view")],
        [(f"i{k}", "view") for k in range(12)],
    ]
    batch = loaded.query_vectors(histories)
    assert batch.shape == (4, 17)
    np.testing.assert_allclose(batch[0], loaded.query_vector(histories[0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(batch[3], loaded.query_vector(histories[3]), rtol=1e-5, atol=1e-5)
    assert loaded.query_vector([]) is None and loaded.query_vector([("nope", "view")]) is None
    np.testing.assert_array_equal(batch[1], np.eye(17, dtype=np.float32)[16])  # (0, 1): rank by item bias


def test_explain_names_the_history_item_that_drives_the_score(chain: FitResult, tmp_path: Path) -> None:
    loaded = load_version(save_version(chain, tmp_path))
    history = [("i20", "view"), ("i3", "view"), ("i11", "view"), ("i4", "view")]
    rows = [loaded.row_of["i5"]]
    reasons = loaded.explain(history, rows, top=1)
    assert reasons == [["i4"]]
    assert len(loaded.explain(history, rows, top=2)[0]) == 2
    assert loaded.explain([], rows) == [[]]


def test_embed_items_matches_features_only_rows(tmp_path: Path) -> None:
    log, items, _ = category_world(n_categories=3, items_per_category=10, n_users=60, cold_per_category=2)
    result = fit(log, items, replace(CFG, epochs=5))
    loaded = load_version(save_version(result, tmp_path))
    cold_id = "cat1-item9"  # no events: its row is features-only
    cold = loaded.embed_items([items[cold_id]])
    np.testing.assert_allclose(cold[0], loaded.item_vectors[loaded.row_of[cold_id]], rtol=1e-5, atol=1e-6)
    new = loaded.embed_items([ItemRecord("brand-new", categories=("cat1",)), ItemRecord("bare")])
    assert new.shape == (2, loaded.item_vectors.shape[1])
    np.testing.assert_array_equal(new[1], 0.0)  # no features, no id: the zero vector


def test_versions_are_monotonic_and_no_temp_dirs_remain(chain: FitResult, tmp_path: Path) -> None:
    first = save_version(chain, tmp_path)
    second = save_version(chain, tmp_path)
    assert first.name < second.name
    assert list_versions(tmp_path) == [first.name, second.name]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    with pytest.raises(ArtifactError, match="already exists"):
        save_version(chain, tmp_path, version=first.name)
    named = save_version(chain, tmp_path, version="99990101-000000")
    assert named.name == "99990101-000000"


@pytest.mark.parametrize("name", ["model.pt", "item_vectors.npy", "item_ids.json", "manifest.json"])
def test_missing_file_is_refused_naming_it(chain: FitResult, tmp_path: Path, name: str) -> None:
    path = save_version(chain, tmp_path)
    (path / name).unlink()
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        load_version(path)


@pytest.mark.parametrize("name", ["model.pt", "item_vectors.npy", "item_ids.json", "manifest.json"])
def test_corrupt_file_is_refused_naming_it(chain: FitResult, tmp_path: Path, name: str) -> None:
    path = save_version(chain, tmp_path)
    data = bytearray((path / name).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (path / name).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=name.replace(".", r"\.")):
        load_version(path)


def test_manifest_is_json_with_config_and_checksums(chain: FitResult, tmp_path: Path) -> None:
    path = save_version(chain, tmp_path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["config"]["model"]["d"] == 16
    assert set(manifest["files"]) == {"model.pt", "item_vectors.npy", "item_ids.json"}
    assert manifest["created_at"].endswith("+00:00")
    with pytest.raises(ArtifactError, match="no such model version"):
        load_version(tmp_path / "missing")


def test_query_latency_is_small_for_serving(tmp_path: Path) -> None:
    log, items = chain_world(n_items=500, n_users=40, length=60, seed=0)
    model_cfg = ModelConfig(d=64, max_len=50, layers=2, heads=2, feature_buckets=256)
    loaded = load_version(save_version(fit(log, items, replace(CFG, model=model_cfg, epochs=1)), tmp_path))
    history = [(f"i{k}", "view") for k in range(50)]
    loaded.query_vector(history)
    times = []
    for _ in range(21):
        start = time.perf_counter()
        loaded.query_vector(history)
        times.append(time.perf_counter() - start)
    assert float(np.median(times)) < 0.05  # generous bound on a shared CPU; the benchmark reports ~1 ms


def test_two_member_model_round_trips_as_one_inner_product(tmp_path: Path) -> None:
    log, items = chain_world(n_items=30, n_users=90, length=10, seed=6)
    cfg = replace(CFG, model=replace(CFG.model, members=2), epochs=8, refit_on_all=False)
    result = fit(log, items, cfg)
    loaded = load_version(save_version(result, tmp_path))
    assert loaded.item_vectors.shape == (30, 2 * 16 + 1)
    history = [(f"i{k}", "view") for k in range(4, 9)]
    query = loaded.query_vector(history)
    assert query is not None and query.shape == (33,)
    # The served score is the sum of the two members' scores.
    towers = result.model.towers
    rows = torch.tensor([[loaded.row_of[i] for i, _ in history]])
    types = torch.zeros_like(rows)
    with torch.inference_mode():
        total = np.zeros(30, dtype=np.float32)
        for tower in towers:
            table = tower.item_vectors(None)  # [N, d+1]
            u = tower.query(tower.encode(table[rows], types, None)[:, -1])  # [1, d+1]
            total += (u @ table.T)[0].numpy()
    np.testing.assert_allclose(loaded.item_vectors @ query, total, rtol=1e-4, atol=1e-4)
