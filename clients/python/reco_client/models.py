"""Typed answers. Each class names the OpenAPI schema it mirrors (`SCHEMA`); the repository's test
`tests/clients/test_python_client.py::test_models_match_the_served_openapi` compares every field with the
schema the server serves at `/openapi.json`, so the client cannot drift from the server unnoticed.

Fields the server adds later are ignored (a newer server keeps working with an older client)."""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")


def parse(cls: type[T], data: Any) -> T:
    """Build `cls` (a dataclass of this module) from a JSON object, recursively."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if f.name in data:
            values[f.name] = _convert(hints[f.name], data[f.name])
    return cls(**values)


def _convert(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if arg is not type(None):
                return _convert(arg, value)
    if origin is list:
        (arg,) = typing.get_args(hint)
        return [_convert(arg, v) for v in value]
    if dataclasses.is_dataclass(hint) and isinstance(value, dict):
        return parse(hint, value)  # type: ignore[arg-type]
    return value


@dataclass(frozen=True)
class Rejection:
    SCHEMA: ClassVar[str] = "Rejection"
    index: int
    error: str
    loc: list[Any] = field(default_factory=list)


@dataclass(frozen=True)
class IngestResult:
    """What `POST /v1/events` (or `/v1/items`) did with a batch."""

    SCHEMA: ClassVar[str] = "IngestResult"
    accepted: int
    duplicates: int
    rejected: list[Rejection]


@dataclass(frozen=True)
class Explanation:
    SCHEMA: ClassVar[str] = "Explanation"
    because: list[str]
    rules: list[str] | None = None


@dataclass(frozen=True)
class RecommendedItem:
    SCHEMA: ClassVar[str] = "RecommendedItem"
    item_id: str
    score: float
    explanation: Explanation | None = None


@dataclass(frozen=True)
class Recommendations:
    """A user's (or an anonymous session's) recommendations. Report impressions and clicks with
    `recommendation_id` (see `Reco.click`)."""

    SCHEMA: ClassVar[str] = "RecommendationsOut"
    recommendation_id: str
    user_id: str | None
    model_version: str | None
    strategy: str
    items: list[RecommendedItem]
    placement: str | None = None
    experiment: str | None = None
    variant: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Similar:
    SCHEMA: ClassVar[str] = "SimilarOut"
    recommendation_id: str
    item_id: str
    model_version: str | None
    strategy: str
    items: list[RecommendedItem]
    placement: str | None = None
    note: str | None = None


@dataclass(frozen=True)
class Popular:
    SCHEMA: ClassVar[str] = "PopularOut"
    recommendation_id: str
    window: str
    category: str | None
    model_version: str | None
    strategy: str
    items: list[RecommendedItem]
    note: str | None = None


@dataclass(frozen=True)
class Item:
    SCHEMA: ClassVar[str] = "ItemOut"
    item_id: str
    title: str | None
    categories: list[str]
    tags: list[str]
    price: float | None
    available: bool
    published_at: str | None
    attributes: dict[str, Any]
    created_at: str
    updated_at: str


@dataclass(frozen=True)
class ItemPage:
    SCHEMA: ClassVar[str] = "ItemPage"
    items: list[Item]
    next_cursor: str | None


@dataclass(frozen=True)
class Event:
    SCHEMA: ClassVar[str] = "EventOut"
    event_id: str | None
    item_id: str
    type: str
    value: float | None
    timestamp: str


@dataclass(frozen=True)
class User:
    SCHEMA: ClassVar[str] = "UserOut"
    user_id: str
    attributes: dict[str, Any]
    created_at: str
    event_count: int
    latest_events: list[Event]


@dataclass(frozen=True)
class Job:
    SCHEMA: ClassVar[str] = "JobOut"
    job_id: str
    status: str
    progress: float
    model_version: str | None
    metrics: dict[str, Any]
    error: str | None
    trigger: str
    attempts: int
    created_at: str | None
    started_at: str | None
    finished_at: str | None
    params: dict[str, Any] = field(default_factory=dict)
    detail: dict[str, Any] = field(default_factory=dict)
    model_status: str | None = None
    reason: str | None = None


@dataclass(frozen=True)
class Model:
    SCHEMA: ClassVar[str] = "ModelOut"
    version: str
    status: str
    reason: str | None
    metrics: dict[str, Any]
    training_interactions: int | None
    data: dict[str, Any]
    timings: dict[str, Any]
    job_id: str | None
    created_at: str | None
    activated_at: str | None
    artifact: bool


@dataclass(frozen=True)
class ModelList:
    SCHEMA: ClassVar[str] = "ModelList"
    active: str | None
    models: list[Model]


@dataclass(frozen=True)
class Activated:
    SCHEMA: ClassVar[str] = "ActivateOut"
    version: str
    status: str
    previous: str | None
    serving: str | None


ANSWERS: tuple[type, ...] = (
    Rejection,
    IngestResult,
    Explanation,
    RecommendedItem,
    Recommendations,
    Similar,
    Popular,
    Item,
    ItemPage,
    Event,
    User,
    Job,
    Model,
    ModelList,
    Activated,
)
