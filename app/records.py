"""Plain records shared by importers, the store and the model: no I/O, no framework."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ItemRecord:
    """One catalog item as the catalog sends it; every field but the id is optional."""

    item_id: str
    title: str | None = None
    categories: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    price: float | None = None
    available: bool = True
    published_at: datetime | None = None
    attributes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EventRecord:
    """One user-item interaction; `timestamp` is timezone-aware UTC."""

    user_id: str
    item_id: str
    type: str
    timestamp: datetime
    value: float | None = None
    event_id: str | None = None


def as_utc(ts: datetime) -> datetime:
    """`ts` as an aware UTC datetime (a naive one, as SQLite returns them, is taken to be UTC)."""
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
