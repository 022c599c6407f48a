"""Request and response bodies of the recommendation, similar-item and popular endpoints."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from app.events.schemas import Identifier
from app.rules.spec import RulesIn

MAX_K = 500
MAX_LIST = 1000
Strategy = Literal["personalized", "session", "popular_category", "popular", "similar"]


class Explanation(BaseModel):
    """Why an item is recommended: the history items that contributed most to its score."""

    because: list[str]
    rules: list[str] | None = Field(
        default=None, description="business rules that moved the item, e.g. boost:0, promotion:0, pin"
    )


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

    recommendation_id: str = Field(
        description="unique per answer: report it with impressions and with the events the answer led to"
    )
    user_id: str | None
    model_version: str | None
    strategy: Strategy
    items: list[RecommendedItem]
    placement: str | None = Field(default=None, description="the placement whose rules answered")
    experiment: str | None = Field(default=None, description="the experiment that assigned this user")
    variant: str | None = Field(default=None, description="the experiment's variant that answered")
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
    k: int | None = Field(default=None, ge=1, le=MAX_K, description="10, or the placement's k")
    placement: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
    filter: str | None = Field(default=None, min_length=1, max_length=2000)
    rules: RulesIn | None = None
    category: Identifier | None = None
    exclude: list[Identifier] = Field(default_factory=list, max_length=MAX_LIST)
    include_seen: bool = False
    explain: bool = False


class SimilarOut(BaseModel):
    """Items like `item_id` (`similar`), or popular ones in its category when the model cannot tell."""

    recommendation_id: str
    item_id: str
    model_version: str | None
    strategy: Strategy
    items: list[RecommendedItem]
    placement: str | None = None
    note: str | None = Field(
        default=None, description="a hint when the answer is empty, e.g. an unknown category"
    )


class PopularOut(BaseModel):
    """The most popular visible items of a window (decayed event counts)."""

    recommendation_id: str
    window: str
    category: str | None
    model_version: str | None
    strategy: Strategy
    items: list[RecommendedItem]
    note: str | None = Field(
        default=None, description="a hint when the answer is empty, e.g. an unknown category"
    )
