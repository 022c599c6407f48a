"""Catalog and user operations that span tables or the cache."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.cache import Cache
from app.cache import keys as cache_keys
from app.catalog import repository
from app.db.engine import run_transaction
from app.events import repository as events
from app.records import ItemRecord, as_utc


def erase_user(session: Session, user_id: str) -> bool:
    """Delete the user and every event of theirs; True when anything existed. The caller commits."""
    removed_events = events.delete_for_user(session, user_id)
    removed_user = repository.delete_user(session, user_id)
    return bool(removed_events or removed_user)


def forget_cached(cache: Cache, user_id: str) -> None:
    """After an erasure commits: no cached answer of the user survives."""
    cache.incr_many([cache_keys.user_generation(user_id)])
    cache.delete_prefix(cache_keys.user_prefix(user_id))


def after_items_hidden(cache: Cache) -> None:
    """After an item became unavailable or deleted commits: no cached answer may still show it."""
    cache.incr_many([cache_keys.EPOCH])


def load_items(sessions: sessionmaker[Session], items: Iterable[ItemRecord], chunk_size: int = 1000) -> int:
    """Upsert catalog records (importers, demo) in chunked transactions; returns how many."""
    records = list(items)
    for start in range(0, len(records), chunk_size):
        part = records[start : start + chunk_size]
        run_transaction(sessions, lambda s, part=part: repository.ensure_items(s, part))  # type: ignore[misc]
    return len(records)


_ITEM_DEFAULTS: dict[str, Any] = {
    "title": None,
    "categories": [],
    "tags": [],
    "price": None,
    "available": True,
    "published_at": None,
    "attributes": {},
}


@dataclass(frozen=True, slots=True)
class ItemChanges:
    """What loading a batch of item rows did: created, changed (or restored), left as they were."""

    new: int = 0
    updated: int = 0
    unchanged: int = 0


def _same(stored: Any, given: Any) -> bool:
    if isinstance(stored, datetime) and isinstance(given, datetime):
        return as_utc(stored) == as_utc(given)  # SQLite hands times back naive
    return bool(stored == given)


def load_item_fields(
    sessions: sessionmaker[Session], rows: Sequence[tuple[str, dict[str, Any]]]
) -> ItemChanges:
    """Upsert `(item_id, fields given)` rows in one transaction with the API's semantics (fields left out keep
    their value, a repeated id applies in order, a hidden item is restored). A row that would change nothing is
    not written (its `updated_at` stays), so loading the same file again rewrites nothing."""

    def work(session: Session) -> ItemChanges:
        stored = repository.items_by_id(session, (item_id for item_id, _ in rows))
        state: dict[str, dict[str, Any]] = {
            item_id: {**{name: getattr(item, name) for name in _ITEM_DEFAULTS}, "deleted": item.deleted}
            for item_id, item in stored.items()
        }
        new = updated = unchanged = 0
        writes: list[tuple[str, dict[str, Any]]] = []
        for item_id, fields in rows:
            current = state.get(item_id)
            if current is None:
                new += 1
                state[item_id] = {**_ITEM_DEFAULTS, **fields, "deleted": False}
                writes.append((item_id, fields))
                continue
            if current["deleted"] or not all(_same(current[k], v) for k, v in fields.items()):
                updated += 1
                current.update(fields, deleted=False)
                writes.append((item_id, fields))
            else:
                unchanged += 1
        if writes:
            repository.upsert_items(session, writes)
        return ItemChanges(new, updated, unchanged)

    return run_transaction(sessions, work)
