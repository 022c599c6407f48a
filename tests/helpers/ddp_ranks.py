"""What the DDP tests run inside spawned ranks: kept apart from the test modules so that a rank imports only
the training code (a rank unpickles these functions by importing this module)."""

from __future__ import annotations

import time
from typing import Any

from app.ml.config import TrainConfig
from app.ml.data import Split
from app.ml.train import FitResult, fit_split
from app.ml.trainer import Trainer
from app.records import ItemRecord


def fit_target(config: TrainConfig, progress: Any, split: Split, items: dict[str, ItemRecord]) -> FitResult:
    """The EVALUATION.md fit (validate on the validation item, refit on train + valid) on one rank."""
    return fit_split(split, items, config, holdout=1, progress=progress)


def _patch_epoch(fault: str) -> None:
    original = Trainer.epoch

    def epoch(self: Trainer, n: int, deadline: float | None = None) -> float:
        # The group is up and DDP has wrapped the model: rank 0 is in (or enters) a collective.
        if fault == "raise":
            raise RuntimeError("injected fault in rank 1")
        time.sleep(3600)  # hung: rank 0 waits in its next collective until the timeout
        return original(self, n, deadline)

    Trainer.epoch = epoch  # type: ignore[method-assign]  # only in this spawned rank's process


def raise_in_rank1(rank: int) -> None:
    """Rank 1 raises at its first epoch."""
    if rank == 1:
        _patch_epoch("raise")


def hang_in_rank1(rank: int) -> None:
    """Rank 1 hangs at its first epoch."""
    if rank == 1:
        _patch_epoch("hang")
