"""Recommendation ids: unique per answer, and carrying what an impression report needs to be attributed.

Form: `<20 hex random>` alone, or `<20 hex>~<placement>~<experiment>~<variant>` (empty parts allowed) when a
placement or an experiment answered. Placement, experiment and variant names are `[A-Za-z0-9_-]`, so `~` never
occurs inside one. Nothing is written per answer: the id itself says where the answer came from, so an
impression report (which must carry it) is attributed to its experiment variant without a lookup.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

SEPARATOR = "~"


@dataclass(frozen=True, slots=True)
class RecommendationOrigin:
    """Where an answer came from, as its recommendation id says (all None for a plain answer)."""

    placement: str | None = None
    experiment: str | None = None
    variant: str | None = None


def new_recommendation_id(
    placement: str | None = None, experiment: str | None = None, variant: str | None = None
) -> str:
    """A fresh id for one answer (80 random bits), with its origin when it has one."""
    token = secrets.token_hex(10)
    if placement is None and experiment is None:
        return token
    return SEPARATOR.join((token, placement or "", experiment or "", variant or ""))


def origin_of(recommendation_id: str) -> RecommendationOrigin:
    """The origin an id carries; an id of another form (a client's own) has none."""
    parts = recommendation_id.split(SEPARATOR)
    if len(parts) != 4:
        return RecommendationOrigin()
    _, placement, experiment, variant = parts
    return RecommendationOrigin(
        placement or None, experiment or None, (variant or None) if experiment else None
    )
