"""Training: sequences -> windows -> many-to-many softmax CE, early stopping on validation NDCG@10, refit."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from app.ml.config import TrainConfig
from app.ml.data import InteractionLog, Split, leave_one_out_split
from app.ml.features import feature_matrix
from app.ml.model import RecModel, TwoTower
from app.ml.scoring import evaluate_model
from app.ml.trainer import Trainer, resolve_device, type_weights
from app.ml.windows import Sequences, make_windows
from app.records import ItemRecord


@dataclass(frozen=True)
class ProgressInfo:
    """One progress report: stage ('train' or 'refit'), epoch, loss, validation metrics and ETA."""

    stage: str
    epoch: int
    epochs: int
    loss: float
    valid: dict[str, float] | None
    best_ndcg10: float
    elapsed_s: float
    eta_s: float
    sequences_per_s: float


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


def _check(split: Split, min_users: int = 1) -> None:
    if split.n_items < 2:
        raise ValueError(f"fit: the catalog has {split.n_items} item(s); at least 2 are needed to rank")
    if split.n_users < min_users:
        raise ValueError(
            f"fit: no user has enough distinct items ({split.stats()}); each user needs at least 3 to train"
        )


def _new_model(
    split: Split, items: Mapping[str, ItemRecord], config: TrainConfig, popularity: np.ndarray
) -> TwoTower:
    torch.manual_seed(config.seed)
    cfg = config.model
    features = torch.from_numpy(feature_matrix(split.item_ids, items, cfg.feature_buckets, cfg.max_features))
    model = TwoTower(split.n_items, len(split.type_names), features, cfg)
    with torch.no_grad():
        model.items.id_mask.copy_(torch.from_numpy(popularity > 0).float().unsqueeze(1))  # [N, 1]
    return model


def _train_stage(
    stage: str,
    split: Split,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    train_seqs: Sequences,
    valid: tuple[Sequences, np.ndarray] | None,
    epochs: int,
    device: torch.device,
    progress: Callable[[ProgressInfo], None] | None,
    history: list[dict[str, Any]],
) -> tuple[TwoTower, int, dict[str, float], float]:
    """Train one model; with `valid`, keep the best epoch by NDCG@10 and stop after `patience` evaluations."""
    windows = make_windows(train_seqs, config.model.max_len)
    if len(windows) == 0:
        raise ValueError(
            "fit: no training pairs (every user needs at least two interactions before the held-out)"
        )
    popularity = np.bincount(np.concatenate([s for s, _ in train_seqs]), minlength=split.n_items).astype(
        np.float64
    )
    model = _new_model(split, items, config, popularity)
    trainer = Trainer(model, config, windows, type_weights(split.type_names, config), popularity, device)
    per_rank = len(windows) // trainer.world
    # The learning-rate schedule always spans config.epochs: a refit that stops at the best epoch then follows
    # the very trajectory that validation chose, instead of a compressed one.
    trainer.total_steps = max(epochs, config.epochs) * math.ceil(per_rank / config.batch_size)
    best_ndcg, best_epoch, best_metrics, best_state = -1.0, 0, {}, None
    bad = 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss = trainer.epoch(epoch)
        metrics: dict[str, float] | None = None
        if valid is not None and (epoch % config.eval_every == 0 or epoch == epochs):
            stop = torch.zeros(1, device=device)  # on the device: NCCL broadcasts CUDA tensors only
            if trainer.rank == 0:
                metrics = evaluate_model(trainer.served, valid[0], valid[1], device)
                if metrics["NDCG@10"] > best_ndcg:
                    best_ndcg, best_epoch, best_metrics, bad = metrics["NDCG@10"], epoch, metrics, 0
                    best_state = copy.deepcopy(trainer.served.state_dict())
                else:
                    bad += 1
                out_of_time = (
                    config.time_budget_s is not None and time.perf_counter() - started > config.time_budget_s
                )
                stop[0] = float((bad >= config.patience and epoch >= config.min_epochs) or out_of_time)
            if trainer.distributed:
                dist.broadcast(stop, src=0)
            if stop.item():
                history.append({"stage": stage, "epoch": epoch, "loss": loss, "valid": metrics})
                break
        history.append({"stage": stage, "epoch": epoch, "loss": loss, "valid": metrics})
        if progress is not None and trainer.rank == 0:
            elapsed = time.perf_counter() - started
            progress(
                ProgressInfo(
                    stage=stage,
                    epoch=epoch,
                    epochs=epochs,
                    loss=loss,
                    valid=metrics,
                    best_ndcg10=max(best_ndcg, 0.0),
                    elapsed_s=elapsed,
                    eta_s=elapsed / epoch * (epochs - epoch),
                    sequences_per_s=epoch * len(windows) / max(elapsed, 1e-9),
                )
            )
    elapsed = time.perf_counter() - started
    model = trainer.served
    seq_per_s = trainer.sequences * trainer.world / max(elapsed, 1e-9)
    if best_state is not None:
        model.load_state_dict(best_state)
    elif valid is None:
        best_epoch = epochs
    if trainer.distributed:
        # Rank 0 chose the best epoch: every rank leaves with its weights and its epoch count.
        chosen = torch.tensor([best_epoch], dtype=torch.long, device=device)
        dist.broadcast(chosen, src=0)
        best_epoch = int(chosen.item())
        for tensor in model.state_dict().values():
            dist.broadcast(tensor, src=0)
    model.eval()
    return model, best_epoch, best_metrics, seq_per_s


def fit_split(
    split: Split,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    holdout: int = 0,
    progress: Callable[[ProgressInfo], None] | None = None,
) -> FitResult:
    """Fit on a split: validate on the item before the last `holdout` ones, then refit on everything before them.

    `holdout=1` is the EVALUATION.md test setting (train on training, validate on the validation item, refit on
    training + validation); `holdout=0` is serving (validate on each user's latest item, refit on all).
    """
    _check(split)
    device = resolve_device(config)
    threads_before = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    history: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    try:
        t0 = time.perf_counter()
        train_seqs = split.sequences(drop_last=holdout + 1)
        valid_targets = split.items[split.offsets[1:] - 1 - holdout]  # [U]
        members: list[TwoTower] = []
        finals: list[TwoTower] = []
        best_epochs: list[int] = []
        speeds: list[float] = []
        for k in range(config.model.members):
            # Member 0 keeps the configured seed, so a single model does not depend on `members`.
            member_config = replace(config, seed=config.seed + 7919 * k)
            tag = "" if config.model.members == 1 else f"[{k + 1}/{config.model.members}]"
            member, best_epoch, _, seq_per_s = _train_stage(
                f"train{tag}",
                split,
                items,
                member_config,
                train_seqs,
                (train_seqs, valid_targets),
                config.epochs,
                device,
                progress,
                history,
            )
            members.append(member)
            best_epochs.append(best_epoch)
            speeds.append(seq_per_s)
        timings["train_s"] = time.perf_counter() - t0
        valid_metrics = evaluate_model(RecModel.of(members), train_seqs, valid_targets, device)
        if config.refit_on_all:
            t1 = time.perf_counter()
            for k, best_epoch in enumerate(best_epochs):
                tag = "" if config.model.members == 1 else f"[{k + 1}/{config.model.members}]"
                member, _, _, _ = _train_stage(
                    f"refit{tag}",
                    split,
                    items,
                    replace(config, seed=config.seed + 7919 * k),
                    split.sequences(drop_last=holdout),
                    None,
                    best_epoch,
                    device,
                    progress,
                    history,
                )
                finals.append(member)
            timings["refit_s"] = time.perf_counter() - t1
        else:
            finals = members
        model = RecModel.of(finals)
        timings["total_s"] = time.perf_counter() - t0
    finally:
        torch.set_num_threads(threads_before)
    metrics = {
        **{f"valid_{k}": v for k, v in valid_metrics.items()},
        "best_epoch": best_epochs[0] if len(best_epochs) == 1 else best_epochs,
        "sequences_per_s": float(np.mean(speeds)),
    }
    stats = {**split.stats(), "type_names": list(split.type_names)}
    return FitResult(
        model.cpu(), config, list(split.item_ids), list(split.type_names), metrics, stats, timings, history
    )


def fit(
    log: InteractionLog,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    progress: Callable[[ProgressInfo], None] | None = None,
) -> FitResult:
    """Train a serving model on the whole log (validating on each user's latest item first)."""
    if len(log) == 0:
        raise ValueError("fit: the interaction log is empty; send events before training")
    split = leave_one_out_split(
        log, extra_items=items.keys(), type_strength=config.event_weights, min_interactions=3
    )
    return fit_split(split, items, config, holdout=0, progress=progress)


def describe(result: FitResult) -> dict[str, Any]:
    """JSON-able summary of a fit (config, metrics, data statistics, timings)."""
    return {
        "config": result.config.to_dict(),
        "metrics": result.metrics,
        "data": result.data_stats,
        "timings": result.timings,
        "parameters": int(sum(p.numel() for p in result.model.parameters())),
        "lr_schedule": "linear warm-up then constant",
        "softmax": "sampled" if len(result.item_ids) > result.config.full_softmax_max_items else "full",
        "epochs_run": sum(1 for h in result.history if h["stage"].startswith("train")),
        "log2_items": math.log2(max(len(result.item_ids), 1)),
    }
