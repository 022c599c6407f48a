"""Request and response bodies of /v1/items and /v1/users."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from app.events.schemas import NO_NUL, Identifier


def _utc(value: datetime) -> datetime:
    """Stored times are UTC; SQLite hands them back naive."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value


UtcDatetime = Annotated[datetime, AfterValidator(_utc)]
Label = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128, pattern=NO_NUL)]


class ItemFields(BaseModel):
    """Catalog fields; every one optional. Fields left out keep their stored value."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "title": "Trail runner 2",
                    "categories": ["shoes"],
                    "tags": ["running"],
                    "price": 59.9,
                    "available": True,
                    "published_at": "2026-11-01T00:00:00Z",
                    "attributes": {"brand": "acme"},
                }
            ]
        },
    )

    title: Annotated[str, StringConstraints(max_length=1000, pattern=NO_NUL)] | None = None
    categories: list[Label] | None = Field(default=None, max_length=100)
    tags: list[Label] | None = Field(default=None, max_length=200)
    price: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    available: bool = Field(default=True, description="null is refused: send true or false")
    published_at: datetime | None = None
    attributes: dict[str, Any] | None = None


class ItemIn(ItemFields):
    """An item of a batch upsert."""

    item_id: Identifier


class ItemBatchIn(BaseModel):
    """A batch of items (at most RECO_MAX_BATCH)."""

    items: list[ItemIn]


class ItemOut(BaseModel):
    """A stored item."""

    item_id: str
    title: str | None
    categories: list[str]
    tags: list[str]
    price: float | None
    available: bool
    published_at: UtcDatetime | None
    attributes: dict[str, Any]
    created_at: UtcDatetime
    updated_at: UtcDatetime


class ItemPage(BaseModel):
    """One page of items; pass `next_cursor` back as `cursor` for the next page (null: no more)."""

    items: list[ItemOut]
    next_cursor: str | None


class UserIn(BaseModel):
    """User attributes."""

    model_config = ConfigDict(extra="forbid")

    attributes: dict[str, Any] = Field(default_factory=dict)


class EventOut(BaseModel):
    """A stored event, as shown with its user."""

    event_id: str | None
    item_id: str
    type: str
    value: float | None
    timestamp: UtcDatetime


class UserOut(BaseModel):
    """A user, its event count and its latest events (newest first)."""

    user_id: str
    attributes: dict[str, Any]
    created_at: UtcDatetime
    event_count: int
    latest_events: list[EventOut]
