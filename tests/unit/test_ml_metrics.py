"""Metrics against hand-computed values; EASE and ItemKNN against plain numpy references."""

import math

import numpy as np
import pytest

from app.ml.baselines import EASE, ItemKNN, MostPop, interaction_matrix
from app.ml.metrics import evaluate_ranking, metrics_from_ranks, ranks_from_scores


def test_ranks_exclude_seen_items_and_break_ties_by_index() -> None:
    scores = np.array(
        [
            [0.9, 0.8, 0.7, 0.1],  # target 2; item 0 excluded -> rank 2
            [0.5, 0.5, 0.5, 0.5],  # all tied, target 2 -> items 0, 1 ahead -> rank 3
            [0.1, 0.2, 0.3, 0.4],  # target 0, nothing excluded -> rank 4
        ]
    )
    ranks = ranks_from_scores(
        scores, np.array([2, 2, 0]), [np.array([0]), np.array([], dtype=int), np.array([])]
    )
    np.testing.assert_array_equal(ranks, [2, 3, 4])


def test_metrics_by_hand() -> None:
    m = metrics_from_ranks(np.array([1, 3, 11, 25]), ks=(10, 20))
    assert m["HR@10"] == pytest.approx(2 / 4)
    assert m["HR@20"] == pytest.approx(3 / 4)
    assert m["NDCG@10"] == pytest.approx((1.0 + 1 / math.log2(4)) / 4)
    assert m["NDCG@20"] == pytest.approx((1.0 + 1 / math.log2(4) + 1 / math.log2(12)) / 4)
    assert m["MRR"] == pytest.approx((1 + 1 / 3 + 1 / 11 + 1 / 25) / 4)
    assert m["users"] == 4


def test_evaluate_ranking_batches_the_same_as_one_pass() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(37, 15))
    targets = rng.integers(0, 15, size=37)
    exclude = [rng.choice(15, size=3, replace=False) for _ in range(37)]
    exclude = [e[e != t] for e, t in zip(exclude, targets, strict=True)]
    a = evaluate_ranking(lambda users: scores[users], targets, exclude, batch_size=5)
    b = metrics_from_ranks(ranks_from_scores(scores, targets, exclude))
    assert a == b


def _random_matrix(seed: int, users: int = 60, items: int = 25) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.random((users, items)) < 0.2).astype(np.float32)


def test_ease_equals_per_item_ridge_regression_on_the_other_items() -> None:
    x = _random_matrix(1)
    lam = 7.0
    model = EASE(x, lam=lam)
    xd = x.astype(np.float64)
    n = x.shape[1]
    for j in range(n):
        others = [k for k in range(n) if k != j]
        a = xd[:, others]
        coef = np.linalg.solve(a.T @ a + lam * np.eye(n - 1), a.T @ xd[:, j])  # ridge on the other columns
        np.testing.assert_allclose(model.b[others, j], coef, rtol=1e-4, atol=1e-5)
        assert model.b[j, j] == 0.0
    np.testing.assert_allclose(model.scores(np.arange(4)), x[:4] @ model.b, rtol=1e-6)


def test_itemknn_cosine_by_hand_and_mostpop_counts() -> None:
    x = interaction_matrix([np.array([0, 1]), np.array([0, 1, 2]), np.array([2])], 3)
    knn = ItemKNN(x, k=10)
    # cos(0,1) = 2 / sqrt(2*2) = 1; cos(0,2) = 1 / sqrt(2*2) = 0.5
    np.testing.assert_allclose(knn.sim, [[0, 1, 0.5], [1, 0, 0.5], [0.5, 0.5, 0]], atol=1e-6)
    np.testing.assert_allclose(knn.scores(np.array([2])), [[0.5, 0.5, 0.0]], atol=1e-6)
    np.testing.assert_array_equal(MostPop(x).scores(np.array([0, 1]))[0], [2, 2, 2])
    top1 = ItemKNN(x, k=1).sim
    assert (top1 > 0).sum(axis=0).max() <= 2  # k=1 keeps the best neighbour per item (ties kept)
