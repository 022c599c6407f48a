"""Scoring with a trained model: query vectors of sequences and full-ranking metrics."""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from app.ml.metrics import evaluate_ranking
from app.ml.model import RecModel, TwoTower
from app.ml.windows import Sequences, last_windows


@torch.inference_mode()
def user_queries(
    model: TwoTower | RecModel,
    sequences: Sequences,
    device: torch.device,
    batch: int = 256,
    users: np.ndarray | None = None,
) -> Tensor:
    """Query vectors (u, 1) of each sequence's latest interactions ([U, d+1], on `device`)."""
    model.eval()
    items, types = last_windows(sequences, model.cfg.max_len)
    table = model.item_vectors(None)  # [N, D+1]
    lengths = (items >= 0).sum(axis=1)  # [U]
    # Shortest first, and each batch cut to its longest history: windows are left-padded, so the all-padding
    # columns change nothing but the cost (most users' histories are far shorter than max_len).
    order = np.argsort(lengths, kind="stable")
    out = torch.empty(len(items), model.dim, device=device)
    for start in range(0, len(items), batch):
        rows = order[start : start + batch]
        width = max(int(lengths[rows].max()), 1)
        it = torch.from_numpy(items[rows, -width:]).to(device)
        ty = torch.from_numpy(types[rows, -width:]).to(device)
        valid = it >= 0  # [B, W]
        type_ids = torch.where(ty >= 0, ty, torch.full_like(ty, model.n_types))
        owners = None if users is None else torch.from_numpy(np.asarray(users)[rows]).to(device)
        states = model.encode(table[it.clamp(min=0)], type_ids, valid, owners)  # [B, W, d]
        out[torch.from_numpy(rows).to(device)] = model.query(states[:, -1].float())  # [B, D+1]
    return out


def evaluate_model(
    model: TwoTower | RecModel,
    sequences: Sequences,
    targets: np.ndarray,
    device: torch.device,
    users: np.ndarray | None = None,
) -> dict[str, float]:
    """Full-ranking metrics of the model: rank each target after removing the items of its sequence."""
    queries = user_queries(model, sequences, device, users=users)  # [U, d+1]
    with torch.inference_mode():
        table = model.item_vectors(None).float()  # [N, D+1]

    def score(users: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return (queries[torch.from_numpy(users).to(device)] @ table.T).cpu().numpy()  # [B, N]

    # [B, N] scores a batch: keep a batch's float64 copy near 256 MB whatever the catalog's size.
    batch = max(16, min(512, (1 << 25) // max(int(table.shape[0]), 1)))
    return evaluate_ranking(score, targets, [items for items, _ in sequences], batch_size=batch)
