"""SQL for the training job queue: enqueue (one open job), claim, heartbeat lease, finish, recovery.

A job is `queued`, then `running` under a lease (worker id + attempt number + a fresh `heartbeat_at`), then
`succeeded` or `failed`. The partial unique index of migration 0003 lets at most one job be open (queued or
running), so concurrent enqueues agree on one job. Claims use `FOR UPDATE SKIP LOCKED` on PostgreSQL and a
conditional UPDATE everywhere, so two workers never hold the same job. No function here commits.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from app.db.tables import TrainingJob, utcnow
from app.records import as_utc

OPEN = ("queued", "running")
TRIGGERS = ("api", "schedule", "cli", "demo")


@dataclass(frozen=True)
class Lease:
    """What a worker holds while it runs a job; every write it makes is conditional on it."""

    job_id: str
    worker_id: str
    attempt: int


@dataclass(frozen=True)
class Recovered:
    """A running job whose worker stopped heartbeating: re-queued, or failed after too many attempts."""

    job_id: str
    status: str
    message: str


def _as_utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return as_utc(ts)


def get_job(session: Session, job_id: str) -> TrainingJob | None:
    """One job by its public id."""
    return session.scalar(select(TrainingJob).where(TrainingJob.job_id == job_id))


def open_job(session: Session) -> TrainingJob | None:
    """The queued or running job, if any."""
    return session.scalar(select(TrainingJob).where(TrainingJob.status.in_(OPEN)).limit(1))


def latest_job(session: Session) -> TrainingJob | None:
    """The most recently created job of any status."""
    return session.scalar(select(TrainingJob).order_by(TrainingJob.id.desc()).limit(1))


def enqueue(
    session: Session,
    *,
    trigger: str,
    reason: str | None,
    max_event_id: int | None,
    params: dict[str, Any] | None = None,
) -> tuple[TrainingJob, bool]:
    """Queue a training job, or return the open one; `(job, created)`. Race-free on both stores."""
    if trigger not in TRIGGERS:
        raise ValueError(f"trigger: {trigger!r} is not one of {', '.join(TRIGGERS)}")
    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    for _ in range(10):
        job_id = uuid.uuid4().hex
        # ON CONFLICT DO NOTHING (no target) also covers the partial unique index on open jobs: a concurrent
        # insert waits for the other transaction, then does nothing and we read the job that won.
        inserted = session.scalar(
            insert(TrainingJob)
            .values(
                job_id=job_id,
                status="queued",
                reason=reason,
                trigger=trigger,
                progress=0.0,
                metrics={},
                attempts=0,
                max_event_id=max_event_id,
                params=params or {},
                created_at=utcnow(),
            )
            .on_conflict_do_nothing()
            .returning(TrainingJob.job_id)
        )
        if inserted is not None:
            job = get_job(session, job_id)
            assert job is not None
            return job, True
        existing = open_job(session)
        if existing is not None:
            return existing, False
        # The open job finished between our insert and our read: try again.
    raise RuntimeError("enqueue: could not insert nor find the open training job after 10 tries")


def claim(session: Session, worker_id: str, job_id: str | None = None) -> Lease | None:
    """Take the oldest queued job (or `job_id`) for `worker_id`; None when there is none to take."""
    stmt = select(TrainingJob.id).where(TrainingJob.status == "queued")
    if job_id is not None:
        stmt = stmt.where(TrainingJob.job_id == job_id)
    stmt = stmt.order_by(TrainingJob.id).limit(1)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    row_id = session.scalar(stmt)
    if row_id is None:
        return None
    now = utcnow()
    result = session.execute(
        update(TrainingJob)
        .where(TrainingJob.id == row_id, TrainingJob.status == "queued")  # atomic on SQLite too
        .values(
            status="running",
            worker_id=worker_id,
            attempts=TrainingJob.attempts + 1,
            heartbeat_at=now,
            started_at=func.coalesce(TrainingJob.started_at, now),
            progress=0.0,
        )
        .execution_options(synchronize_session=False)
    )
    if result.rowcount != 1:  # type: ignore[attr-defined]
        return None
    row = session.execute(
        select(TrainingJob.job_id, TrainingJob.attempts).where(TrainingJob.id == row_id)
    ).one()
    return Lease(job_id=row.job_id, worker_id=worker_id, attempt=int(row.attempts))


def _held(lease: Lease) -> Any:
    return (
        (TrainingJob.job_id == lease.job_id)
        & (TrainingJob.status == "running")
        & (TrainingJob.worker_id == lease.worker_id)
        & (TrainingJob.attempts == lease.attempt)
    )


def heartbeat(
    session: Session, lease: Lease, progress: float | None = None, detail: dict[str, Any] | None = None
) -> bool:
    """Refresh the lease (and the progress and live detail); False when the job is no longer ours."""
    values: dict[str, Any] = {"heartbeat_at": utcnow()}
    if progress is not None:
        values["progress"] = max(0.0, min(1.0, progress))
    if detail is not None:
        values["detail"] = detail
    result = session.execute(
        update(TrainingJob).where(_held(lease)).values(**values).execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def finish(
    session: Session,
    lease: Lease,
    *,
    model_version: str | None,
    metrics: dict[str, Any],
    detail: dict[str, Any] | None = None,
) -> bool:
    """Mark the job succeeded with its version, metrics and final detail; False when the lease was lost."""
    result = session.execute(
        update(TrainingJob)
        .where(_held(lease))
        .values(
            status="succeeded",
            progress=1.0,
            model_version=model_version,
            metrics=metrics,
            **({"detail": detail} if detail is not None else {}),
            error=None,
            finished_at=utcnow(),
            heartbeat_at=utcnow(),
        )
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def fail(session: Session, lease: Lease, error: str) -> bool:
    """Mark the job failed with the reason; False when the lease was lost."""
    result = session.execute(
        update(TrainingJob)
        .where(_held(lease))
        .values(status="failed", error=error, finished_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def release(session: Session, lease: Lease, note: str) -> bool:
    """Give a job back to the queue (a worker stopping on request); the attempt does not count."""
    result = session.execute(
        update(TrainingJob)
        .where(_held(lease))
        .values(status="queued", worker_id=None, attempts=TrainingJob.attempts - 1, progress=0.0, error=note)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1  # type: ignore[attr-defined]


def recover_expired(
    session: Session, *, lease_seconds: float, max_attempts: int, now: datetime | None = None
) -> list[Recovered]:
    """Take back running jobs whose heartbeat is older than the lease: re-queue them, or fail them."""
    now = now or utcnow()
    cutoff = now - timedelta(seconds=lease_seconds)
    stmt = select(
        TrainingJob.id,
        TrainingJob.job_id,
        TrainingJob.attempts,
        TrainingJob.worker_id,
        TrainingJob.heartbeat_at,
    ).where(TrainingJob.status == "running", TrainingJob.heartbeat_at < cutoff)
    if session.get_bind().dialect.name == "postgresql":
        stmt = stmt.with_for_update(skip_locked=True)
    out = []
    for row in session.execute(stmt).all():
        seen = _as_utc(row.heartbeat_at)
        silent = f"worker {row.worker_id} stopped heartbeating (last at {seen:%Y-%m-%dT%H:%M:%SZ})"
        if row.attempts >= max_attempts:
            status, message = "failed", f"{silent}; gave up after {row.attempts} attempt(s)"
            values: dict[str, Any] = {"status": status, "error": message, "finished_at": now}
        else:
            status, message = "queued", f"{silent}; retrying (attempt {row.attempts + 1} of {max_attempts})"
            values = {"status": status, "error": message, "worker_id": None, "progress": 0.0}
        result = session.execute(
            update(TrainingJob)
            .where(
                TrainingJob.id == row.id,
                TrainingJob.status == "running",
                TrainingJob.attempts == row.attempts,
                TrainingJob.heartbeat_at < cutoff,
            )
            .values(**values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:  # type: ignore[attr-defined]
            out.append(Recovered(row.job_id, status, message))
    return out


def job_summary(job: TrainingJob) -> dict[str, Any]:
    """The job as the admin API and `reco train --json` show it."""
    return {
        "job_id": job.job_id,
        "status": job.status,
        "progress": float(job.progress or 0.0),
        "model_version": job.model_version,
        "metrics": dict(job.metrics or {}),
        "params": dict(job.params or {}),
        "detail": dict(job.detail or {}),
        "error": job.error,
        "reason": job.reason,
        "trigger": job.trigger,
        "attempts": job.attempts,
        "created_at": _as_utc(job.created_at),
        "started_at": _as_utc(job.started_at),
        "finished_at": _as_utc(job.finished_at),
    }
