"""Request and response bodies of /v1/events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from app.db.tables import ID_LENGTH

NO_NUL = r"^[^\x00]*$"  # PostgreSQL text cannot hold NUL: refuse it here rather than fail in the store
Identifier = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=ID_LENGTH, pattern=NO_NUL)
]


class EventIn(BaseModel):
    """One interaction as a client sends it."""

    model_config = ConfigDict(
        extra="ignore",
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
    item_id: Identifier
    type: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=32, pattern=NO_NUL)
    ] = Field(description="view, click, add_to_cart, purchase, rating, or a type added in configuration")
    value: float | None = Field(default=None, allow_inf_nan=False, description="rating value, quantity, ...")
    timestamp: datetime | None = Field(default=None, description="ISO 8601; defaults to the time of receipt")


class EventBatchIn(BaseModel):
    """A batch of events (at most RECO_MAX_BATCH, 5,000 by default)."""

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
