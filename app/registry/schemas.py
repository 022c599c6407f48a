"""Request and response bodies of the admin API (model versions and training jobs)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class RetrainIn(BaseModel):
    """Body of POST /v1/admin/retrain (optional)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"reason": "catalog refresh"}]})

    reason: str | None = Field(default=None, max_length=500, description="why; shown on the job")
    mode: Literal["full", "incremental"] | None = Field(
        default=None,
        description="incremental: continue from the active version's weights on the new events plus a replay "
        "sample; full: from scratch. Default: incremental when a compatible active version exists (and a full "
        "retrain is not due by RECO_RETRAIN_FULL_EVERY)",
    )
    time_budget_s: float | None = Field(
        default=None,
        gt=0,
        le=7 * 86400,
        description="this job's training time budget (default RECO_TRAIN_TIME_BUDGET_S)",
    )


class JobOut(BaseModel):
    """A training job and how far it got."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "job_id": "5f0c8a4e9b2d4c1f8e7a6b5c4d3e2f10",
                    "status": "succeeded",
                    "progress": 1.0,
                    "model_version": "20261127-101500",
                    "metrics": {
                        "valid_NDCG@10": 0.118,
                        "gate": {"accepted": True, "reason": "first model"},
                        "cleaning": {
                            "rules": {
                                "event_types": ["add_to_cart", "click", "purchase", "rating", "view"],
                                "bot_events_per_minute": 120,
                                "bot_window_s": 60.0,
                                "repeat_window_s": 5.0,
                                "max_events_per_user": 10000,
                                "max_events_per_item": 0,
                            },
                            "read": 120500,
                            "dropped": {
                                "types": {"events": 0, "by_type": {}},
                                "bot_users": {"users": 1, "events": 480},
                                "repeats": {"events": 20},
                                "user_cap": {"users": 0, "events": 0},
                                "item_cap": {"items": 0, "events": 0},
                            },
                            "kept": 120000,
                            "seconds": 0.05,
                        },
                    },
                    "error": None,
                    "model_status": "active",
                }
            ]
        }
    )

    job_id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    progress: float = Field(description="0 to 1")
    model_version: str | None = Field(description="the version this job produced")
    metrics: dict[str, Any] = Field(
        description="offline validation metrics, the quality gate's verdict (`gate`) and what data cleaning "
        "dropped before training (`cleaning`: the rules used, events read, dropped per rule, kept)"
    )
    params: dict[str, Any] = Field(default_factory=dict, description="what was asked: mode, time_budget_s")
    detail: dict[str, Any] = Field(
        default_factory=dict,
        description="while running: stage, epoch, epochs, loss, valid NDCG@10, elapsed_s, eta_s; when done: "
        "mode run, why training stopped, what data cleaning dropped",
    )
    error: str | None = Field(description="why it failed (or why it was retried)")
    model_status: str | None = Field(default=None, description="the produced version's status now")
    reason: str | None = None
    trigger: str
    attempts: int
    created_at: datetime | None
    started_at: datetime | None
    finished_at: datetime | None


class ModelOut(BaseModel):
    """One model version with its offline metrics, training data size and status."""

    version: str
    status: Literal["active", "candidate", "rejected", "retired"]
    reason: str | None = Field(description="the quality gate's verdict or why it left service")
    metrics: dict[str, Any]
    training_interactions: int | None = Field(description="interactions the version was trained on")
    data: dict[str, Any] = Field(description="training data statistics")
    timings: dict[str, Any] = Field(description="seconds per stage")
    job_id: str | None
    created_at: datetime | None
    activated_at: datetime | None
    artifact: bool = Field(description="whether its files are still on disk (retention deletes old ones)")


class ModelList(BaseModel):
    """Every model version, newest first."""

    active: str | None
    models: list[ModelOut]


class ActivateOut(BaseModel):
    """Answer of POST /v1/admin/models/{version}/activate."""

    version: str
    status: Literal["active"]
    previous: str | None = Field(description="the version that was active before")
    serving: str | None = Field(
        description="the version this API process serves now (others follow within seconds)"
    )
