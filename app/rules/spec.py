"""Business rules as a placement stores them (and a request may add): the JSON shape, its checks, and the
compiled form serving uses.

A placement (`PUT /v1/admin/placements/{name}`) holds a default k, a filter expression, boosts, pins,
promotions, diversity and rotation settings and the strategy that answers. A request may add its own `filter`
(ANDed with the placement's) and `rules` (boosts, pins and promotions are added to the placement's; diversity,
rotation and strategy replace them). Every expression is compiled once (app/rules/expr.py); a bad one is a 422
naming the field and the position in the expression.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field, replace
from typing import Annotated, Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from app.errors import ValidationFailed
from app.events.schemas import Identifier
from app.rules.expr import ExpressionError, Filter, compile_filter

MAX_RULE_K = 500
STRATEGIES = ("personalized", "similar", "session", "popular")
Strategy = Literal["personalized", "similar", "session", "popular"]
NAME_PATTERN = r"^[A-Za-z0-9_-]+$"
Name = Annotated[str, StringConstraints(min_length=1, max_length=64, pattern=NAME_PATTERN)]
Expression = Annotated[str, StringConstraints(min_length=1, max_length=2000)]
SCALAR_FIELDS = ("item_id", "title", "categories", "tags", "price", "available", "published_at")


class BoostIn(BaseModel):
    """Items matching `filter` score higher (or lower): `multiply` multiplies the item's probability under the
    model (its logit gains ln(weight); a popularity count is multiplied), `add` adds `weight` to the score."""

    model_config = ConfigDict(extra="forbid")

    filter: Expression
    weight: float = Field(allow_inf_nan=False, description="multiply: > 0 (below 1 demotes); add: any")
    mode: Literal["multiply", "add"] = "multiply"

    @model_validator(mode="after")
    def _positive_factor(self) -> BoostIn:
        if self.mode == "multiply" and self.weight <= 0:
            raise ValueError("weight: a multiply boost needs a weight > 0 (use a filter to remove items)")
        return self


class PinIn(BaseModel):
    """An item shown at a fixed 1-based position (when it is available and not excluded for the user)."""

    model_config = ConfigDict(extra="forbid")

    item_id: Identifier
    position: int = Field(ge=1, le=MAX_RULE_K)


class PromotionIn(BaseModel):
    """A share of the slots reserved for items matching `filter`, ranked by the model among themselves."""

    model_config = ConfigDict(extra="forbid")

    filter: Expression
    share: float = Field(gt=0, le=1, allow_inf_nan=False)


class DiversityIn(BaseModel):
    """At most `max_per_list` items per value of `field` (each value of a multi-valued field counts); with
    `mmr_lambda`, then a maximal-marginal-relevance re-rank on item vectors (1: relevance only)."""

    model_config = ConfigDict(extra="forbid")

    field: str = Field(default="categories", max_length=200)
    max_per_list: int = Field(ge=1, le=MAX_RULE_K)
    mmr_lambda: float | None = Field(default=None, ge=0, le=1, allow_inf_nan=False)

    @model_validator(mode="after")
    def _known_field(self) -> DiversityIn:
        if self.field not in SCALAR_FIELDS and not (
            self.field.startswith("attributes.") and len(self.field) > len("attributes.")
        ):
            raise ValueError(
                f"field: unknown field {self.field!r}; use one of {', '.join(SCALAR_FIELDS)} or attributes.<name>"
            )
        return self


class RotationIn(BaseModel):
    """Items shown to the user `after` times or more within `window_s` without a click are demoted: their
    probability is multiplied by `factor` (0: after every other candidate)."""

    model_config = ConfigDict(extra="forbid")

    after: int = Field(default=3, ge=1, le=1000)
    window_s: int = Field(default=86400, ge=60, le=90 * 86400)
    factor: float = Field(default=0.0, ge=0, lt=1, allow_inf_nan=False)


class RulesIn(BaseModel):
    """Rules a request adds (query parameter `rules`, JSON): the placement's boosts, pins and promotions are
    kept and these added; diversity, rotation and strategy replace the placement's."""

    model_config = ConfigDict(extra="forbid")

    boosts: list[BoostIn] = Field(default_factory=list, max_length=20)
    pins: list[PinIn] = Field(default_factory=list, max_length=50)
    promotions: list[PromotionIn] = Field(default_factory=list, max_length=10)
    diversity: DiversityIn | None = None
    rotation: RotationIn | None = None
    strategy: Strategy | None = None

    @model_validator(mode="after")
    def _shares(self) -> RulesIn:
        total = sum(p.share for p in self.promotions)
        if total > 1 + 1e-9:
            raise ValueError(f"promotions: shares add up to {total:g}; at most 1 (all the slots)")
        return self


