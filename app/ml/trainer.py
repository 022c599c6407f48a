"""One model's optimisation loop on one device or one DDP rank: batches, loss, optimiser, weight average."""

from __future__ import annotations

import copy
import ctypes
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel

from app.ml.config import TrainConfig
from app.ml.data import UserNegatives
from app.ml.model import TwoTower
from app.ml.windows import Windows

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_allocator_tuned = False


def tune_allocator() -> bool:
    """Keep freed training buffers in the process heap instead of returning them to the OS (glibc only).

    Every step allocates and frees [positions, items] logits of tens of MB. glibc serves blocks that large with
    mmap and unmaps them on free, so the next step page-faults every page in again: a 43 MB copy then ran at
    5 GB/s instead of 33 GB/s, and log_softmax took 19 ms instead of 6 (scripts/profile_train.py). Raising the
    mmap and trim thresholds makes them reusable heap memory. Returns whether the allocator was tuned.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = bool(libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30))
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to tune
        return False
    _allocator_tuned = ok
    return ok


def resolve_device(config: TrainConfig) -> torch.device:
    """CUDA when asked for or ('auto') available, else the CPU."""
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("TrainConfig.device: 'cuda' was asked for but torch sees no CUDA device")
    if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def use_bf16(config: TrainConfig, device: torch.device) -> bool:
    """bf16 autocast: always on CUDA; on the CPU when oneDNN has native bf16 kernels (AVX512-BF16, AMX).

    On this machine's AVX512-BF16 cores the [positions, items] logits product runs 3x faster in bf16 (31 -> 6 ms
    forward at 6400 x 65 x 1682) and the feed-forward 4x; the cross-entropy itself stays in float32.
    """
    if config.amp == "off":
        return False
    if device.type == "cuda" or config.amp == "bf16":
        return True
    return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def forward_batch(
    model: TwoTower,
    items: Tensor,
    types: Tensor,
    candidates: Tensor | None,
    users: Tensor | None = None,
    extra: Tensor | None = None,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """States [B, L, d] of padded windows, the (v, b) vectors [C, d+1] of the candidates (None = all) and
    those [E, d+1] of the `extra` item codes (explicit negatives and their targets; None when not given).

    Without `extra` the computation is exactly the one without negatives (the same item rows, in the same order).
    """
    valid = items >= 0  # [B, L]
    extra_vecs = None
    if candidates is None:
        table = model.items(None)  # [N, d+1]
        inputs = table[items.clamp(min=0)]  # [B, L, d+1]
        cand_vecs = table
        if extra is not None:
            extra_vecs = table[extra]  # [E, d+1]
    else:
        parts = [items.clamp(min=0).flatten(), candidates] + ([extra] if extra is not None else [])
        rows, inverse = torch.unique(torch.cat(parts), return_inverse=True)
        table = model.items(rows)  # [R, d+1]
        inputs = table[inverse[: items.numel()].view_as(items)]  # [B, L, d+1]
        end = items.numel() + candidates.numel()
        cand_vecs = table[inverse[items.numel() : end]]  # [C, d+1]
        if extra is not None:
            extra_vecs = table[inverse[end:]]  # [E, d+1]
    type_ids = torch.where(types >= 0, types, torch.full_like(types, model.n_types))  # [B, L]
    return model.encode(inputs, type_ids, valid, users), cand_vecs, extra_vecs


class _Forward(torch.nn.Module):
    """Wraps forward_batch as a module so DistributedDataParallel can sync its gradients."""

    def __init__(self, model: TwoTower) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        items: Tensor,
        types: Tensor,
        candidates: Tensor | None,
        users: Tensor | None = None,
        extra: Tensor | None = None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        return forward_batch(self.model, items, types, candidates, users, extra)


def type_weights(type_names: Sequence[str], config: TrainConfig) -> np.ndarray:
    default = 1.0
    return np.array([config.event_weights.get(t, default) for t in type_names] + [default], dtype=np.float32)


@dataclass(frozen=True)
class BatchNegatives:
    """One batch's explicit negatives, as (batch row, item) pairs: K pairs in all."""

    rows: Tensor  # [K] int64 batch row (window) of each pair
    items: Tensor  # [K] int64 negative item code
    targets: Tensor  # [K] int64 the row's last target (the positive it is compared with)
    scale: Tensor  # [K] float32 1 / (pairs of its row): each row's pairs average to one term


