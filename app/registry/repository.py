"""SQL for model versions. The API reads the active version; the trainer and the admin routes write."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from app.db.tables import ModelVersion, utcnow

STATUSES = ("active", "candidate", "rejected", "retired")
# Key of the PostgreSQL advisory lock that serialises activations and artifact deletions.
_REGISTRY_LOCK = 0x5245_434F_0001


def active_version(session: Session) -> str | None:
    """The version every API process should serve, or None before the first model."""
    return session.scalar(select(ModelVersion.version).where(ModelVersion.status == "active").limit(1))


def active_row(session: Session) -> ModelVersion | None:
    """The active version's row, or None."""
    return session.scalar(select(ModelVersion).where(ModelVersion.status == "active").limit(1))


def get_version(session: Session, version: str) -> ModelVersion | None:
    """One version row."""
    return session.scalar(select(ModelVersion).where(ModelVersion.version == version))


def list_versions(session: Session) -> list[ModelVersion]:
    """Every version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def lock_registry(session: Session) -> None:
    """Serialise writers of the active version until the transaction ends (PostgreSQL advisory lock).

    SQLite serialises writers by itself; the partial unique index of migration 0003 backs both stores.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(_REGISTRY_LOCK)))


def add_version(
    session: Session,
    version: str,
    *,
    metrics: dict[str, Any],
    data_stats: dict[str, Any],
    timings: dict[str, Any],
    job_id: str | None,
    status: str = "candidate",
    reason: str | None = None,
) -> ModelVersion:
    """Register a trained version (a `candidate` until the gate decides). The caller commits."""
    if status not in STATUSES:
        raise ValueError(f"status: {status!r} is not one of {', '.join(STATUSES)}")
    row = ModelVersion(
        version=version,
        status=status,
        reason=reason,
        metrics=metrics,
        data_stats=data_stats,
        timings=timings,
        job_id=job_id,
    )
    session.add(row)
    session.flush()
    return row


def set_status(session: Session, version: str, status: str, reason: str | None) -> None:
    """Mark a version `candidate`, `rejected` or `retired` with the reason (use `activate` for active)."""
    if status not in STATUSES or status == "active":
        raise ValueError(f"status: {status!r} must be candidate, rejected or retired")
    session.execute(
        update(ModelVersion).where(ModelVersion.version == version).values(status=status, reason=reason)
    )


def activate(session: Session, version: str, reason: str | None = None) -> str | None:
    """Make `version` the only active one (the previous active becomes `retired`); returns the previous.

    Takes the registry lock first, so concurrent activations cannot leave two active rows. The caller commits.
    """
    lock_registry(session)
    previous = active_version(session)
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.status == "active", ModelVersion.version != version)
        .values(status="retired", reason=f"replaced by {version}")
    )
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version)
        .values(status="active", activated_at=utcnow(), reason=reason)
    )
    return previous if previous != version else None
