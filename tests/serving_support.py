"""Serving test helpers: tiny models trained in seconds on a synthetic shop, registered like the trainer does."""

from __future__ import annotations

import functools
import threading
from datetime import UTC, datetime
from pathlib import Path

import torch
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import save_version
from app.catalog.service import load_items
from app.db.engine import run_transaction
from app.db.tables import ModelVersion
from app.events.service import load_events
from app.ml.config import ModelConfig, TrainConfig
from app.ml.data import InteractionLog
from app.ml.synthetic import category_world
from app.ml.train import FitResult, fit
from app.records import EventRecord, ItemRecord
from app.registry.repository import activate

TINY = TrainConfig(
    model=ModelConfig(
        d=16, max_len=20, layers=1, heads=2, dropout=0.1, attn_dropout=0.1, feature_buckets=512
    ),
    epochs=60,
    batch_size=32,
    lr=3e-3,
    warmup_steps=5,
    patience=10,
    device="cpu",
    threads=1,
)
N_CATEGORIES = 4
_train_lock = threading.Lock()


@functools.cache
def world(seed: int = 0) -> tuple[InteractionLog, dict[str, ItemRecord], dict[str, str]]:
    """A shop of 4 categories x 25 items (5 of each never seen in training); users each love one category."""
    return category_world(
        n_categories=N_CATEGORIES,
        items_per_category=25,
        n_users=120,
        length=12,
        cold_per_category=5,
        seed=seed,
    )


@functools.cache
def trained(seed: int = 0) -> FitResult:
    """A tiny model of `world(seed)` (a few seconds on one CPU thread; cached for the test session)."""
    log, catalog, _ = world(seed)
    with _train_lock:
        torch.manual_seed(seed)
        return fit(log, catalog, TINY)


def event_records(log: InteractionLog) -> list[EventRecord]:
    """The log's interactions as records (timestamps moved to end an hour ago, order kept)."""
    shift = datetime.now(UTC).timestamp() - 3600 - float(log.timestamps.max())
    return [
        EventRecord(
            user_id=log.users[u],
            item_id=log.items[i],
            type=log.types[t],
            timestamp=datetime.fromtimestamp(float(ts) + shift, UTC),
        )
        for u, i, t, ts in zip(
            log.user_codes.tolist(),
            log.item_codes.tolist(),
            log.type_codes.tolist(),
            log.timestamps.tolist(),
            strict=True,
        )
    ]


def load_shop(sessions: sessionmaker[Session], seed: int = 0, *, with_events: bool = True) -> None:
    """Store the world's catalog (cold items included) and, optionally, its events."""
    log, catalog, _ = world(seed)
    load_items(sessions, catalog.values())
    if with_events:
        load_events(sessions, event_records(log), source=f"world{seed}")


def register(
    sessions: sessionmaker[Session],
    artifact_dir: Path,
    result: FitResult,
    version: str,
    *,
    active: bool = True,
) -> str:
    """Write `result` as `version` and add its row (activated when `active`), as the trainer does."""
    save_version(result, artifact_dir, version)

    def write(session: Session) -> None:
        session.add(ModelVersion(version=version, status="candidate", metrics={}, data_stats={}, timings={}))
        session.flush()
        if active:
            activate(session, version)

    run_transaction(sessions, write)
    return version


def set_active(sessions: sessionmaker[Session], version: str) -> None:
    """Activate an already registered version."""
    run_transaction(sessions, lambda s: activate(s, version))
