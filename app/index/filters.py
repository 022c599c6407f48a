"""Which rows a search may return: exclusions and an allowed mask turned into a FAISS IDSelector."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import faiss
import numpy as np


@dataclass(frozen=True, slots=True)
class Eligibility:
    """The rows of an index of `n_total` rows that one search call may return."""

    n_total: int
    n_eligible: int
    mask: np.ndarray | None  # bool [n_total], exclusions folded in; set when an allowed mask was given
    excluded: np.ndarray  # int64 [E], unique rows in range; used when `mask` is None

    @classmethod
    def of(
        cls,
        n_total: int,
        exclude: Collection[int] | np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> Eligibility:
        """Normalise `exclude` (row ids; out-of-range ones are ignored) and `allowed` (bool mask)."""
        excluded = excluded_rows(exclude, n_total)
        if allowed is None:
            return cls(n_total, n_total - excluded.size, None, excluded)
        mask = _allowed_mask(allowed, n_total)
        mask[excluded] = False
        return cls(n_total, int(np.count_nonzero(mask)), mask, excluded)

    @property
    def restricted(self) -> bool:
        """Whether some row of the index is not eligible."""
        return self.n_eligible < self.n_total

    def head(self, n: int) -> Eligibility:
        """The eligibility of rows 0..n-1 alone (a memory-mapped index's own rows, without its in-memory tail)."""
        excluded = self.excluded[self.excluded < n]
        if self.mask is None:
            return Eligibility(n, n - excluded.size, None, excluded)
        mask = self.mask[:n]
        return Eligibility(n, int(np.count_nonzero(mask)), mask, excluded)

    def tail_mask(self, start: int) -> np.ndarray | None:
        """Bool [n_total - start]: which rows from `start` on are eligible; None when all of them are."""
        if self.mask is not None:
            return self.mask[start:]
        after = self.excluded[self.excluded >= start] - start
        if not after.size:
            return None
        keep = np.ones(self.n_total - start, dtype=bool)
        keep[after] = False
        return keep

    def rows(self) -> np.ndarray:
        """The eligible rows, ascending: int64 [n_eligible] (meant for small eligible sets)."""
        if self.mask is not None:
            return np.flatnonzero(self.mask).astype(np.int64)
        keep = np.ones(self.n_total, dtype=bool)
        keep[self.excluded] = False
        return np.flatnonzero(keep).astype(np.int64)

    def selector(self) -> tuple[faiss.IDSelector | None, list[object]]:
        """A FAISS selector accepting exactly the eligible rows (None: all are), and the objects it points into."""
        if not self.restricted:
            return None, []
        if self.mask is not None:
            bits = np.packbits(
                self.mask, bitorder="little"
            )  # uint8 [ceil(N / 8)], FAISS reads bit i of byte i>>3
            bitmap = faiss.IDSelectorBitmap(self.n_total, faiss.swig_ptr(bits))
            return bitmap, [bits, bitmap]
        batch = faiss.IDSelectorBatch(self.excluded.size, faiss.swig_ptr(self.excluded))
        negation = faiss.IDSelectorNot(batch)
        # IDSelectorNot keeps a raw pointer to `batch`: the caller holds it alive until the search returns.
        return negation, [self.excluded, batch, negation]


def excluded_rows(exclude: Collection[int] | np.ndarray | None, n_total: int) -> np.ndarray:
    """Unique in-range int64 rows of `exclude`; ids of rows the index does not hold cannot be returned anyway."""
    if exclude is None:
        return np.empty(0, dtype=np.int64)
    if isinstance(exclude, np.ndarray):
        if exclude.dtype == np.bool_:
            raise ValueError("exclude: expected row ids, got a boolean array (pass a mask as `allowed`)")
        if exclude.size and not np.issubdtype(exclude.dtype, np.integer):
            raise ValueError(f"exclude: expected integer row ids, got dtype {exclude.dtype}")
        rows = exclude.astype(np.int64, copy=False).ravel()
    else:
        rows = np.fromiter((int(r) for r in exclude), dtype=np.int64, count=len(exclude))
    rows = rows[(rows >= 0) & (rows < n_total)]
    return np.unique(rows)  # sorted, unique: the count of eligible rows must not double-count


def _allowed_mask(allowed: np.ndarray, n_total: int) -> np.ndarray:
    """A bool [n_total] copy of `allowed`; a shorter mask (taken before a concurrent add) leaves newer rows out."""
    if not isinstance(allowed, np.ndarray) or allowed.dtype != np.bool_ or allowed.ndim != 1:
        got = (
            f"{allowed.dtype} array of shape {allowed.shape}"
            if isinstance(allowed, np.ndarray)
            else type(allowed)
        )
        raise ValueError(f"allowed: expected a 1-D boolean mask over the index rows, got {got}")
    if allowed.size > n_total:
        raise ValueError(f"allowed: mask has {allowed.size} entries but the index holds {n_total} rows")
    mask = np.zeros(n_total, dtype=bool)
    mask[: allowed.size] = allowed
    return mask
