"""SQLAlchemy 2 tables; Alembic migrations under migrations/ create them."""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

ID_LENGTH = 256


def utcnow() -> datetime:
    """Timezone-aware now (Python-side defaults keep SQLite and PostgreSQL alike)."""
    return datetime.now(UTC)


NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments INTEGER PRIMARY KEY; BigInteger elsewhere.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map = {dict[str, Any]: JSON, list[str]: JSON}


class Item(Base):
    """A catalog item; `deleted` hides it from every answer while its events stay."""

    __tablename__ = "items"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    item_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    title: Mapped[str | None] = mapped_column(Text)
    categories: Mapped[list[str]] = mapped_column(JSON, default=list)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    price: Mapped[float | None] = mapped_column(Float)
    available: Mapped[bool] = mapped_column(Boolean, default=True)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False)
    published_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class User(Base):
    """A user known to the service (created on the fly by events)."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH), unique=True)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


EVENT_PARTITION = re.compile(r"^events_(p[0-9]{6}|default)$")
"""Names of the monthly partitions of `events` on PostgreSQL (`events_p202612`) and of its DEFAULT partition
(migration 0009, app/db/partitions.py): created at run time, so no table class declares them."""


def only_on(dialect: str, **info: Any) -> dict[str, Any]:
    """`info` of a schema object that exists on one dialect only (what `include_object` reads)."""
    return {"dialects": (dialect,), **info}


def include_object_for(dialect: str) -> Callable[..., bool]:
    """An Alembic `include_object` hook for `dialect`: objects declared for another dialect are left out of
    comparisons, and so are the event partitions (run-time tables, EVENT_PARTITION)."""

    def include(obj: Any, name: str | None, type_: str, reflected: bool, compare_to: Any) -> bool:
        if type_ == "table" and reflected and name and EVENT_PARTITION.match(name):
            return False
        dialects = getattr(obj, "info", {}).get("dialects")
        return dialects is None or dialect in dialects

    return include


class Event(Base):
    """An interaction; append-only. `event_id` is stored once when given (idempotent retries).

    SQLite: one table, `event_id` unique by its index. PostgreSQL (migration 0009): the table is range-partitioned
    by `ts` (monthly, app/db/partitions.py), its primary key is (id, ts), and event ids are made unique by the
    `event_ids` table, which every insert path claims first (a partitioned table's unique index would have to
    include `ts`, and a retry may carry another timestamp).
    """

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    event_id: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    item_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    type: Mapped[str] = mapped_column(String(32))
    value: Mapped[float | None] = mapped_column(Float)
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The answer the event came from (its `recommendation_id`), when the client says so (migration 0007).
    recommendation_id: Mapped[str | None] = mapped_column(String(ID_LENGTH), nullable=True)

    __table_args__ = (
        Index("uq_events_event_id", "event_id", unique=True, info=only_on("sqlite")).ddl_if(dialect="sqlite"),
        Index("ix_events_user_ts", "user_id", "ts"),
        Index("ix_events_recommendation_id", "recommendation_id"),
        Index("ix_events_item_id", "item_id", "type"),  # the dashboard's item inspector (migration 0008)
    )


class EventId(Base):
    """PostgreSQL only (migration 0009): every event_id stored in `events`, once; inserts claim an id here
    (`ON CONFLICT DO NOTHING RETURNING`) and store only the events whose id they claimed, in one transaction.
    Erasure and retention delete the ids of the events they delete."""

    __tablename__ = "event_ids"
    __table_args__ = {"info": only_on("postgresql")}

    event_id: Mapped[str] = mapped_column(String(ID_LENGTH), primary_key=True)


class EventCount(Base):
    """Events stored per minute (of their timestamp) and type: a rollup ingestion keeps in the same
    transaction as the events (migration 0008), so the dashboard's charts never scan the event table.

    Append-only deltas (one row per batch, minute and type; negative for an erasure), summed on read:
    concurrent ingest transactions never wait on a shared (minute, type) row."""

    __tablename__ = "event_counts"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    bucket_start: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    type: Mapped[str] = mapped_column(String(32))
    count: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    # Settled deltas are folded into one compacted row per (minute, type) by a background pass
    # (app/events/repository.py `compact_event_counts`), so a day's chart reads at most 1,440 x types rows.
    compacted: Mapped[bool] = mapped_column(Boolean, nullable=False, default=False)

    __table_args__ = (
        Index(
            "uq_event_counts_compacted",
            "bucket_start",
            "type",
            unique=True,
            postgresql_where=text("compacted"),
            sqlite_where=text("compacted"),
        ),
    )


class DashboardSecret(Base):
    """One row: the secret that signs dashboard session cookies when RECO_DASHBOARD_SECRET is unset, made
    by the first process that needed it (migration 0008)."""

    __tablename__ = "dashboard_secret"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    secret: Mapped[str] = mapped_column(String(128), nullable=False)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class ApiKey(Base):
    """An API key, stored as its SHA-256; the key itself is shown once at creation."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    name: Mapped[str | None] = mapped_column(String(ID_LENGTH))
    scopes: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # `secret` (server side) or `publishable` (safe in page source: events and recommendations only)
    kind: Mapped[str] = mapped_column(String(16), default="secret", server_default="secret")
    allowed_origins: Mapped[str | None] = mapped_column(Text)  # publishable: comma-separated origins
    rate_limits: Mapped[str | None] = mapped_column(
        String(512)
    )  # this key's own limits (RECO_RATE_LIMITS form)


