"""Full-ranking metrics of EVALUATION.md: HR@K, NDCG@K and MRR from the rank of each held-out item."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

KS = (10, 20)


def ranks_from_scores(scores: np.ndarray, targets: np.ndarray, exclude: Sequence[np.ndarray]) -> np.ndarray:
    """1-based rank of each target among all items after removing `exclude[u]` (ties: lower index first)."""
    scores = np.array(scores, dtype=np.float64, copy=True)  # [B, N]
    rows = np.arange(scores.shape[0])
    for u, seen in enumerate(exclude):
        scores[u, np.asarray(seen, dtype=np.int64)] = -np.inf
    target_scores = scores[rows, targets][:, None]  # [B, 1]
    item_index = np.arange(scores.shape[1])[None, :]  # [1, N]
    ahead = (scores > target_scores) | ((scores == target_scores) & (item_index < targets[:, None]))  # [B, N]
    return 1 + ahead.sum(axis=1)  # [B]


def metrics_from_ranks(ranks: np.ndarray, ks: Sequence[int] = KS) -> dict[str, float]:
    """HR@K, NDCG@K and MRR averaged over users, plus the user count."""
    ranks = np.asarray(ranks, dtype=np.float64)
    out: dict[str, float] = {}
    if ranks.size == 0:
        return {**{f"{m}@{k}": 0.0 for k in ks for m in ("HR", "NDCG")}, "MRR": 0.0, "users": 0}
    for k in ks:
        hit = ranks <= k
        out[f"HR@{k}"] = float(hit.mean())
        out[f"NDCG@{k}"] = float(np.where(hit, 1.0 / np.log2(ranks + 1.0), 0.0).mean())
    out["MRR"] = float((1.0 / ranks).mean())
    out["users"] = int(ranks.size)
    return out


def evaluate_ranking(
    score_batch: Callable[[np.ndarray], np.ndarray],
    targets: np.ndarray,
    exclude: Sequence[np.ndarray],
    batch_size: int = 512,
) -> dict[str, float]:
    """Metrics of a scorer (user indices [B] -> scores [B, N]) over every user's held-out target."""
    ranks = []
    for start in range(0, len(targets), batch_size):
        users = np.arange(start, min(start + batch_size, len(targets)))
        scores = score_batch(users)  # [B, N]
        ranks.append(ranks_from_scores(scores, targets[users], [exclude[int(u)] for u in users]))
    return metrics_from_ranks(np.concatenate(ranks) if ranks else np.empty(0))
