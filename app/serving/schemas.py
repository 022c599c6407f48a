"""Request and response bodies of the recommendation, similar-item and popular endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.events.schemas import Identifier

MAX_K = 500
MAX_LIST = 1000
Strategy = Literal["personalized", "popular_category", "popular", "similar"]


class Explanation(BaseModel):
    """Why an item is recommended: the history items that contributed most to its score."""

    because: list[str]


class RecommendedItem(BaseModel):
    """One recommended item with its score (inner product, or decayed popularity for fallbacks)."""

    item_id: str
    score: float
    explanation: Explanation | None = Field(default=None, description="only with explain=true")


class RecommendationsOut(BaseModel):
    """A recommendation answer; `strategy` says which step of the fallback chain answered."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "user_id": "u42",
                    "model_version": "20261127-101500",
                    "strategy": "personalized",
                    "items": [
                        {"item_id": "sku-7", "score": 3.12, "explanation": {"because": ["sku-9", "sku-2"]}}
                    ],
                }
            ]
        }
    )

    user_id: str | None
    model_version: str | None
    strategy: Strategy
    items: list[RecommendedItem]
    note: str | None = Field(
        default=None, description="a hint when the answer is empty, e.g. an unknown category"
    )


class SessionIn(BaseModel):
    """An anonymous session: the items it just saw, oldest first."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "recent_items": ["sku-1", "sku-5"],
                    "k": 10,
                    "category": None,
                    "exclude": [],
                    "explain": False,
                }
            ]
        },
    )

    recent_items: list[Identifier] = Field(default_factory=list, max_length=MAX_LIST)
    k: int = Field(default=10, ge=1, le=MAX_K)
    category: Identifier | None = None
    exclude: list[Identifier] = Field(default_factory=list, max_length=MAX_LIST)
    include_seen: bool = False
    explain: bool = False


class SimilarOut(BaseModel):
    """Items like `item_id` (`similar`), or popular ones in its category when the model cannot tell."""

    item_id: str
    model_version: str | None
    strategy: Strategy
    items: list[RecommendedItem]
    note: str | None = Field(
        default=None, description="a hint when the answer is empty, e.g. an unknown category"
    )


class PopularOut(BaseModel):
    """The most popular visible items of a window (decayed event counts)."""

    window: str
    category: str | None
    model_version: str | None
    strategy: Strategy
    items: list[RecommendedItem]
    note: str | None = Field(
        default=None, description="a hint when the answer is empty, e.g. an unknown category"
    )
