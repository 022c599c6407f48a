"""Training: sequences -> windows -> many-to-many softmax CE, early stopping on validation NDCG@10, refit."""

from __future__ import annotations

import copy
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from app.ml.config import TrainConfig
from app.ml.data import InteractionLog, Split, leave_one_out_split
from app.ml.features import feature_matrix
from app.ml.metrics import evaluate_ranking
from app.ml.model import RecModel, TwoTower
from app.records import ItemRecord

Sequences = Sequence[tuple[np.ndarray, np.ndarray]]


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


@dataclass(frozen=True, eq=False)
class Windows:
    """Left-padded training windows: inputs and next-item targets (-1 = padding)."""

    items: np.ndarray  # [W, L] int64
    types: np.ndarray  # [W, L] int64
    targets: np.ndarray  # [W, L] int64
    target_types: np.ndarray  # [W, L] int64

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @cached_property
    def lengths(self) -> np.ndarray:
        return (self.items >= 0).sum(axis=1)  # [W]


def make_windows(sequences: Sequences, max_len: int) -> Windows:
    """Cut every sequence into windows of `max_len` inputs, each position predicting the next item."""
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for items, types in sequences:
        end = len(items) - 1
        while end > 0:
            start = max(0, end - max_len)
            rows.append(
                (items[start:end], types[start:end], items[start + 1 : end + 1], types[start + 1 : end + 1])
            )
            end = start
    n = len(rows)
    out = [np.full((n, max_len), -1, dtype=np.int64) for _ in range(4)]
    for w, row in enumerate(rows):
        length = len(row[0])
        for array, values in zip(out, row, strict=True):
            array[w, max_len - length :] = values
    return Windows(*out)


def last_windows(sequences: Sequences, max_len: int) -> tuple[np.ndarray, np.ndarray]:
    """The latest `max_len` interactions of each sequence, left-padded with -1 ([U, L] items and types)."""
    items = np.full((len(sequences), max_len), -1, dtype=np.int64)
    types = np.full((len(sequences), max_len), -1, dtype=np.int64)
    for u, (seq, seq_types) in enumerate(sequences):
        tail = seq[-max_len:]
        if len(tail):
            items[u, max_len - len(tail) :] = tail
            types[u, max_len - len(tail) :] = seq_types[-max_len:]
    return items, types


def resolve_device(config: TrainConfig) -> torch.device:
    """CUDA when asked for or ('auto') available, else the CPU."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("TrainConfig.device: 'cuda' was asked for but torch sees no CUDA device")
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def forward_batch(
    model: TwoTower, items: Tensor, types: Tensor, candidates: Tensor | None
) -> tuple[Tensor, Tensor]:
    """States [B, L, d] of padded windows and the (v, b) vectors [C, d+1] of the candidates (None = all)."""
    valid = items >= 0  # [B, L]
    if candidates is None:
        table = model.items(None)  # [N, d+1]
        inputs = table[items.clamp(min=0)]  # [B, L, d+1]
        cand_vecs = table
    else:
        rows, inverse = torch.unique(
            torch.cat([items.clamp(min=0).flatten(), candidates]), return_inverse=True
        )
        table = model.items(rows)  # [R, d+1]
        inputs = table[inverse[: items.numel()].view_as(items)]  # [B, L, d+1]
        cand_vecs = table[inverse[items.numel() :]]  # [C, d+1]
    type_ids = torch.where(types >= 0, types, torch.full_like(types, model.n_types))  # [B, L]
    return model.encode(inputs, type_ids, valid), cand_vecs


class _Forward(torch.nn.Module):
    """Wraps forward_batch as a module so DistributedDataParallel can sync its gradients."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(self, items: Tensor, types: Tensor, candidates: Tensor | None) -> tuple[Tensor, Tensor]:
        return forward_batch(self.model, items, types, candidates)


@torch.inference_mode()
def user_queries(
    model: TwoTower | RecModel, sequences: Sequences, device: torch.device, batch: int = 256
) -> Tensor:
    """Query vectors (u, 1) of each sequence's latest interactions ([U, d+1], on `device`)."""
    model.eval()
    items, types = last_windows(sequences, model.cfg.max_len)
    table = model.item_vectors(None)  # [N, D+1]
    out = []
    for start in range(0, len(items), batch):
        it = torch.from_numpy(items[start : start + batch]).to(device)
        ty = torch.from_numpy(types[start : start + batch]).to(device)
        valid = it >= 0  # [B, L]
        type_ids = torch.where(ty >= 0, ty, torch.full_like(ty, model.n_types))
        states = model.encode(table[it.clamp(min=0)], type_ids, valid)  # [B, L, d]
        out.append(model.query(states[:, -1].float()))  # [B, D+1]
    return torch.cat(out) if out else torch.empty(0, model.dim, device=device)


