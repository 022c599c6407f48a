"""SQL for items and users."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, exists, func, literal_column, select
from sqlalchemy.orm import Session

from app.db.tables import Item, User, utcnow
from app.records import ItemRecord


def upsert_items(session: Session, rows: Sequence[tuple[str, dict[str, Any]]]) -> list[Item]:
    """Create or update items; only the fields given are changed; a hidden item becomes visible again."""
    ids = [item_id for item_id, _ in rows]
    existing = {i.item_id: i for i in session.scalars(select(Item).where(Item.item_id.in_(ids)))}
    out = []
    for item_id, fields in rows:
        item = existing.get(item_id)
        now = utcnow()
        if item is None:
            item = Item(item_id=item_id, categories=[], tags=[], available=True, deleted=False, attributes={})
            item.created_at = now  # one clock reading for both: updated_at is never before created_at
            session.add(item)
            existing[item_id] = item
        elif item.deleted:  # a deleted item is re-created from the fields given, not its old ones
            item.title, item.categories, item.tags, item.price = None, [], [], None
            item.available, item.published_at, item.attributes = True, None, {}
        for name, value in fields.items():
            setattr(item, name, value)
        item.deleted = False
        item.updated_at = now
        out.append(item)
    session.flush()
    return out


def items_by_id(session: Session, item_ids: Iterable[str]) -> dict[str, Item]:
    """The stored items among `item_ids`, hidden ones included, by id."""
    ids = sorted(set(item_ids))
    return {i.item_id: i for i in session.scalars(select(Item).where(Item.item_id.in_(ids)))} if ids else {}


def get_item(session: Session, item_id: str) -> Item | None:
    """A visible item (not deleted), or None."""
    return session.scalar(select(Item).where(Item.item_id == item_id, Item.deleted.is_(False)))


def item_deleted(session: Session, item_id: str) -> bool | None:
    """True: the item was deleted; False: it is in the catalog; None: the catalog has no row for it."""
    deleted = session.scalar(select(Item.deleted).where(Item.item_id == item_id))
    return None if deleted is None else bool(deleted)


def _has_category(session: Session, category: str) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        return literal_column("items.categories::jsonb").op("?")(category)
    each = func.json_each(Item.categories).table_valued("value")
    return exists(select(1).select_from(each).where(each.c.value == category))


def list_items(
    session: Session, *, after_id: int, limit: int, category: str | None, available: bool | None
) -> list[Item]:
    """Visible items in id order after the cursor, filtered."""
    stmt = select(Item).where(Item.deleted.is_(False), Item.id > after_id)
    if category:
        stmt = stmt.where(_has_category(session, category))
    if available is not None:
        stmt = stmt.where(Item.available.is_(available))
    return list(session.scalars(stmt.order_by(Item.id).limit(limit)))


def hide_item(session: Session, item_id: str) -> bool:
    """Mark an item deleted; False when there is no such visible item."""
    item = get_item(session, item_id)
    if item is None:
        return False
    item.deleted = True
    item.updated_at = utcnow()
    return True


def iter_item_records(
    session: Session, *, changed_after: datetime | None = None, chunk_size: int = 10_000
) -> Iterator[ItemRecord]:
    """Items with their features, streamed; deleted ones come as unavailable (serving masks them).

    With `changed_after`, only rows updated after that time (the serving catalog watcher).
    """
    stmt = select(
        Item.item_id,
        Item.title,
        Item.categories,
        Item.tags,
        Item.price,
        Item.available,
        Item.deleted,
        Item.published_at,
        Item.attributes,
    )
    if changed_after is not None:
        stmt = stmt.where(Item.updated_at > changed_after)
    stmt = stmt.order_by(Item.id).execution_options(stream_results=True, yield_per=chunk_size)
    for r in session.execute(stmt):
        yield ItemRecord(
            item_id=r.item_id,
            title=r.title,
            categories=tuple(r.categories or ()),
            tags=tuple(r.tags or ()),
            price=r.price,
            available=bool(r.available) and not r.deleted,
            published_at=r.published_at,
            attributes=dict(r.attributes or {}),
        )


def latest_item_change(session: Session) -> datetime | None:
    """The newest `updated_at` of the items table (None when empty); served by its index."""
    return session.scalar(select(func.max(Item.updated_at)))


def upsert_user(session: Session, user_id: str, attributes: dict[str, Any]) -> User:
    """Create or update a user's attributes."""
    user = session.scalar(select(User).where(User.user_id == user_id))
    if user is None:
        now = utcnow()
        user = User(user_id=user_id, attributes=attributes, created_at=now, updated_at=now)
        session.add(user)
    else:
        user.attributes = attributes
        user.updated_at = utcnow()
    session.flush()
    return user


def get_user(session: Session, user_id: str) -> User | None:
    """A user, or None."""
    return session.scalar(select(User).where(User.user_id == user_id))


def delete_user(session: Session, user_id: str) -> bool:
    """Remove the user row; False when absent."""
    result = session.execute(delete(User).where(User.user_id == user_id))
    return bool(result.rowcount)  # type: ignore[attr-defined]


def ensure_items(session: Session, records: Iterable[ItemRecord]) -> int:
    """Upsert full records (importers, demo); returns how many."""
    rows = [
        (
            r.item_id,
            {
                "title": r.title,
                "categories": list(r.categories),
                "tags": list(r.tags),
                "price": r.price,
                "available": r.available,
                "published_at": r.published_at,
                "attributes": dict(r.attributes),
            },
        )
        for r in records
    ]
    for start in range(0, len(rows), 1000):
        upsert_items(session, rows[start : start + 1000])
    return len(rows)
