"""When the worker queues a training job by itself: every N minutes and/or after M new events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy.orm import Session

from app.db.tables import TrainingJob
from app.events.repository import max_event_id
from app.registry import jobs
from app.settings import Settings


def due_reason(
    latest: TrainingJob | None,
    newest_event: int,
    now: datetime,
    every_minutes: float | None,
    after_events: int | None,
) -> str | None:
    """Why a job is due now, or None. Nothing is due without events newer than the last job saw."""
    seen = (latest.max_event_id or 0) if latest is not None else 0
    fresh = newest_event - seen
    if fresh <= 0 or (every_minutes is None and after_events is None):
        return None
    if after_events is not None and fresh >= after_events:
        return f"schedule: {fresh} new events (threshold {after_events})"
    if every_minutes is not None:
        if latest is None:
            return f"schedule: every {every_minutes:g} min, no model trained yet"
        created = latest.created_at
        created = created.replace(tzinfo=UTC) if created.tzinfo is None else created
        if now - created >= timedelta(minutes=every_minutes):
            return f"schedule: every {every_minutes:g} min, {fresh} new events"
    return None


def maybe_enqueue(session: Session, settings: Settings, now: datetime) -> TrainingJob | None:
    """Queue a scheduled job when one is due and none is open; returns the new job. The caller commits."""
    if settings.retrain_every_minutes is None and settings.retrain_after_events is None:
        return None
    if jobs.open_job(session) is not None:
        return None
    newest = max_event_id(session)
    reason = due_reason(
        jobs.latest_job(session), newest, now, settings.retrain_every_minutes, settings.retrain_after_events
    )
    if reason is None:
        return None
    job, created = jobs.enqueue(session, trigger="schedule", reason=reason, max_event_id=newest)
    return job if created else None
