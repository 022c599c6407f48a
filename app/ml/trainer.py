"""One model's optimisation loop on one device or one DDP rank: batches, loss, optimiser, weight average."""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from app.ml.config import TrainConfig
from app.ml.model import TwoTower
from app.ml.windows import Windows


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


def type_weights(type_names: Sequence[str], config: TrainConfig) -> np.ndarray:
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


def ddp_setup(backend: str | None = None) -> bool:
    """Join the process group torchrun describes (env:// rendezvous); False when not under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return dist.is_initialized()
    chosen = backend or ("nccl" if torch.cuda.is_available() else "gloo")
    if chosen == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=chosen)
    return True
