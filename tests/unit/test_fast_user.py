"""The numpy user tower of serving against the torch one: random weights, several shapes, the LoadedModel path."""

from __future__ import annotations

import math
import threading

import numpy as np
import pytest
import torch

from app.artifacts import LoadedModel
from app.artifacts.store import item_table
from app.ml.config import ModelConfig
from app.ml.fast_user import NumpyUserEncoder, erf
from app.ml.model import RecModel
from tests.serving_support import trained

N_TYPES = 3
MAX_LEN = 20


def random_model(d: int, heads: int, layers: int, members: int, seed: int = 0) -> RecModel:
    """A model with every weight non-trivial: LayerNorm scales and shifts away from 1 and 0, larger embeddings."""
    torch.manual_seed(seed)
    cfg = ModelConfig(d=d, heads=heads, layers=layers, members=members, max_len=MAX_LEN, feature_buckets=64)
    model = RecModel(40, N_TYPES, torch.randint(0, 64, (40, 4)), cfg)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(0.0, 0.2)
        for tower in model.towers:
            tower.user.positions.weight.mul_(10)
            tower.user.type_table.weight.mul_(10)
    return model.eval()


def history(model: RecModel, length: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random served item vectors [L, K*d+1] and event types [L], the middle one of the unknown type."""
    rng = np.random.default_rng(seed)
    vectors = rng.normal(0.0, 0.5, (length, model.dim)).astype(np.float32)
    types = rng.integers(0, N_TYPES + 1, length).astype(np.int64)
    types[length // 2] = N_TYPES  # the last row of type_table: unknown type
    return vectors, types


def torch_query(model: RecModel, vectors: np.ndarray, types: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        states = model.encode(torch.from_numpy(vectors)[None], torch.from_numpy(types)[None], None)
        return RecModel.query(states[:, -1])[0].numpy()


@pytest.mark.parametrize(("d", "heads", "layers", "members"), [(64, 2, 2, 1), (32, 4, 3, 2)])
@pytest.mark.parametrize("length", [1, 7, MAX_LEN])
def test_numpy_encoder_matches_torch(d: int, heads: int, layers: int, members: int, length: int) -> None:
    model = random_model(d, heads, layers, members)
    encoder = NumpyUserEncoder.from_model(model)
    for seed in range(3):
        vectors, types = history(model, length, seed)
        expected = torch_query(model, vectors, types)
        got = encoder.encode_last(vectors, types)
        assert got.dtype == np.float32 and got.shape == (members * d + 1,) and got[-1] == 1.0
        assert np.abs(got - expected).max() < 1e-4


def test_large_attention_scores_take_the_max_subtracting_softmax() -> None:
    model = random_model(32, 2, 2, 1, seed=1)
    with torch.no_grad():
        for block in model.towers[0].user.blocks:
            block.qkv.weight.mul_(8)  # scores of several hundred: exp would overflow without the shift
    encoder = NumpyUserEncoder.from_model(model)
    assert all(block.shift for block in encoder.blocks)
    vectors, types = history(model, MAX_LEN, 0)
    expected = torch_query(model, vectors, types)
    assert np.isfinite(expected).all()
    assert np.abs(encoder.encode_last(vectors, types) - expected).max() < 1e-4
    assert not any(block.shift for block in NumpyUserEncoder.from_model(random_model(32, 2, 2, 1)).blocks)


def test_erf_is_accurate_far_below_1e6() -> None:
    x = np.concatenate([np.linspace(-7, 7, 200_001), [-1e30, -50.0, 50.0, 1e30]]).astype(np.float32)
    exact = np.array([math.erf(float(v)) for v in x])
    assert np.abs(erf(x) - exact).max() < 5e-7
    assert erf(x.reshape(-1, 5)).shape == (len(x) // 5, 5)


def test_the_encoder_refuses_empty_or_too_long_histories_and_is_read_only() -> None:
    model = random_model(32, 4, 1, 1)
    encoder = NumpyUserEncoder.from_model(model)
    for length in (0, MAX_LEN + 1):
        vectors, types = np.zeros((length, model.dim), np.float32), np.zeros(length, np.int64)
        with pytest.raises(ValueError, match="events"):
            encoder.encode_last(vectors, types)
    with pytest.raises(ValueError, match="read-only"):
        encoder.blocks[0].qkv_w[0, 0, 0] = 1.0


def test_threads_share_one_encoder() -> None:
    model = random_model(32, 4, 2, 2)
    encoder = NumpyUserEncoder.from_model(model)
    inputs = [history(model, 3 + i % (MAX_LEN - 3), i) for i in range(8)]
    expected = [encoder.encode_last(v, t) for v, t in inputs]
    failures: list[int] = []

    def work() -> None:
        for _ in range(50):
            for i, (v, t) in enumerate(inputs):
                if not np.array_equal(encoder.encode_last(v, t), expected[i]):
                    failures.append(i)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not failures


def _torch_query_vector(model: LoadedModel, recent: list[tuple[str, str]]) -> np.ndarray:
    """What `query_vector` computed before the numpy path: the torch tower on the same rows."""
    rows, types = model._rows(recent)
    with torch.inference_mode():
        return model._encode(torch.tensor([rows]), torch.tensor([types]), None)[0].numpy()


def test_loaded_model_query_vector_equals_the_torch_path() -> None:
    result = trained(0)
    manifest = {"version": "v1", "type_names": result.type_names}
    loaded = LoadedModel(manifest, result.model, list(result.item_ids), item_table(result.model))
    ids = loaded.item_ids
    histories = [
        [(ids[3], "view")],
        [(ids[i], "view") for i in range(5)] + [("no-such-item", "view"), (ids[9], "no-such-type")],
        [
            (ids[i % len(ids)], result.type_names[i % len(result.type_names)])
            for i in range(3 * loaded.max_len)
        ],
    ]
    for recent in histories:
        query = loaded.query_vector(recent)
        assert query is not None and query.dtype == np.float32 and query.shape == (loaded.dim,)
        np.testing.assert_allclose(query, _torch_query_vector(loaded, recent), rtol=1e-5, atol=1e-5)
    assert loaded.query_vector([("no-such-item", "view")]) is None


def test_loaded_two_member_model_query_vector_equals_the_torch_path() -> None:
    model = random_model(16, 2, 2, 2)
    ids = [f"i{row}" for row in range(40)]
    loaded = LoadedModel(
        {"version": "v", "type_names": ["view", "click", "buy"]}, model, ids, item_table(model)
    )
    recent = [(ids[(7 * i) % 40], ["view", "click", "buy", "other"][i % 4]) for i in range(MAX_LEN + 5)]
    for end in (1, 6, len(recent)):
        query = loaded.query_vector(recent[:end])
        assert query is not None
        np.testing.assert_allclose(query, _torch_query_vector(loaded, recent[:end]), rtol=1e-5, atol=1e-5)
