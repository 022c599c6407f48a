"""Request and response bodies of /v1/admin/experiments."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from app.experiments.assign import validate_shares
from app.rules.spec import Name, Strategy


class ChangeIn(BaseModel):
    """What a variant changes: at most one of model_version, strategy, placement (none: the placement as it
    is, the usual control)."""

    model_config = ConfigDict(extra="forbid")

    model_version: str | None = Field(default=None, min_length=1, max_length=64)
    strategy: Strategy | None = None
    placement: Name | None = None

    @model_validator(mode="after")
    def _one_change(self) -> ChangeIn:
        changes = [n for n in ("model_version", "strategy", "placement") if getattr(self, n) is not None]
        if len(changes) > 1:
            raise ValueError(f"a variant changes one thing; got {', '.join(changes)}: split it into variants")
        return self


class VariantIn(ChangeIn):
    """One arm of an experiment."""

    name: Name
    share: float = Field(gt=0, le=1, allow_inf_nan=False)


class ExperimentIn(BaseModel):
    """An A/B test on one placement; the first variant is the control the others are compared with."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "experiment_id": "home-new-model",
                    "placement": "home",
                    "variants": [
                        {"name": "control", "share": 0.5},
                        {"name": "candidate", "share": 0.5, "model_version": "20261202-101500"},
                    ],
                }
            ]
        },
    )

    experiment_id: Name
    placement: Name
    variants: list[VariantIn] = Field(min_length=2, max_length=10)
    attribution_window_s: int = Field(
        default=86400, ge=60, le=30 * 86400, description="a click counts for an answer shown this long before"
    )

    @model_validator(mode="after")
    def _shares(self) -> ExperimentIn:
        validate_shares([(v.name, v.share) for v in self.variants])
        return self


class StopIn(BaseModel):
    """Stop an experiment: all of the placement's traffic goes to `winner`."""

    model_config = ConfigDict(extra="forbid")

    winner: Name


class ExperimentOut(BaseModel):
    """An experiment, and its report when asked for."""

    experiment_id: str
    placement: str
    variants: list[dict[str, Any]]
    status: str
    winner: str | None
    attribution_window_s: int
    started_at: datetime
    stopped_at: datetime | None
    report: dict[str, Any] | None = None


class ReplayIn(BaseModel):
    """An offline check: how a candidate would have ranked what users clicked on the placement lately."""

    model_config = ConfigDict(extra="forbid")

    placement: Name
    candidate: ChangeIn
    days: float = Field(default=7, gt=0, le=90, allow_inf_nan=False)
    k: int | None = Field(default=None, ge=1, le=500, description="list length (default: the placement's k)")
    max_answers: int = Field(default=5000, ge=1, le=100_000, description="the latest answers with clicks")
    attribution_window_s: int = Field(default=86400, ge=60, le=30 * 86400)
