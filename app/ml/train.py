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
from app.ml.data import InteractionLog, Negatives, Split, UserNegatives, leave_one_out_split, user_negatives
from app.ml.features import feature_matrix
from app.ml.model import RecModel, TwoTower
from app.ml.result import FitResult, describe  # noqa: F401  (describe: re-exported for older callers)
from app.ml.scoring import evaluate_model
from app.ml.trainer import Trainer, resolve_device, type_weights
from app.ml.windows import Sequences, Windows, make_windows
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


class WarmStartError(ValueError):
    """The previous model cannot seed this run (another architecture): train from scratch instead."""


@dataclass(frozen=True, eq=False)
class WarmStart:
    """A trained model to continue from, and the newest event time it saw (windows after it are "new")."""

    model: RecModel
    item_ids: list[str]
    type_names: list[str]
    since: float | None = None  # epoch seconds; None: every window counts as new


def _check(split: Split, min_users: int = 1) -> None:
    if split.n_items < 2:
        raise ValueError(f"fit: the catalog has {split.n_items} item(s); at least 2 are needed to rank")
    if split.n_users < min_users:
        raise ValueError(
            f"fit: no user has enough distinct items ({split.stats()}); each user needs at least 3 to train"
        )


ARCHITECTURE_FIELDS = ("d", "max_len", "layers", "heads", "feature_buckets", "max_features", "user_buckets")


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


def warm_member(model: TwoTower, previous: TwoTower, warm: WarmStart, split: Split) -> dict[str, int]:
    """Copy a previous member's weights into a freshly built one of this catalog.

    Items still present keep their ID rows; items new since then start with a zero ID row, so their vector
    is their features' (what serving shows for a cold item) until training moves it; items gone are dropped.
    Event types are matched by name. Raises WarmStartError when the architectures differ.
    """
    old, new = previous.cfg, model.cfg
    diff = [f for f in ARCHITECTURE_FIELDS if getattr(old, f) != getattr(new, f)]
    if diff:
        raise WarmStartError(
            "warm start: the previous model differs in "
            + ", ".join(f"{f} ({getattr(old, f)} -> {getattr(new, f)})" for f in diff)
        )
    state = previous.state_dict()
    target = model.state_dict()
    for name, tensor in state.items():
        if name.startswith("items.") or name.startswith("user.type_table") or name not in target:
            continue
        if target[name].shape != tensor.shape:
            raise WarmStartError(
                f"warm start: {name} has shape {tuple(tensor.shape)}, now {tuple(target[name].shape)}"
            )
        target[name] = tensor.clone()
    target["items.feature_table.weight"] = state["items.feature_table.weight"].clone()
    old_rows = {item: i for i, item in enumerate(warm.item_ids)}
    pairs = [(j, old_rows[item]) for j, item in enumerate(split.item_ids) if item in old_rows]
    ids = torch.zeros_like(target["items.id_table.weight"])
    if pairs:
        new_idx = torch.tensor([p[0] for p in pairs])
        old_idx = torch.tensor([p[1] for p in pairs])
        ids[new_idx] = state["items.id_table.weight"][old_idx]
    target["items.id_table.weight"] = ids
    types = target["user.type_table.weight"].clone()
    old_types = {t: i for i, t in enumerate(warm.type_names)}
    old_table = state["user.type_table.weight"]
    for j, name in enumerate(split.type_names):
        if name in old_types:
            types[j] = old_table[old_types[name]]
    types[-1] = old_table[-1]  # the unknown-type row
    target["user.type_table.weight"] = types
    model.load_state_dict(target)
    return {
        "items_kept": len(pairs),
        "items_new": split.n_items - len(pairs),
        "items_dropped": len(warm.item_ids) - len(pairs),
    }


@dataclass
class Budget:
    """The whole fit's time budget (all members and stages): a deadline and why the run stopped."""

    seconds: float | None
    started: float = field(default_factory=time.perf_counter)
    hit: bool = False

    @property
    def deadline(self) -> float | None:
        return None if self.seconds is None else self.started + self.seconds

    def expired(self) -> bool:
        if self.seconds is not None and time.perf_counter() - self.started > self.seconds:
            self.hit = True
        return self.hit

    def left(self) -> float:
        return math.inf if self.seconds is None else self.seconds - (time.perf_counter() - self.started)