class Trainer:
    """Runs epochs over windows on one device (or one DDP rank) for one model.

    With `negatives` (UserNegatives, CSR per sequence index of `windows.seqs`) and config.negative_weight > 0,
    the loss gains the explicit-negative term of `_negative_loss`; without them it is exactly the plain one.
    """

    def __init__(
        self,
        model: TwoTower,
        config: TrainConfig,
        windows: Windows,
        type_weights: np.ndarray,
        popularity: np.ndarray,
        device: torch.device,
        negatives: UserNegatives | None = None,
    ) -> None:
        tune_allocator()
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
        # One fused kernel over every parameter instead of a Python loop tensor by tensor.
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=config.lr, weight_decay=config.weight_decay, fused=True
        )
        self.average: TwoTower | None = copy.deepcopy(self.model).eval() if config.ema_decay > 0 else None
        if self.average is not None:
            self.average.requires_grad_(False)
        self._average_params: list[Tensor] = (
            list(self.average.parameters()) if self.average is not None else []
        )
        self._model_params = [p.detach() for p in self.model.parameters()]
        targets = torch.from_numpy(windows.target_types[windows.targets >= 0]).long()  # [P]
        weight_sum = float(self.type_weights.cpu()[torch.where(targets >= 0, targets, -1)].sum())
        self.weight_per_window = weight_sum / max(len(windows), 1)
        self.step = 0
        self.total_steps = 0  # set by the caller for schedules that need the run's length
        self.schedule_start = 0
        self.base_lr = config.lr
        self.warmup_steps = config.warmup_steps
        self.interrupted = False  # the last epoch stopped early on its deadline
        self.sequences = 0
        self.generator = torch.Generator(device="cpu").manual_seed(config.seed)
        self._triangles: dict[int, tuple[Tensor, Tensor]] = {}
        self.bf16_logits = device.type == "cpu" and use_bf16(config, device)
        use_negatives = negatives is not None and len(negatives) > 0 and config.negative_weight > 0
        self.negatives: UserNegatives | None = negatives if use_negatives else None

    def _loss(
        self,
        items: Tensor,
        types: Tensor,
        targets: Tensor,
        target_types: Tensor,
        users: Tensor | None = None,
        negatives: BatchNegatives | None = None,
    ) -> Tensor:
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
        extra = None if negatives is None else torch.cat([negatives.items, negatives.targets])  # [2K]
        # [B, L, d], [C, d+1], [2K, d+1] or None
        states, cand_vecs, extra_vecs = self.forward(items, types, candidates, users, extra)
        query = TwoTower.query(states[mask])  # [P, d+1]
        if self.bf16_logits:
            # Only the [P, C] product in bf16 (3-5x faster on AVX512-BF16); softmax and CE in float32.
            logits = (query.to(torch.bfloat16) @ cand_vecs.to(torch.bfloat16).T).float()  # [P, C]
        else:
            logits = (query @ cand_vecs.T).float()  # [P, C]
        if isinstance(log_q, Tensor):
            logits = logits - log_q
        if self.config.mask_seen:
            logits = self._mask_seen(logits, items, mask, candidates, pos_targets)
        losses = F.cross_entropy(logits, pos_targets, reduction="none")  # [P]
        # Divide by the expected weight of a batch, not this batch's own: bucketed batches of short windows
        # would otherwise weigh each of their positions more than long ones do.
        loss = (losses * weights).sum() / (self.weight_per_window * items.shape[0])
        if negatives is not None and extra_vecs is not None:
            loss = loss + self._negative_loss(states, extra_vecs, negatives)
        return loss

    def _negative_loss(self, states: Tensor, extra_vecs: Tensor, negatives: BatchNegatives) -> Tensor:
        """The explicit-negative term: weight * sum over windows with negatives of the mean over their
        negatives n of softplus(s(u, n) - s(u, t)), divided by the batch's windows.

        s(u, x) = q_u . (v_x, b_x) with q_u the window's last state (what serving ranks with) and t the window's
        last target. Why a pairwise (BPR-style) term rather than the negatives as extra softmax candidates: in
        the full softmax every item already is a candidate, so adding them there changes nothing; the pairwise
        term pushes each rejected item below the item the user did pick, on the path with sampled candidates
        as on the full one, without changing the softmax (its normaliser and logQ correction) at all. It is
        one [K, d+1] product (K pairs of the batch), and it is absent from batches without negatives, so a run
        without negatives computes exactly what it did before.
        """
        k = negatives.rows.shape[0]
        # Windows are left-padded: the last column is always a valid position.
        query = TwoTower.query(states[:, -1]).float()  # [B, d+1]
        q = query[negatives.rows]  # [K, d+1]
        neg_vecs, pos_vecs = extra_vecs[:k].float(), extra_vecs[k:].float()  # [K, d+1] each
        margin = (q * neg_vecs).sum(-1) - (q * pos_vecs).sum(-1)  # [K]
        term = (F.softplus(margin) * negatives.scale).sum() / states.shape[0]
        return self.config.negative_weight * term

    def _batch_negatives(self, idx: np.ndarray, last_targets: np.ndarray) -> BatchNegatives | None:
        """The (row, negative) pairs of a batch of windows `idx` (vectorised CSR gather; None when none).

        A negative equal to the row's own last target is left out (the user came back to it)."""
        if self.negatives is None or self.windows.seqs is None:
            return None
        offsets, codes = self.negatives.offsets, self.negatives.items
        seqs = self.windows.seqs[idx]  # [B]
        starts = offsets[seqs]  # [B]
        counts = offsets[seqs + 1] - starts  # [B]
        total = int(counts.sum())
        if total == 0:
            return None
        rows = np.repeat(np.arange(len(idx)), counts)  # [K]
        within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)  # [K] rank in its row
        items = codes[starts[rows] + within]  # [K]
        targets = last_targets[rows].astype(np.int64)  # [K]
        keep = items != targets
        rows, items, targets = rows[keep], items[keep], targets[keep]
        if rows.shape[0] == 0:
            return None
        scale = (1.0 / np.bincount(rows, minlength=len(idx))[rows]).astype(np.float32)  # [K]

        def put(a: np.ndarray) -> Tensor:
            return torch.from_numpy(a).to(self.device, non_blocking=True)

        return BatchNegatives(put(rows), put(items), put(targets), put(scale))

    def _mask_seen(
        self, logits: Tensor, items: Tensor, mask: Tensor, candidates: Tensor | None, targets: Tensor
    ) -> Tensor:
        """Hide the items already in each position's prefix: they can never be the next (de-duplicated) item,
        exactly as evaluation and serving remove them.

        Only the (position, earlier item) pairs are built, B * L(L+1)/2 of them, never a [B, L, N] tensor.
        """
        b, length = items.shape
        tri_i, tri_j = self._triangle(length)  # [T] each: input position i <= output position j
        row_of = (mask.flatten().cumsum(0) - 1).view(b, length)  # [B, L] row of (b, j) in the logits
        earlier = items[:, tri_i]  # [B, T] the item at position i
        keep = mask[:, tri_j] & (earlier >= 0)  # [B, T]
        rows = row_of[:, tri_j][keep]  # [S]
        cols = earlier[keep]  # [S] item codes
        if candidates is not None:
            slot = torch.full((self.n_items,), -1, dtype=torch.long, device=items.device)  # [N]
            slot[candidates] = torch.arange(candidates.shape[0], device=items.device)
            cols = slot[cols]
            present = cols >= 0
            rows, cols = rows[present], cols[present]
        hidden = cols != targets[rows]  # never the target itself
        rows, cols = rows[hidden], cols[hidden]
        # In place: the product's output is not saved for its backward, so autograd allows it (no copy).
        return logits.index_put_((rows, cols), torch.tensor(float("-inf"), device=logits.device))

    def _triangle(self, length: int) -> tuple[Tensor, Tensor]:
        cached = self._triangles.get(length)
        if cached is None:
            tri = torch.tril_indices(length, length, device=self.device)  # [2, T]: (j, i) with i <= j
            cached = self._triangles[length] = (tri[1], tri[0])
        return cached

    def _update_average(self) -> None:
        if self.average is None:
            return
        # Polyak/EMA weights: less noisy than the last step on small data; warm start over the first steps.
        decay = min(self.config.ema_decay, (1 + self.step) / (10 + self.step))
        with torch.no_grad():
            torch._foreach_lerp_(self._average_params, self._model_params, 1.0 - decay)

    @property
    def served(self) -> TwoTower:
        """The model to evaluate and keep: the weight average when enabled, else the trained weights."""
        return self.average if self.average is not None else self.model

    def _lr(self) -> float:
        step = self.step - self.schedule_start
        warmup = self.warmup_steps
        warm = min(1.0, (step + 1) / max(warmup, 1))
        total = self.total_steps - self.schedule_start
        if self.config.lr_schedule == "cosine" and total > warmup:
            progress = (step - warmup) / (total - warmup)
            return self.base_lr * warm * 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        return self.base_lr * warm

    def restart_schedule(self, windows: Windows, steps: int, lr: float, warmup_steps: int) -> None:
        """Continue training (same weights, optimiser moments and average) on other windows: a new schedule
        of `steps` steps from `lr` (warm starts, and the refit that continues from the early-stopped weights)."""
        self.windows = windows
        self.schedule_start = self.step
        self.total_steps = self.step + steps
        self.base_lr = lr
        self.warmup_steps = warmup_steps
        targets = torch.from_numpy(windows.target_types[windows.targets >= 0]).long()  # [P]
        weight_sum = float(self.type_weights.cpu()[torch.where(targets >= 0, targets, -1)].sum())
        self.weight_per_window = weight_sum / max(len(windows), 1)

    def load_weights(self, state: dict[str, Tensor]) -> None:
        """Set both the trained and the averaged weights (to continue from a chosen epoch)."""
        self.model.load_state_dict(state)
        if self.average is not None:
            self.average.load_state_dict(state)

    def steps_per_epoch(self, windows: Windows | None = None) -> int:
        """About how many optimiser steps an epoch takes on this rank (for the learning-rate schedule)."""
        saved = self.windows
        if windows is not None:
            self.windows = windows
        try:
            rng = np.random.default_rng(0)
            order = rng.permutation(len(self.windows))[: len(self.windows) // self.world]
            return max(len(self._batches(order, rng)), 1)
        finally:
            self.windows = saved

    def _batches(self, order: np.ndarray, rng: np.random.Generator) -> list[np.ndarray]:
        """Batches of similar-length windows (bucketed within shuffled chunks), in random order.

        A batch holds at least `batch_size` windows and grows until it holds `batch_positions` (padded)
        positions: short histories (a shop's users) then fill a batch as long ones do, instead of paying a
        whole optimiser step and item-tower pass per 32 windows of a few positions each.
        """
        size = self.config.batch_size
        if not self.config.bucket_by_length:
            return [order[i : i + size] for i in range(0, len(order), size)]
        lengths = self.windows.lengths[order]
        budget = self.config.batch_positions
        mean = max(float(lengths.mean()) if len(lengths) else 1.0, 1.0)
        chunk = max(size * 32, int(32 * budget / mean))
        cap = max(size, len(order) // 64)  # small data keeps >= ~64 steps an epoch
        batches = []
        for start in range(0, len(order), chunk):
            part_lengths = lengths[start : start + chunk]
            by_length = np.argsort(-part_lengths, kind="stable")
            part, part_lengths = order[start : start + chunk][by_length], part_lengths[by_length]
            i = 0
            while i < len(part):
                width = max(int(part_lengths[i]), 1)  # the longest of the batch: sorted descending
                count = max(size, min(-(-budget // width), cap))
                batches.append(part[i : i + count])
                i += count
        return [batches[i] for i in rng.permutation(len(batches))]

    def epoch(self, epoch: int, deadline: float | None = None) -> float:
        """One pass over this rank's share of the windows; returns the mean loss.

        With a `deadline` (time.perf_counter() value) a single process stops between steps once it has passed
        (`interrupted` says so); DDP ranks stop only at epoch ends, where rank 0's decision is broadcast.
        """
        self.model.train()
        self.interrupted = False
        rng = np.random.default_rng([self.config.seed, epoch])
        order = rng.permutation(len(self.windows))
        if self.distributed:
            per_rank = len(order) // self.world  # equal shares: every rank runs the same number of steps
            order = order[self.rank * per_rank : (self.rank + 1) * per_rank]
        autocast = self.device.type == "cuda" and use_bf16(self.config, self.device)
        total, count = 0.0, 0
        arrays = (self.windows.items, self.windows.types, self.windows.targets, self.windows.target_types)
        max_len = self.windows.items.shape[1]
        batches = self._batches(order, rng)
        if self.distributed:  # every rank must run the same number of steps (DDP all-reduces each one)
            steps = torch.tensor([len(batches)], device=self.device)
            dist.all_reduce(steps, op=dist.ReduceOp.MIN)
            batches = batches[: int(steps.item())]
        for idx in batches:
            # Windows are left-padded: dropping the all-padding columns changes nothing but the cost.
            width = int(self.windows.lengths[idx].max())
            batch = [
                torch.from_numpy(a[idx, max_len - width :]).to(self.device, non_blocking=True).long()
                for a in arrays
            ]
            users = None
            if self.windows.users is not None:
                users = torch.from_numpy(self.windows.users[idx]).to(self.device, non_blocking=True)
            negatives = None
            if self.negatives is not None:
                negatives = self._batch_negatives(idx, self.windows.targets[idx, -1])
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr()
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=autocast):
                loss = self._loss(batch[0], batch[1], batch[2], batch[3], users, negatives)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self._update_average()
            self.step += 1
            self.sequences += len(idx)
            total += float(loss.detach())
            count += 1
            if deadline is not None and not self.distributed and time.perf_counter() > deadline:
                self.interrupted = True
                break
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
