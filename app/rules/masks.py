"""Filter masks, memoised: an expression is evaluated over the whole catalog once per catalog revision, and
gathered onto a model snapshot's index rows once per snapshot; every later request with the same expression
reuses the arrays (a dict lookup), so a filter costs the search nothing but the selector.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from app.rules.expr import Filter
from app.rules.table import ItemTable
from app.serving.model import ServingModel

MEMO_SIZE = 256


class MaskMemo:
    """LRU memo of catalog masks (bool [n_catalog + 1], the last entry for items the catalog lacks) and model
    masks (bool [n_rows], the snapshot's `allowed` folded in)."""

    def __init__(self, size: int = MEMO_SIZE) -> None:
        self._size = size
        self._entries: OrderedDict[tuple[Any, ...], tuple[tuple[object, ...], np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()
        self.computed = 0  # masks evaluated (not served from the memo): tests and metrics read it

    def _get(self, key: tuple[Any, ...], owner: tuple[object, ...]) -> np.ndarray | None:
        with self._lock:
            entry = self._entries.get(key)
            # ids in the key may be reused once their objects are gone: the entry also holds the objects
            if entry is None or any(a is not b for a, b in zip(entry[0], owner, strict=True)):
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def _put(self, key: tuple[Any, ...], owner: tuple[object, ...], mask: np.ndarray) -> np.ndarray:
        mask.setflags(write=False)  # shared by every request: nobody may change it in place
        with self._lock:
            self._entries[key] = (owner, mask)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)
            self.computed += 1
        return mask

    def catalog_mask(self, table: ItemTable, expr: Filter) -> np.ndarray:
        """bool [table.n_rows + 1]: which catalog rows match; the last entry is for an item with no fields."""
        key = ("catalog", id(table), expr.canonical)
        found = self._get(key, (table,))
        if found is not None:
            return found
        mask = np.empty(table.n_rows + 1, dtype=bool)  # [n + 1]
        mask[:-1] = expr.mask(table)
        mask[-1] = expr.matches_empty
        return self._put(key, (table,), mask)

    def model_mask(self, model: ServingModel, table: ItemTable, expr: Filter) -> np.ndarray:
        """bool [model.n_rows]: index rows that match and may be shown (`model.allowed` folded in)."""
        key = ("model", id(model), id(table), expr.canonical)
        found = self._get(key, (model, table))
        if found is not None and found.size == model.n_rows:
            return found
        catalog = self.catalog_mask(table, expr)  # [n + 1]
        rows = model.catalog_rows[: model.n_rows]  # [n_rows]; -1 picks the last entry (no fields)
        rows = np.where(rows >= table.n_rows, -1, rows)  # rows named after this table was taken: no fields
        mask = catalog[rows] & model.allowed  # [n_rows]
        return self._put(key, (model, table), mask)