class ModelVersion(Base):
    """A trained model version; its files live in RECO_ARTIFACT_DIR/<version>. At most one is `active`."""

    __tablename__ = "model_versions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # active | candidate | rejected | retired
    reason: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    data_stats: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    job_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    activated_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class TrainingJob(Base):
    """A queued or finished training job; workers claim queued rows and keep `heartbeat_at` fresh."""

    __tablename__ = "training_jobs"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(64), unique=True)
    status: Mapped[str] = mapped_column(String(16), index=True)  # queued | running | succeeded | failed
    reason: Mapped[str | None] = mapped_column(Text)
    trigger: Mapped[str] = mapped_column(String(32), default="api")  # api | schedule | cli
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    model_version: Mapped[str | None] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # What the request asked for ({"mode": "full" | "incremental", "time_budget_s": ...}; migration 0005).
    params: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Live state while running (stage, epoch, ETA) and the run's data report once done (migration 0005).
    detail: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    error: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker_id: Mapped[str | None] = mapped_column(String(128))
    max_event_id: Mapped[int | None] = mapped_column(
        BigInteger
    )  # newest event when enqueued (migration 0003)
    heartbeat_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CacheFence(Base):
    """One row: a counter raised whenever a cache write that an acknowledged change needed was missed.

    Every API process reads it every few hundred milliseconds; before serving anything from the cache it makes
    the cache's copy current, which bumps the cache epoch (so no answer computed before the miss is served).
    """

    __tablename__ = "cache_fence"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, nullable=False, default=0)
    raised_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class Placement(Base):
    """A named serving configuration (`home`, `cart`, ...): default k, filter, boosts, pins, promotions,
    diversity, rotation and strategy, as the admin API stored it (migration 0007)."""

    __tablename__ = "placements"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    config: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    revision: Mapped[int] = mapped_column(BigInteger, default=1)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Experiment(Base):
    """An A/B test splitting one placement's traffic between variants (migration 0007).

    `variants` is the list as posted ([{"name", "share", "model_version" | "strategy" | "placement"}]); once
    stopped, `winner` answers all traffic of the placement.
    """

    __tablename__ = "experiments"

    experiment_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    placement: Mapped[str] = mapped_column(String(64), index=True)
    variants: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), default="running")  # running | stopped
    winner: Mapped[str | None] = mapped_column(String(64))
    attribution_window_s: Mapped[int] = mapped_column(Integer, default=86400)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    stopped_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow, index=True)


class Impression(Base):
    """One item shown to a user in one answer (`recommendation_id`), as the client reported it
    (migration 0007). Stored once per (recommendation_id, item_id): a report sent twice counts once."""

    __tablename__ = "impressions"

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    recommendation_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    user_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    item_id: Mapped[str] = mapped_column(String(ID_LENGTH))
    position: Mapped[int] = mapped_column(Integer)  # 1-based place in the list shown
    placement: Mapped[str | None] = mapped_column(String(64))
    experiment: Mapped[str | None] = mapped_column(String(64))
    variant: Mapped[str | None] = mapped_column(String(64))
    ts: Mapped[datetime] = mapped_column(DateTime(timezone=True))

    __table_args__ = (
        Index("uq_impressions_rec_item", "recommendation_id", "item_id", unique=True),
        Index("ix_impressions_user_ts", "user_id", "ts"),
        Index("ix_impressions_experiment", "experiment", "variant"),
        Index("ix_impressions_item_id", "item_id"),  # the dashboard's item inspector (migration 0008)
    )
