"""One identifier type for every path and query id: no control characters (NUL included), no '/', capped length.

'/' is refused everywhere (also when items, users and events are created): an id holding it could be stored
but never read back through `/v1/items/{item_id}`.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Path, Query

from app.db.tables import ID_LENGTH
from app.events.schemas import ID_PATTERN, NO_CONTROL

__all__ = [
    "ID_LENGTH",
    "ID_PATTERN",
    "NO_CONTROL",
    "ItemIdPath",
    "JobIdPath",
    "UserIdPath",
    "VersionPath",
    "label_query",
]

ItemIdPath = Annotated[
    str, Path(min_length=1, max_length=ID_LENGTH, pattern=ID_PATTERN, description="the item's external id")
]
UserIdPath = Annotated[
    str, Path(min_length=1, max_length=ID_LENGTH, pattern=ID_PATTERN, description="the user's external id")
]
JobIdPath = Annotated[
    str,
    Path(
        min_length=1, max_length=64, pattern=ID_PATTERN, description="the id POST /v1/admin/retrain returned"
    ),
]
VersionPath = Annotated[
    str,
    Path(
        min_length=1, max_length=64, pattern=ID_PATTERN, description="a model version, e.g. 20261127-101500"
    ),
]


def label_query(max_length: int = ID_LENGTH, description: str | None = None) -> object:
    """A query filter (category, window, ...): no control characters, capped length."""
    return Query(min_length=1, max_length=max_length, pattern=NO_CONTROL, description=description)
