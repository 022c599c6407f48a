"""What a training run hands over: `FitResult` and its JSON summary. No torch import at module level.

Serving and the artifact store use these without importing the training code (app/ml/train.py,
app/ml/trainer.py), which re-exports them for older callers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.ml.config import TrainConfig
    from app.ml.model import RecModel


@dataclass
class FitResult:
    """A trained model (CPU, eval mode) with its id maps, metrics, data statistics and timings."""

    model: RecModel
    config: TrainConfig
    item_ids: list[str]
    type_names: list[str]
    metrics: dict[str, Any]
    data_stats: dict[str, Any]
    timings: dict[str, float]
    history: list[dict[str, Any]] = field(default_factory=list)


def describe(result: FitResult) -> dict[str, Any]:
    """JSON-able summary of a fit (config, metrics, data statistics, timings)."""
    return {
        "config": result.config.to_dict(),
        "metrics": result.metrics,
        "data": result.data_stats,
        "timings": result.timings,
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "lr_schedule": f"linear warm-up then {result.config.lr_schedule}",
        "softmax": "sampled" if len(result.item_ids) > result.config.full_softmax_max_items else "full",
        "epochs_run": sum(1 for h in result.history if h["stage"].startswith("train")),
        "log2_items": math.log2(max(len(result.item_ids), 1)),
    }