class PlacementIn(RulesIn):
    """A placement as `PUT /v1/admin/placements/{name}` stores it."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "k": 10,
                    "filter": 'price < 50 and attributes.brand != "X"',
                    "boosts": [{"filter": '"sale" in tags', "weight": 2.0}],
                    "pins": [{"item_id": "sku-1", "position": 1}],
                    "promotions": [{"filter": '"house-brand" in tags', "share": 0.2}],
                    "diversity": {"field": "categories", "max_per_list": 3},
                    "rotation": {"after": 3, "window_s": 86400, "factor": 0.0},
                    "strategy": "personalized",
                }
            ]
        },
    )

    k: int = Field(default=10, ge=1, le=MAX_RULE_K)
    filter: Expression | None = None
    strategy: Strategy = "personalized"


class PlacementOut(PlacementIn):
    """A stored placement."""

    name: str
    revision: int


@dataclass(frozen=True, slots=True)
class CompiledBoost:
    """A boost with its expression compiled."""

    filter: Filter
    weight: float
    mode: Literal["multiply", "add"]


@dataclass(frozen=True, slots=True)
class CompiledPromotion:
    """A promotion with its expression compiled."""

    filter: Filter
    share: float


@dataclass(frozen=True, slots=True)
class Rules:
    """The rules of one answer, compiled: what serving applies. `digest` names them in cache keys."""

    filter: Filter | None = None
    boosts: tuple[CompiledBoost, ...] = ()
    pins: tuple[tuple[str, int], ...] = ()
    promotions: tuple[CompiledPromotion, ...] = ()
    diversity: DiversityIn | None = None
    rotation: RotationIn | None = None
    strategy: Strategy = "personalized"
    k: int | None = None  # the placement's default k (a request's k wins)
    digest: str = field(default="")

    @property
    def reranks(self) -> bool:
        """Whether candidates must be re-ranked (anything beyond a filter)."""
        return bool(self.boosts or self.pins or self.promotions or self.diversity or self.rotation)

    def pool(self, k: int, configured: int) -> int:
        """How many candidates to fetch for `k` items: all of k when nothing re-ranks, else a pool."""
        if not self.reranks:
            return k
        return max(4 * k, configured) + len(self.pins)

    def promotion_slots(self, k: int) -> list[int]:
        """Slots each promotion reserves in a list of `k` (rounded up, at most k in all)."""
        out, left = [], k
        for promotion in self.promotions:
            slots = min(left, math.ceil(promotion.share * k - 1e-9))
            out.append(slots)
            left -= slots
        return out


def _compile(text: str, where: str) -> Filter:
    try:
        return compile_filter(text)
    except ExpressionError as exc:
        raise ValidationFailed(
            f"{where}: {exc}", details=[{"loc": where.split("."), "msg": str(exc), "position": exc.position}]
        ) from None


def _compiled(rules: RulesIn, at: str) -> tuple[list[CompiledBoost], list[CompiledPromotion]]:
    boosts = [
        CompiledBoost(_compile(b.filter, f"{at}.boosts.{i}.filter"), b.weight, b.mode)
        for i, b in enumerate(rules.boosts)
    ]
    promotions = [
        CompiledPromotion(_compile(p.filter, f"{at}.promotions.{i}.filter"), p.share)
        for i, p in enumerate(rules.promotions)
    ]
    return boosts, promotions


def _digest(rules: Rules) -> Rules:
    canonical = {
        "f": rules.filter.canonical if rules.filter else None,
        "b": [(b.filter.canonical, b.weight, b.mode) for b in rules.boosts],
        "p": rules.pins,
        "pr": [(p.filter.canonical, p.share) for p in rules.promotions],
        "d": rules.diversity.model_dump() if rules.diversity else None,
        "r": rules.rotation.model_dump() if rules.rotation else None,
        "s": rules.strategy,
    }
    return replace(rules, digest=hashlib.blake2b(orjson.dumps(canonical), digest_size=10).hexdigest())


def compile_placement(placement: PlacementIn, where: str = "body") -> Rules:
    """A placement's rules, compiled; a bad expression is a 422 naming `where` and the field."""
    boosts, promotions = _compiled(placement, where)
    return _digest(
        Rules(
            filter=_compile(placement.filter, f"{where}.filter") if placement.filter else None,
            boosts=tuple(boosts),
            pins=tuple((p.item_id, p.position) for p in placement.pins),
            promotions=tuple(promotions),
            diversity=placement.diversity,
            rotation=placement.rotation,
            strategy=placement.strategy,
            k=placement.k,
        )
    )


def with_request(
    base: Rules | None, request_filter: str | None = None, request_rules: RulesIn | None = None
) -> Rules | None:
    """`base` (a placement's rules, or None) with a request's filter ANDed and its rules merged: boosts, pins
    and promotions are added; diversity, rotation and strategy replace the placement's. None: no rules."""
    if request_filter is None and request_rules is None:
        return base
    rules = base or Rules()
    if request_filter is not None:
        extra = _compile(request_filter, "query.filter")
        combined = extra if rules.filter is None else both_filters(rules.filter, extra)
        rules = replace(rules, filter=combined)
    if request_rules is not None:
        boosts, promotions = _compiled(request_rules, "query.rules")
        rules = replace(
            rules,
            boosts=rules.boosts + tuple(boosts),
            pins=rules.pins + tuple((p.item_id, p.position) for p in request_rules.pins),
            promotions=rules.promotions + tuple(promotions),
            diversity=request_rules.diversity or rules.diversity,
            rotation=request_rules.rotation or rules.rotation,
            strategy=request_rules.strategy or rules.strategy,
        )
        total = sum(p.share for p in rules.promotions)
        if total > 1 + 1e-9:
            msg = f"promotions of the placement and the request add up to a share of {total:g}; at most 1"
            raise ValidationFailed(
                f"query.rules.promotions: {msg}", details=[{"loc": ["query", "rules"], "msg": msg}]
            )
    return _digest(rules)


def both_filters(first: Filter, second: Filter) -> Filter:
    """`first and second`, compiled (memoised: its masks are memoised too)."""
    return compile_filter(f"({first.text}) and ({second.text})")


def placement_from_json(config: dict[str, Any]) -> PlacementIn:
    """A stored placement's config as the model (stored configs were validated when put)."""
    return PlacementIn.model_validate(config)
