"""Business rules on the serving path: a filtered, over-fetched candidate pool re-ranked by boosts, pins,
promotions, diversity and rotation (app/rules/rerank.py).

Two row spaces: a model snapshot's index rows (personalised, session and similar answers: FAISS searches the
pool with the filter as an allowed-items mask, so k eligible items come back whenever k exist) and the
catalog's field-table rows (popular answers, which need no model). Each space turns an expression into a
memoised mask over its rows, item ids into rows and back, and rows into field values (diversity) and vectors
(maximal marginal relevance).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from app.rules.expr import Filter
from app.rules.masks import MaskMemo
from app.rules.rerank import Boost, Diversity, Mmr, Promotion, Ranked, Rotation, rerank
from app.rules.spec import Rules, both_filters
from app.rules.table import ItemTable
from app.serving.catalog import CatalogView
from app.serving.model import ServingModel


def both(first: Filter | None, second: Filter) -> Filter:
    """`first and second` compiled (memoised by compile_filter, so its mask is memoised too)."""
    return second if first is None else both_filters(first, second)


@dataclass(frozen=True, slots=True)
class ModelSpace:
    """Rows of a model snapshot's index."""

    model: ServingModel
    table: ItemTable
    memo: MaskMemo

    def mask(self, expr: Filter) -> np.ndarray:
        """bool [n_rows]: rows matching `expr` that may be shown."""
        return self.memo.model_mask(self.model, self.table, expr)

    def row(self, item_id: str) -> int | None:
        """The item's row, or None."""
        return self.model.row(item_id)

    def rows(self, item_ids: Sequence[str] | set[str]) -> np.ndarray:
        """int64 rows of the known items among `item_ids`."""
        return self.model.rows(item_ids)

    def item_id(self, row: int) -> str:
        """The item of a row."""
        return self.model.item_ids[row]

    def values(self, field: str, rows: np.ndarray) -> list[tuple[Hashable, ...]]:
        """Each row's values of a field (diversity)."""
        catalog_rows = self.model.catalog_rows[rows]  # [C]
        out: list[tuple[Hashable, ...]] = [()] * rows.size
        known = np.flatnonzero((catalog_rows >= 0) & (catalog_rows < self.table.n_rows))  # [K]
        if known.size:
            for i, value in zip(known.tolist(), self.table.values(field, catalog_rows[known]), strict=True):
                out[i] = value
        return out

    def vectors(self, rows: np.ndarray) -> np.ndarray:
        """float32 [C, d] item vectors (bias left out) for maximal marginal relevance."""
        return self.model.index.vectors(rows)[:, :-1]


@dataclass(frozen=True, slots=True)
class CatalogSpace:
    """Rows of the catalog's field table (no model needed); the last mask entry is for unknown items."""

    catalog: CatalogView
    table: ItemTable
    memo: MaskMemo

    def mask(self, expr: Filter) -> np.ndarray:
        """bool [n + 1]: rows matching `expr` (the last entry: an item the catalog lacks)."""
        return self.memo.catalog_mask(self.table, expr)

    def row(self, item_id: str) -> int | None:
        """The item's row in this table, or None."""
        row = self.catalog.row_of.get(item_id)
        return row if row is not None and row < self.table.n_rows else None

    def unknown_row(self) -> int:
        """The row standing for items the table lacks (the masks' last entry)."""
        return self.table.n_rows

    def rows(self, item_ids: Sequence[str] | set[str]) -> np.ndarray:
        """int64 rows of the known items among `item_ids`."""
        found = [r for r in (self.row(i) for i in item_ids) if r is not None]
        return np.asarray(found, dtype=np.int64)

    def values(self, field: str, rows: np.ndarray) -> list[tuple[Hashable, ...]]:
        """Each row's values of a field (diversity); none for unknown items."""
        known = rows < self.table.n_rows
        out: list[tuple[Hashable, ...]] = [()] * rows.size
        idx = np.flatnonzero(known)
        if idx.size:
            for i, value in zip(idx.tolist(), self.table.values(field, rows[idx]), strict=True):
                out[i] = value
        return out


Space = ModelSpace | CatalogSpace


def promotion_pools_needed(space: Space, rules: Rules, rows: np.ndarray, k: int) -> list[tuple[int, Filter]]:
    """(slots missing, promotion filter AND the answer's filter) for each promotion the pool cannot fill."""
    needed = []
    for slots, promotion in zip(rules.promotion_slots(k), rules.promotions, strict=True):
        have = int(np.count_nonzero(space.mask(promotion.filter)[rows])) if rows.size else 0
        needed.append((max(0, slots - have), both(rules.filter, promotion.filter)))
    return needed


def apply_rules(
    space: Space,
    rows: np.ndarray,
    scores: np.ndarray,
    k: int,
    rules: Rules,
    *,
    logits: bool,
    excluded: set[str],
    blocked: Any,
    demoted: Sequence[str] = (),
    promoted_pools: Sequence[tuple[np.ndarray, np.ndarray]] = (),
) -> Ranked:
    """Re-rank a candidate pool (rows int64 [C], scores [C], best first) under the rules."""
    pins = []
    for item_id, position in rules.pins:
        if item_id in excluded or blocked(item_id):
            continue  # never a hidden, deleted, seen or refused item, pinned or not
        row = space.row(item_id)
        if row is not None and (rules.filter is None or space.mask(rules.filter)[row]):
            pins.append((row, position))
    diversity = mmr = None
    if rules.diversity is not None:
        field = rules.diversity.field
        diversity = Diversity(rules.diversity.max_per_list, lambda r: space.values(field, r))
        if rules.diversity.mmr_lambda is not None and isinstance(space, ModelSpace):
            mmr = Mmr(space.vectors, rules.diversity.mmr_lambda)
    rotation = None
    if rules.rotation is not None and demoted:
        rotation = Rotation(space.rows(list(demoted)), rules.rotation.factor)
    return rerank(
        rows,
        scores,
        k,
        logits=logits,
        boosts=[Boost(space.mask(b.filter), b.weight, b.mode) for b in rules.boosts],
        promotions=[Promotion(space.mask(p.filter), p.share) for p in rules.promotions],
        promoted_pools=promoted_pools,
        pins=pins,
        diversity=diversity,
        mmr=mmr,
        rotation=rotation,
    )


def finite(value: float) -> float:
    """A JSON-safe score (a pinned item that was no candidate has none: 0)."""
    return round(value, 6) if math.isfinite(value) else 0.0
