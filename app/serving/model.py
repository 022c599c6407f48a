"""ServingModel: one model version ready to answer (model, index, row map, masks), replaced, never mutated."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from app.artifacts import LoadedModel
from app.index.engine import VectorIndex
from app.records import ItemRecord

_EMPTY_ROWS = np.empty(0, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class ServingModel:
    """A snapshot of one version: rows 0..n_rows-1 of `index`, which of them may be shown, and categories.

    `item_ids` and `row_of` are append-only and shared by the snapshots of one version (items added after
    training are appended to both and to the index); a snapshot only uses rows below its `n_rows`, so a request
    holding it never sees a row added after it started.
    """

    version: str
    loaded: LoadedModel
    index: VectorIndex
    item_ids: list[str]
    row_of: dict[str, int]
    n_rows: int
    allowed: np.ndarray  # bool [n_rows]: available and not deleted
    category_rows: dict[str, np.ndarray]  # category -> sorted int64 rows
    trained_rows: int  # rows below this come from training; above, from `embed_items`
    hidden_rows: np.ndarray  # int64 [h]: the rows `allowed` leaves out
    # int64 [n_rows]: each row's row in the catalog's field table (app/rules/table.py), -1 when the catalog
    # has not named the item; filter masks over the catalog are gathered through it onto the index rows.
    catalog_rows: np.ndarray = field(default_factory=lambda: _EMPTY_ROWS)

    @classmethod
    def create(cls, loaded: LoadedModel, index: VectorIndex) -> ServingModel:
        """A snapshot of a freshly loaded version: every trained item shown, no categories yet."""
        n = len(loaded.item_ids)
        if index.ntotal != n:
            raise ValueError(f"index holds {index.ntotal} rows but the model has {n} items")
        return cls(
            version=loaded.version,
            loaded=loaded,
            index=index,
            item_ids=list(loaded.item_ids),
            row_of=dict(loaded.row_of),
            n_rows=n,
            allowed=np.ones(n, dtype=bool),
            category_rows={},
            trained_rows=n,
            hidden_rows=_EMPTY_ROWS,
            catalog_rows=np.full(n, -1, dtype=np.int64),
        )

    def row(self, item_id: str) -> int | None:
        """The item's row in this snapshot, or None."""
        row = self.row_of.get(item_id)
        return row if row is not None and row < self.n_rows else None

    def rows(self, item_ids: Iterable[str]) -> np.ndarray:
        """Rows of the known items among `item_ids` (int64 [m])."""
        found = [r for r in (self.row(i) for i in item_ids) if r is not None]
        return np.asarray(found, dtype=np.int64) if found else _EMPTY_ROWS

    def allowed_in(self, category: str | None) -> np.ndarray:
        """Bool mask [n_rows] of the rows that may be shown, within `category` when given."""
        if category is None:
            return self.allowed
        mask = np.zeros(self.n_rows, dtype=bool)  # [n_rows]
        mask[self.category_rows.get(category, _EMPTY_ROWS)] = True
        mask &= self.allowed
        return mask

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: np.ndarray,
        category: str | None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k eligible rows for queries [Q, D]: (scores [Q, k], rows [Q, k]) padded with -inf / -1.

        `allowed` (bool [n_rows], e.g. a filter expression's mask with `self.allowed` already folded in)
        restricts the rows further."""
        if allowed is not None:
            mask = allowed if category is None else allowed & self.allowed_in(category)
            return self.index.search(queries, k, exclude=exclude, allowed=mask)
        if category is None and self.index.ntotal == self.n_rows:
            # No mask to copy and pack per request: hidden rows (usually few) join the exclusions instead.
            excluded = np.concatenate([exclude, self.hidden_rows]) if self.hidden_rows.size else exclude
            return self.index.search(queries, k, exclude=excluded)
        return self.index.search(queries, k, exclude=exclude, allowed=self.allowed_in(category))

    def with_items(
        self,
        changes: Sequence[tuple[ItemRecord, tuple[str, ...]]],
        catalog_row_of: Mapping[str, int] | None = None,
    ) -> ServingModel:
        """A new snapshot with catalog changes applied: (record, categories before) pairs.

        Items the model has never seen are embedded from their features and appended to the index.
        `catalog_row_of` (item id -> row of the catalog's field table) fills `catalog_rows`.
        """
        if not changes:
            return self
        new_records = []
        pending: set[str] = set()
        for record, _ in changes:
            if record.item_id not in self.row_of and record.item_id not in pending:
                new_records.append(record)
                pending.add(record.item_id)
        n_rows = self.n_rows
        if new_records:
            vectors = self.loaded.embed_items(new_records)  # [m, d+1]
            rows = self.index.add(vectors)  # [m]
            for record, row in zip(new_records, rows.tolist(), strict=True):
                self.item_ids.append(record.item_id)
                self.row_of[record.item_id] = row
            n_rows = int(rows[-1]) + 1
        allowed = np.ones(n_rows, dtype=bool)  # [n_rows]
        allowed[: self.n_rows] = self.allowed
        added: dict[str, list[int]] = {}
        removed: dict[str, list[int]] = {}
        for record, before in changes:
            row = self.row_of[record.item_id]
            allowed[row] = record.available
            new_cats, old_cats = set(record.categories), set(before)
            if row >= self.n_rows:
                old_cats = set()
            for cat in new_cats - old_cats:
                added.setdefault(cat, []).append(row)
            for cat in old_cats - new_cats:
                removed.setdefault(cat, []).append(row)
        category_rows = dict(self.category_rows)
        for cat in set(added) | set(removed):
            rows_now = category_rows.get(cat, _EMPTY_ROWS)
            if cat in added:
                rows_now = np.union1d(rows_now, np.asarray(added[cat], dtype=np.int64))
            if cat in removed:
                rows_now = np.setdiff1d(rows_now, np.asarray(removed[cat], dtype=np.int64))
            if rows_now.size:
                category_rows[cat] = rows_now.astype(np.int64, copy=False)
            else:
                category_rows.pop(cat, None)
        hidden_rows = np.flatnonzero(~allowed).astype(np.int64)  # [h]
        catalog_rows = np.full(n_rows, -1, dtype=np.int64)  # [n_rows]
        catalog_rows[: self.catalog_rows.size] = self.catalog_rows
        if catalog_row_of is not None:
            for record, _ in changes:
                at = catalog_row_of.get(record.item_id)
                if at is not None:
                    catalog_rows[self.row_of[record.item_id]] = at
        return replace(
            self,
            n_rows=n_rows,
            allowed=allowed,
            category_rows=category_rows,
            hidden_rows=hidden_rows,
            catalog_rows=catalog_rows,
        )
