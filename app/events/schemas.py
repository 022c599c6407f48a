"""Request and response bodies of /v1/events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from app.db.tables import ID_LENGTH

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the store
NO_CONTROL = r"^[^\x00-\x1f\x7f]*$"  # free text filters: no NUL nor other control characters
# ids: no control characters and no '/' (an id with '/' could be created but never read by its path)
ID_PATTERN = r"^[^\x00-\x1f\x7f/]*$"
Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=ID_LENGTH, pattern=ID_PATTERN)
]


MAX_IMPRESSION_ITEMS = 500  # an answer holds at most MAX_K (500) items
IMPRESSION = "impression"  # items shown in an answer: stored in the impressions table, not as events


class EventIn(BaseModel):
    """One interaction as a client sends it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "event_id": "e-123",
                    "user_id": "u42",
                    "item_id": "sku-9",
                    "type": "purchase",
                    "value": 1.0,
                    "timestamp": "2026-11-27T10:00:00Z",
                }
            ]
        },
    )

    event_id: Identifier | None = Field(
        default=None, description="idempotency key: stored once however often sent"
    )
    user_id: Identifier
    item_id: Identifier | None = Field(
        default=None, description="the item acted on; required for every type but `impression`"
    )
    type: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32, pattern=NO_NUL)
    ] = Field(description="view, click, add_to_cart, purchase, rating, or a type added in configuration")
    value: float | None = Field(default=None, allow_inf_nan=False, description="rating value, quantity, ...")
    timestamp: datetime | None = Field(default=None, description="ISO 8601; defaults to the time of receipt")
    recommendation_id: Identifier | None = Field(
        default=None,
        description="the answer this event came from (its `recommendation_id`): attributes clicks and purchases "
        "to it; required for `impression`",
    )
    items: list[Identifier] | None = Field(
        default=None,
        max_length=MAX_IMPRESSION_ITEMS,
        description="`impression` only: the items shown, in the order shown (position 1 first)",
    )

    @field_validator("timestamp")
    @classmethod
    def _in_utc_range(cls, value: datetime | None) -> datetime | None:
        # 0001-01-01T00:00:00+01:00 parses but is before year 1 in UTC: converting it would overflow
        if value is not None and value.tzinfo is not None:
            try:
                value.astimezone(UTC)
            except OverflowError:
                raise ValueError("must be between years 1 and 9999 in UTC") from None
        return value


class EventBatchIn(BaseModel):
    """A batch of events (at most RECO_MAX_BATCH, 5,000 by default)."""

    model_config = ConfigDict(extra="forbid")

    events: list[EventIn]


class Rejection(BaseModel):
    """Why one event of a batch was not stored."""

    index: int
    error: str = Field(description="`field: what to change`")
    loc: list[str | int] = Field(default_factory=list)


class IngestResult(BaseModel):
    """Outcome of a batch: stored, already stored (same event_id), rejected."""

    accepted: int
    duplicates: int
    rejected: list[Rejection]
