"""SQL for model versions. The API reads the active version; the trainer and the admin routes write."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db.tables import ModelVersion, utcnow


def active_version(session: Session) -> str | None:
    """The version every API process should serve, or None before the first model."""
    return session.scalar(select(ModelVersion.version).where(ModelVersion.status == "active").limit(1))


def get_version(session: Session, version: str) -> ModelVersion | None:
    """One version row."""
    return session.scalar(select(ModelVersion).where(ModelVersion.version == version))


def list_versions(session: Session) -> list[ModelVersion]:
    """Every version, newest first."""
    return list(session.scalars(select(ModelVersion).order_by(ModelVersion.id.desc())))


def activate(session: Session, version: str) -> None:
    """Make `version` the only active one (the previous active becomes `retired`). The caller commits."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.status == "active", ModelVersion.version != version)
        .values(status="retired")
    )
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.version == version)
        .values(status="active", activated_at=utcnow(), reason=None)
    )
