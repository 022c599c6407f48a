"""Training windows: per-user sequences cut into left-padded, next-item-target windows of length L."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np

Sequences = Sequence[tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True, eq=False)
class Windows:
    """Left-padded training windows: inputs and next-item targets (-1 = padding)."""

    # int32 halves what an epoch's windows hold (10M events: ~1 GB less); batches become int64 on the device.
    items: np.ndarray  # [W, L] int32
    types: np.ndarray  # [W, L] int32
    targets: np.ndarray  # [W, L] int32
    target_types: np.ndarray  # [W, L] int32
    users: np.ndarray | None = None  # [W] int64 hashed user rows (models with a user-ID table)
    seqs: np.ndarray | None = None  # [W] int64 each window's sequence index (its user's explicit negatives)

    def __len__(self) -> int:
        return int(self.items.shape[0])

    @cached_property
    def lengths(self) -> np.ndarray:
        return (self.items >= 0).sum(axis=1)  # [W]


def make_windows(sequences: Sequences, max_len: int, users: np.ndarray | None = None) -> Windows:
    """Cut every sequence into windows of `max_len` inputs, each position predicting the next item.

    `users` ([S], one hashed user row per sequence) labels each window with its sequence's user row; `seqs`
    holds each window's sequence index."""
    rows: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    owners: list[int] = []
    for s, (items, types) in enumerate(sequences):
        end = len(items) - 1
        while end > 0:
            start = max(0, end - max_len)
            rows.append(
                (items[start:end], types[start:end], items[start + 1 : end + 1], types[start + 1 : end + 1])
            )
            owners.append(s)
            end = start
    n = len(rows)
    out = [np.full((n, max_len), -1, dtype=np.int32) for _ in range(4)]
    for w, row in enumerate(rows):
        length = len(row[0])
        for array, values in zip(out, row, strict=True):
            array[w, max_len - length :] = values
    labels = None if users is None else np.asarray(users, dtype=np.int64)[np.asarray(owners, dtype=np.int64)]
    seqs = np.asarray(owners, dtype=np.int64)  # [W]
    return Windows(out[0], out[1], out[2], out[3], users=labels, seqs=seqs)


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
