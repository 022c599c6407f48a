"""What serving must know about the catalog (availability, categories), kept current by polling changes."""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from app.catalog.repository import iter_item_records, latest_item_change
from app.records import ItemRecord
from app.rules.table import ItemTable

# Rows changed this long before the watermark are read again: a transaction may commit after a later one
# whose rows we already saw (its `updated_at` was taken before), and clocks of API processes differ a little.
OVERLAP = timedelta(seconds=10)


@dataclass(frozen=True, slots=True)
class ItemState:
    """Whether an item may be shown, and its categories."""

    available: bool
    categories: tuple[str, ...]


def changed_items(session: Session, since: datetime | None, chunk_size: int = 10_000) -> Iterator[ItemRecord]:
    """Items (deleted ones as unavailable) whose row changed after `since`; every item when None."""
    return iter_item_records(session, changed_after=since, chunk_size=chunk_size)


def latest_change(session: Session) -> datetime | None:
    """The newest `updated_at` of the items table (None when empty)."""
    return latest_item_change(session)


class CatalogView:
    """Item id -> state, for items that are hidden or have categories (every other item is shown, uncategorised).

    One writer (the registry's catalog sync, under its lock); readers see each entry either before or after
    a change (single dict operations are atomic in CPython).
    """

    def __init__(self) -> None:
        self._blocked: set[str] = set()
        self._categories: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self.watermark: datetime | None = None
        self.loaded = False
        self.revision = 0  # bumped by every `apply`: memoised lookups keyed by it never go stale
        # Every item's fields, columnar, for filter expressions (app/rules): row_of[item_id] is its row there.
        # Rows are append-only; the table is replaced (copy-on-write) by every `apply`.
        self.row_of: dict[str, int] = {}
        self.table = ItemTable.empty()

    def is_blocked(self, item_id: str) -> bool:
        """True when the item is unavailable or deleted."""
        return item_id in self._blocked

    def categories(self, item_id: str) -> tuple[str, ...]:
        """The item's categories (empty when unknown)."""
        return self._categories.get(item_id, ())

    def apply(self, records: Iterable[ItemRecord]) -> list[tuple[ItemRecord, tuple[str, ...]]]:
        """Record new states; returns each record with the categories the item had before."""
        out = []
        rows: list[tuple[int, ItemRecord]] = []
        with self._lock:
            for record in records:
                row = self.row_of.get(record.item_id)
                if row is None:
                    row = self.row_of[record.item_id] = len(self.row_of)
                rows.append((row, record))
                before = self._categories.get(record.item_id, ())
                if record.available:
                    self._blocked.discard(record.item_id)
                else:
                    self._blocked.add(record.item_id)
                if record.categories:
                    self._categories[record.item_id] = record.categories
                else:
                    self._categories.pop(record.item_id, None)
                out.append((record, before))
            if rows:
                self.table = self.table.with_records(rows)
            self.revision += 1
        return out

    def __len__(self) -> int:
        return len(self._categories) + len(self._blocked)
