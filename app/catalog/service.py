"""Catalog and user operations that span tables or the cache."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy.orm import Session, sessionmaker

from app.cache import Cache
from app.cache import keys as cache_keys
from app.catalog import repository
from app.db.engine import run_transaction
from app.events import repository as events
from app.records import ItemRecord


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
