"""Simple strong baselines in numpy, on the same split and code path as the model: MostPop, ItemKNN, EASE."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

EASE_MAX_ITEMS = 20_000


def interaction_matrix(histories: Sequence[np.ndarray], n_items: int) -> np.ndarray:
    """Binary user x item matrix of the histories ([U, N] float32)."""
    x = np.zeros((len(histories), n_items), dtype=np.float32)  # [U, N]
    for u, items in enumerate(histories):
        x[u, items] = 1.0
    return x


class MostPop:
    """Items ranked by their number of training interactions."""

    name = "MostPop"

    def __init__(self, x: np.ndarray) -> None:
        self.popularity = x.sum(axis=0)  # [N]

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Scores [B, N] of the given user rows."""
        return np.broadcast_to(self.popularity, (len(users), self.popularity.shape[0]))


class ItemKNN:
    """Item-based cosine nearest neighbours (k per item) scored by summing over the user's items."""

    name = "ItemKNN"

    def __init__(self, x: np.ndarray, k: int = 100) -> None:
        self.x = x
        norms = np.sqrt(x.sum(axis=0)) + 1e-9  # [N]
        sim = (x.T @ x) / norms[:, None] / norms[None, :]  # [N, N]
        np.fill_diagonal(sim, 0.0)
        if k < sim.shape[0]:
            cut = np.partition(sim, -k, axis=0)[-k][None, :]  # [1, N]: k-th largest per column
            sim = np.where(sim >= cut, sim, 0.0)
        self.sim = sim.astype(np.float32)
        self.k = k

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Scores [B, N] of the given user rows."""
        return self.x[users] @ self.sim  # [B, N]


class EASE:
    """Steck (2019): B = I - P / diag(P) with P = (X^T X + lambda I)^-1, zero diagonal; scores = X B."""

    name = "EASE"

    def __init__(self, x: np.ndarray, lam: float = 100.0) -> None:
        if x.shape[1] > EASE_MAX_ITEMS:
            raise ValueError(f"EASE: {x.shape[1]} items exceed the dense limit of {EASE_MAX_ITEMS}")
        self.x = x
        self.lam = lam
        g = (x.T @ x).astype(np.float64)  # [N, N]
        g[np.diag_indices_from(g)] += lam
        p = np.linalg.inv(g)  # [N, N]
        b = -p / np.diag(p)[None, :]  # [N, N]
        np.fill_diagonal(b, 0.0)
        self.b = b.astype(np.float32)

    def scores(self, users: np.ndarray) -> np.ndarray:
        """Scores [B, N] of the given user rows."""
        return self.x[users] @ self.b  # [B, N]