def evaluate_model(
    model: TwoTower | RecModel, sequences: Sequences, targets: np.ndarray, device: torch.device
) -> dict[str, float]:
    """Full-ranking metrics of the model: rank each target after removing the items of its sequence."""
    queries = user_queries(model, sequences, device)  # [U, d+1]
    with torch.inference_mode():
        table = model.item_vectors(None).float()  # [N, D+1]

    def score(users: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            return (queries[torch.from_numpy(users).to(device)] @ table.T).cpu().numpy()  # [B, N]

    return evaluate_ranking(score, targets, [items for items, _ in sequences])


def _type_weights(type_names: Sequence[str], config: TrainConfig) -> np.ndarray:
    default = 1.0
    return np.array([config.event_weights.get(t, default) for t in type_names] + [default], dtype=np.float32)


class Trainer:
    """Runs epochs over windows on one device (or one DDP rank) for one model."""

    def __init__(
        self,
        model: TwoTower,
        config: TrainConfig,
        windows: Windows,
        type_weights: np.ndarray,
        popularity: np.ndarray,
        device: torch.device,
    ) -> None:
        self.model = model.to(device)
        self.config = config
        self.windows = windows
        self.device = device
        self.type_weights = torch.from_numpy(type_weights).to(device)  # [T+1]
        self.n_items = int(popularity.shape[0])
        self.sampled = self.n_items > config.full_softmax_max_items
        self.log_pop = torch.from_numpy(popularity / max(popularity.sum(), 1.0)).float().to(device)  # [N]
        self.distributed = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        wrapped = _Forward(self.model)
        self.forward: torch.nn.Module = DistributedDataParallel(wrapped) if self.distributed else wrapped
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        self.average: TwoTower | None = copy.deepcopy(self.model).eval() if config.ema_decay > 0 else None
        if self.average is not None:
            self.average.requires_grad_(False)
        targets = torch.from_numpy(windows.target_types[windows.targets >= 0])  # [P]
        weight_sum = float(self.type_weights.cpu()[torch.where(targets >= 0, targets, -1)].sum())
        self.weight_per_window = weight_sum / max(len(windows), 1)
        self.step = 0
        self.total_steps = 0  # set by the caller for schedules that need the run's length
        self.sequences = 0
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)

    def _loss(self, items: Tensor, types: Tensor, targets: Tensor, target_types: Tensor) -> Tensor:
        mask = targets >= 0  # [B, L]
        pos_targets = targets[mask]  # [P]
        weights = self.type_weights[torch.where(target_types[mask] >= 0, target_types[mask], -1)]  # [P]
        candidates = None
        log_q: Tensor | float = 0.0
        if self.sampled:
            uniform = torch.randint(self.n_items, (self.config.sampled_negatives,), generator=self.generator)
            candidates = torch.unique(torch.cat([pos_targets.cpu(), uniform])).to(self.device)  # [C]
            # logQ correction (Yi et al. 2019): expected count of each candidate under the sampling.
            expected = (
                pos_targets.numel() * self.log_pop[candidates] + self.config.sampled_negatives / self.n_items
            )
            log_q = torch.log(expected)  # [C]
            pos_targets = torch.searchsorted(candidates, pos_targets)  # [P]
        states, cand_vecs = self.forward(items, types, candidates)  # [B, L, d], [C, d+1]
        query = TwoTower.query(states[mask])  # [P, d+1]
        logits = (query @ cand_vecs.T).float()  # [P, C]
        if isinstance(log_q, Tensor):
            logits = logits - log_q
        if self.config.mask_seen:
            logits = self._mask_seen(logits, items, mask, candidates, pos_targets)
        losses = F.cross_entropy(logits, pos_targets, reduction="none")  # [P]
        # Divide by the expected weight of a batch, not this batch's own: bucketed batches of short windows
        # would otherwise weigh each of their positions more than long ones do.
        return (losses * weights).sum() / (self.weight_per_window * items.shape[0])

    def _mask_seen(
        self, logits: Tensor, items: Tensor, mask: Tensor, candidates: Tensor | None, targets: Tensor
    ) -> Tensor:
        """Hide the items already in each position's prefix: they can never be the next (de-duplicated) item,
        exactly as evaluation and serving remove them."""
        b, length = items.shape
        n_items = self.n_items
        # first[b, n]: the window position where item n appears (length when absent).
        first = torch.full((b, n_items + 1), length, dtype=torch.long, device=items.device)  # [B, N+1]
        slots = torch.where(items >= 0, items, torch.full_like(items, n_items))  # [B, L]
        position = torch.arange(length, device=items.device).expand(b, length)  # [B, L]
        first.scatter_reduce_(1, slots, position, reduce="amin")
        first = first[:, :n_items]  # [B, N]
        if candidates is not None:
            first = first[:, candidates]  # [B, C]
        rows, cols = mask.nonzero(as_tuple=True)  # [P], [P]
        seen = first[rows] <= cols.unsqueeze(1)  # [P, C]
        seen[torch.arange(seen.shape[0], device=seen.device), targets] = False
        return logits.masked_fill(seen, float("-inf"))

    def _update_average(self) -> None:
        if self.average is None:
            return
        # Polyak/EMA weights: less noisy than the last step on small data; warm start over the first steps.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            for avg, param in zip(self.average.parameters(), self.model.parameters(), strict=True):
                avg.lerp_(param.detach(), 1.0 - decay)

    @property
    def served(self) -> TwoTower:
        """The model to evaluate and keep: the weight average when enabled, else the trained weights."""
        return self.average if self.average is not None else self.model

    def _lr(self) -> float:
        warm = min(1.0, (self.step + 1) / max(self.config.warmup_steps, 1))
        if self.config.lr_schedule == "cosine" and self.total_steps > self.config.warmup_steps:
            progress = (self.step - self.config.warmup_steps) / (self.total_steps - self.config.warmup_steps)
            return self.config.lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        return self.config.lr * warm

    def _batches(self, order: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Batches of similar-length windows (bucketed within shuffled chunks), in random order."""
        size = self.config.batch_size
        if not self.config.bucket_by_length:
            return [order[i : i + size] for i in range(0, len(order), size)]
        lengths = self.windows.lengths[order]
        batches = []
        chunk = size * 32
        for start in range(0, len(order), chunk):
            part = order[start : start + chunk]
            part = part[np.argsort(-lengths[start : start + chunk], kind="stable")]
            batches += [part[i : i + size] for i in range(0, len(part), size)]
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch(self, epoch: int) -> float:
        """One pass over this rank's share of the windows; returns the mean loss."""
        self.model.train()
        rng = np.random.default_rng([self.config.seed, epoch])
        order = rng.permutation(len(self.windows))
        if self.distributed:
            per_rank = len(order) // self.world  # equal shares: every rank runs the same number of steps
            order = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        autocast = self.device.type == "cuda"
        total, count = 0.0, 0
        arrays = (self.windows.items, self.windows.types, self.windows.targets, self.windows.target_types)
        max_len = self.windows.items.shape[1]
        for idx in self._batches(order, rng):
            # Windows are left-padded: dropping the all-padding columns changes nothing but the cost.
            width = int(self.windows.lengths[idx].max())
            batch = [
                torch.from_numpy(a[idx, max_len - width :]).to(self.device, non_blocking=True) for a in arrays
            ]
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr()
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                loss = self._loss(*batch)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._update_average()
            self.step += 1
            self.sequences += len(idx)
            total += float(loss.detach())
            count += 1
        return total / max(count, 1)


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
    trainer = Trainer(model, config, windows, _type_weights(split.type_names, config), popularity, device)
    per_rank = len(windows) // trainer.world
    trainer.total_steps = epochs * math.ceil(per_rank / config.batch_size)
    best_ndcg, best_epoch, best_metrics, best_state = -1.0, 0, {}, None
    bad = 0
    started = time.perf_counter()
    for epoch in range(1, epochs + 1):
        loss = trainer.epoch(epoch)
        metrics: dict[str, float] | None = None
        if valid is not None and (epoch % config.eval_every == 0 or epoch == epochs):
            stop = torch.zeros(1)
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
        chosen = torch.tensor([best_epoch], dtype=torch.long)
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


def ddp_setup(backend: str | None = None) -> bool:
    """Join the process group torchrun describes (env:// rendezvous); False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if chosen == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=chosen)
    return True


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