def _incremental_windows(
    sequences: Sequences,
    times: list[np.ndarray],
    since: float,
    max_len: int,
    ratio: float,
    seed: int,
    users: np.ndarray | None = None,
) -> tuple[Windows, dict[str, int]]:
    """Windows of the users with events newer than `since` (`times`: each user's whole sequence, the held-out
    items included, so a user whose one new event is held out for validation still counts): each such user's
    latest window, plus `ratio` times as many windows replayed at random from the other users (so the model
    does not forget older tastes)."""
    fresh = [i for i, t in enumerate(times) if len(sequences[i][0]) > 1 and t[-1] > since]
    stale = [i for i, t in enumerate(times) if len(sequences[i][0]) > 1 and t[-1] <= since]
    rng = np.random.default_rng(seed)
    replay = min(len(stale), round(ratio * len(fresh)))
    chosen = (
        fresh + [stale[i] for i in rng.choice(len(stale), size=replay, replace=False)] if replay else fresh
    )
    tails = [(sequences[i][0][-(max_len + 1) :], sequences[i][1][-(max_len + 1) :]) for i in chosen]
    owners = None if users is None else users[np.asarray(chosen, dtype=np.int64)]
    windows = make_windows(tails, max_len, owners)
    if windows.seqs is not None:  # index the whole split's sequences, not the chosen ones
        windows = replace(windows, seqs=np.asarray(chosen, dtype=np.int64)[windows.seqs])
    return windows, {
        "users_with_new_events": len(fresh),
        "replayed_users": replay,
    }


def _agreed(trainer: Trainer, flag: bool) -> bool:
    """Rank 0's `flag` on every DDP rank (one process: `flag`): time-budget decisions must not diverge, or a
    rank that stopped would leave the others waiting in a collective."""
    if not trainer.distributed:
        return flag
    value = torch.tensor([float(flag)], device=trainer.device)
    dist.broadcast(value, src=0)
    return bool(value.item())


def _valid_sample(n_users: int, limit: int, seed: int, n_items: int = 0) -> np.ndarray:
    """A fixed sample of users to validate on (all when there are at most `limit`).

    Full-ranking validation costs users x items: past 2e9 scores an epoch the sample shrinks (1M items:
    2,000 users), never below 1,000 users."""
    limit = min(limit, max(1000, int(2e9 // max(n_items, 1))))
    if n_users <= limit:
        return np.arange(n_users)
    return np.sort(np.random.default_rng([seed, 17]).choice(n_users, size=limit, replace=False))


def _report(
    progress: Callable[[ProgressInfo], None],
    stage: str,
    epoch: int,
    epochs: int,
    loss: float,
    valid: dict[str, float] | None,
    best_ndcg: float,
    elapsed: float,
    eta: float,
    windows: int,
) -> None:
    progress(
        ProgressInfo(
            stage=stage,
            epoch=epoch,
            epochs=epochs,
            loss=loss,
            valid=valid,
            best_ndcg10=max(best_ndcg, 0.0),
            elapsed_s=elapsed,
            eta_s=eta,
            sequences_per_s=epoch * windows / max(elapsed, 1e-9),
        )
    )


def _train_member(
    tag: str,
    split: Split,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    holdout: int,
    device: torch.device,
    budget: Budget,
    progress: Callable[[ProgressInfo], None] | None,
    history: list[dict[str, Any]],
    previous: TwoTower | None,
    warm: WarmStart | None,
    negatives: UserNegatives | None = None,
) -> tuple[TwoTower, dict[str, Any]]:
    """Train one member: validation stage (early stopping on NDCG@10), then the refit on train + valid."""
    train_seqs = split.sequences(drop_last=holdout + 1)
    all_seqs = split.sequences(drop_last=holdout)
    sample = _valid_sample(split.n_users, config.valid_max_users, config.seed, split.n_items)
    valid_seqs = [train_seqs[int(u)] for u in sample]
    valid_targets = split.items[split.offsets[1:] - 1 - holdout][sample]  # [V]
    user_rows = split.user_rows(config.model.user_buckets)  # [U] or None
    valid_users = None if user_rows is None else user_rows[sample]
    incremental = (
        previous is not None and warm is not None and warm.since is not None and split.times is not None
    )
    info: dict[str, Any] = {"mode": "incremental" if incremental else "full"}
    if incremental:
        assert warm is not None and warm.since is not None and split.times is not None
        times = [split.times[split.offsets[u] : split.offsets[u + 1] - holdout] for u in range(split.n_users)]
        windows, picked = _incremental_windows(
            train_seqs,
            times,
            warm.since,
            config.model.max_len,
            config.replay_ratio,
            config.seed,
            user_rows,
        )
        refit_windows, _ = _incremental_windows(
            all_seqs, times, warm.since, config.model.max_len, config.replay_ratio, config.seed, user_rows
        )
        if picked["users_with_new_events"] == 0:
            raise WarmStartError("warm start: no user has events newer than the previous model's")
        info.update(picked)
        epochs = config.incremental_epochs
    else:
        windows = make_windows(train_seqs, config.model.max_len, user_rows)
        refit_windows = None
        epochs = config.epochs
    if len(windows) == 0:
        raise ValueError(
            "fit: no training pairs (every user needs at least two interactions before the held-out)"
        )
    popularity = np.bincount(np.concatenate([s for s, _ in all_seqs]), minlength=split.n_items).astype(
        np.float64
    )
    model = _new_model(split, items, config, popularity)
    if previous is not None and warm is not None:
        info["warm_start"] = warm_member(model, previous, warm, split)
    trainer = Trainer(
        model, config, windows, type_weights(split.type_names, config), popularity, device, negatives
    )
    steps_per_epoch = trainer.steps_per_epoch()
    if incremental:
        trainer.restart_schedule(
            windows,
            epochs * steps_per_epoch,
            config.lr * config.incremental_lr_scale,
            min(config.warmup_steps, steps_per_epoch),
        )
    else:
        # The schedule spans config.epochs: early stopping then keeps the trajectory validation chose.
        trainer.total_steps = config.epochs * steps_per_epoch
    best_ndcg, best_epoch, best_metrics, best_state = -1.0, 0, {}, None
    bad = 0
    stopped_by = "epochs"
    started = time.perf_counter()
    stage = f"train{tag}"
    for epoch in range(1, epochs + 1):
        loss = trainer.epoch(epoch, budget.deadline)
        metrics: dict[str, float] | None = None
        stop = torch.zeros(1, device=device)  # on the device: NCCL broadcasts CUDA tensors only
        out_of_time = budget.expired()
        if trainer.rank == 0:
            if epoch % config.eval_every == 0 or epoch == epochs or out_of_time:
                metrics = evaluate_model(trainer.served, valid_seqs, valid_targets, device, valid_users)
                if metrics["NDCG@10"] > best_ndcg:
                    best_ndcg, best_epoch, best_metrics, bad = metrics["NDCG@10"], epoch, metrics, 0
                    best_state = copy.deepcopy(trainer.served.state_dict())
                else:
                    bad += 1
            if out_of_time:
                stopped_by = "time_budget"
            elif bad >= config.patience and epoch >= config.min_epochs:
                stopped_by = "early_stopping"
            stop[0] = float(stopped_by != "epochs")
        if trainer.distributed:
            dist.broadcast(stop, src=0)
        history.append({"stage": stage, "epoch": epoch, "loss": loss, "valid": metrics})
        if progress is not None and trainer.rank == 0:
            elapsed = time.perf_counter() - started
            planned = (epochs - epoch) * elapsed / epoch + (
                config.refit_epochs * elapsed / epoch if config.refit_on_all else 0.0
            )
            eta = 0.0 if stop.item() else min(planned, max(budget.left(), 0.0))
            _report(progress, stage, epoch, epochs, loss, metrics, best_ndcg, elapsed, eta, len(windows))
        if stop.item():
            break
    train_s = time.perf_counter() - started
    seq_per_s = trainer.sequences * trainer.world / max(train_s, 1e-9)
    positions = int((windows.targets >= 0).sum()) * len([h for h in history if h["stage"] == stage])
    if trainer.distributed:
        # Rank 0 chose the best epoch: every rank continues from its weights, with its epoch count.
        chosen = torch.tensor([best_epoch], dtype=torch.long, device=device)
        dist.broadcast(chosen, src=0)
        best_epoch = int(chosen.item())
        if best_state is None:
            best_state = trainer.served.state_dict()
        for tensor in best_state.values():
            dist.broadcast(tensor, src=0)
    if best_state is not None:
        trainer.load_weights(best_state)
    if config.model.members > 1:  # the ensemble is validated on its members as they were before the refit
        info["valid_model"] = copy.deepcopy(trainer.served).eval()
    info.update(
        best_epoch=best_epoch,
        stopped_by=stopped_by,
        valid=best_metrics,
        train_s=train_s,
        sequences_per_s=seq_per_s,
        positions_per_s=positions / max(train_s, 1e-9),
    )
    refit_s = 0.0
    if config.refit_on_all and holdout >= 0:
        t1 = time.perf_counter()
        refit_stage = f"refit{tag}"
        if _agreed(trainer, budget.expired()):
            info["refit"] = "skipped: time budget spent"
        elif config.refit_epochs > 0 or incremental:
            # Continue from the early-stopped weights on train + valid, the learning rate decaying from where
            # validation stopped to zero over refit_epochs (no second run from scratch).
            refit_epochs = max(config.refit_epochs, 1)
            windows = (
                refit_windows
                if refit_windows is not None
                else make_windows(all_seqs, config.model.max_len, user_rows)
            )
            steps = refit_epochs * trainer.steps_per_epoch(windows)
            trainer.restart_schedule(windows, steps, max(trainer._lr(), config.lr * 0.05), 0)
            for epoch in range(1, refit_epochs + 1):
                loss = trainer.epoch(1000 + epoch, budget.deadline)
                history.append({"stage": refit_stage, "epoch": epoch, "loss": loss, "valid": None})
                if progress is not None and trainer.rank == 0:
                    elapsed = time.perf_counter() - t1
                    eta = elapsed / epoch * (refit_epochs - epoch)
                    _report(
                        progress,
                        refit_stage,
                        epoch,
                        refit_epochs,
                        loss,
                        None,
                        best_ndcg,
                        elapsed,
                        eta,
                        len(windows),
                    )
                if _agreed(trainer, budget.expired()):
                    info["refit"] = f"stopped by the time budget after {epoch} epoch(s)"
                    break
            info.setdefault("refit", f"continued {refit_epochs} epoch(s) on train + valid")
        else:
            model, _, _ = _retrain_from_scratch(
                refit_stage, split, items, config, all_seqs, best_epoch, device, budget, history, negatives
            )
            info["refit"] = f"retrained from scratch for {best_epoch} epoch(s) on train + valid"
            model.eval()
            info["refit_s"] = time.perf_counter() - t1
            return model, info
        refit_s = time.perf_counter() - t1
    info["refit_s"] = refit_s
    model = trainer.served
    model.eval()
    return model, info


def _retrain_from_scratch(
    stage: str,
    split: Split,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    seqs: Sequences,
    epochs: int,
    device: torch.device,
    budget: Budget,
    history: list[dict[str, Any]],
    negatives: UserNegatives | None = None,
) -> tuple[TwoTower, int, float]:
    """The refit of refit_epochs=0: a new model trained `epochs` epochs on train + valid, no validation."""
    windows = make_windows(seqs, config.model.max_len, split.user_rows(config.model.user_buckets))
    popularity = np.bincount(np.concatenate([s for s, _ in seqs]), minlength=split.n_items).astype(np.float64)
    model = _new_model(split, items, config, popularity)
    trainer = Trainer(
        model, config, windows, type_weights(split.type_names, config), popularity, device, negatives
    )
    trainer.total_steps = max(epochs, config.epochs) * trainer.steps_per_epoch()
    started = time.perf_counter()
    for epoch in range(1, max(epochs, 1) + 1):
        loss = trainer.epoch(epoch, budget.deadline)
        history.append({"stage": stage, "epoch": epoch, "loss": loss, "valid": None})
        if _agreed(trainer, budget.expired()):
            break
    return trainer.served, epochs, time.perf_counter() - started


def fit_split(
    split: Split,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    holdout: int = 0,
    progress: Callable[[ProgressInfo], None] | None = None,
    warm: WarmStart | None = None,
    negatives: UserNegatives | None = None,
) -> FitResult:
    """Fit on a split: validate on the item before the last `holdout` ones, then refit on everything before them.

    `holdout=1` is the EVALUATION.md test setting (train on training, validate on the validation item, refit on
    training + validation); `holdout=0` is serving (validate on each user's latest item, refit on all).
    With `warm`, each member starts from the previous model's weights and trains on the windows holding events
    newer than `warm.since` plus a replay sample (an incremental retrain); WarmStartError when incompatible.
    `negatives` (per split user, see `user_negatives`) add the explicit-negative term to the loss when
    config.negative_weight > 0; their report lands in the data statistics under "negatives".
    """
    _check(split)
    device = resolve_device(config)
    threads_before = torch.get_num_threads()
    if config.threads > 0:
        torch.set_num_threads(config.threads)
    history: list[dict[str, Any]] = []
    timings: dict[str, float] = {}
    budget = Budget(config.time_budget_s)
    previous_members = warm.model.towers if warm is not None else None
    if previous_members is not None and len(previous_members) != config.model.members:
        raise WarmStartError(
            f"warm start: the previous model has {len(previous_members)} member(s), this run {config.model.members}"
        )
    try:
        finals: list[TwoTower] = []
        infos: list[dict[str, Any]] = []
        for k in range(config.model.members):
            # Member 0 keeps the configured seed, so a single model does not depend on `members`.
            member_config = replace(config, seed=config.seed + 7919 * k)
            tag = "" if config.model.members == 1 else f"[{k + 1}/{config.model.members}]"
            member, info = _train_member(
                tag,
                split,
                items,
                member_config,
                holdout,
                device,
                budget,
                progress,
                history,
                previous_members[k] if previous_members is not None else None,
                warm,
                negatives,
            )
            finals.append(member)
            infos.append(info)
        timings["train_s"] = float(sum(i["train_s"] for i in infos))
        timings["refit_s"] = float(sum(i["refit_s"] for i in infos))
        model = RecModel.of(finals)
        train_seqs = split.sequences(drop_last=holdout + 1)
        sample = _valid_sample(split.n_users, config.valid_max_users, config.seed, split.n_items)
        valid_targets = split.items[split.offsets[1:] - 1 - holdout][sample]
        if len(finals) > 1:
            rows = split.user_rows(config.model.user_buckets)
            valid_metrics = evaluate_model(
                RecModel.of([i.pop("valid_model") for i in infos]),
                [train_seqs[int(u)] for u in sample],
                valid_targets,
                device,
                None if rows is None else rows[sample],
            )
        else:
            valid_metrics = infos[0]["valid"]
        timings["total_s"] = time.perf_counter() - budget.started
    finally:
        torch.set_num_threads(threads_before)
    best_epochs = [i["best_epoch"] for i in infos]
    metrics = {
        **{f"valid_{k}": v for k, v in valid_metrics.items()},
        "best_epoch": best_epochs[0] if len(best_epochs) == 1 else best_epochs,
        "sequences_per_s": float(np.mean([i["sequences_per_s"] for i in infos])),
        "positions_per_s": float(np.mean([i["positions_per_s"] for i in infos])),
        "mode": infos[0]["mode"],
        "stopped_by": "time_budget" if budget.hit else infos[0]["stopped_by"],
        "time_budget_s": config.time_budget_s,
        "refit": infos[0].get("refit", "none"),
        "valid_users": len(sample),
    }
    for key in ("warm_start", "users_with_new_events", "replayed_users"):
        if key in infos[0]:
            metrics[key] = infos[0][key]
    stats: dict[str, Any] = {**split.stats(), "type_names": list(split.type_names)}
    if negatives is not None:
        used = config.negative_weight > 0
        stats["negatives"] = {
            **negatives.report,
            "used": negatives.report["used"] if used else {k: 0 for k in negatives.report["used"]},
            "weight": config.negative_weight,
        }
    return FitResult(
        model.cpu(), config, list(split.item_ids), list(split.type_names), metrics, stats, timings, history
    )


def fit(
    log: InteractionLog,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    progress: Callable[[ProgressInfo], None] | None = None,
    warm: WarmStart | None = None,
    negatives: Negatives | None = None,
) -> FitResult:
    """Train a serving model on the whole log (validating on each user's latest item first).

    `negatives`: explicit negative feedback (not_interested, unclicked impressions) on items of the log; pairs
    of users or items the split does not train on are ignored (the data statistics count them).
    """
    if len(log) == 0:
        raise ValueError("fit: the interaction log is empty; send events before training")
    split = leave_one_out_split(
        log, extra_items=items.keys(), type_strength=config.event_weights, min_interactions=3
    )
    per_user = None if negatives is None else user_negatives(split, negatives, log.items)
    return fit_split(split, items, config, holdout=0, progress=progress, warm=warm, negatives=per_user)
