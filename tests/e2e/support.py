"""Shared by the trainer, admin and end-to-end tests: a chain world in the store, tiny training settings."""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.catalog.service import load_items
from app.db.engine import run_transaction
from app.events.repository import max_event_id
from app.events.service import load_events
from app.ml.synthetic import chain_world
from app.records import EventRecord
from app.registry import jobs
from app.settings import Settings

# A few seconds of training that still learns the chains (valid NDCG@10 ~0.94 on the chain world).
TINY = {
    "train_epochs": 15,
    "train_batch_size": 8,
    "train_dim": 16,
    "train_max_len": 20,
    "train_patience": 5,
    "train_threads": 1,
    "train_device": "cpu",
}
BASE_TIME = datetime(2026, 11, 1, tzinfo=UTC)


def tiny(settings: Settings, **extra: Any) -> Settings:
    """The test's settings with tiny, fast training (and `extra` overrides)."""
    return settings.model_copy(update={**TINY, **extra})


def chain_events(n_users: int = 120, n_items: int = 40, length: int = 12, seed: int = 0) -> list[EventRecord]:
    """Users walking item chains i -> i+1, as event records with recent timestamps."""
    log, _ = chain_world(n_items=n_items, n_users=n_users, length=length, seed=seed)
    return [
        EventRecord(
            user_id=log.users[u],
            item_id=log.items[i],
            type="view",
            timestamp=BASE_TIME + timedelta(seconds=float(t - log.timestamps.min())),
        )
        for u, i, t in zip(log.user_codes, log.item_codes, log.timestamps, strict=True)
    ]


def load_chain_world(sessions: sessionmaker[Session], **kwargs: Any) -> int:
    """Store a chain world (items and events); returns the events stored."""
    _, items = chain_world(
        **{k: v for k, v in kwargs.items() if k in ("n_items", "n_users", "length", "seed")}
    )
    load_items(sessions, items.values())
    stored, _ = load_events(sessions, chain_events(**kwargs), source="chain")
    return stored


def enqueue(sessions: sessionmaker[Session], trigger: str = "cli") -> str:
    """Queue a job (or get the open one) and return its id."""
    job, _ = run_transaction(
        sessions, lambda s: jobs.enqueue(s, trigger=trigger, reason="test", max_event_id=max_event_id(s))
    )
    return job.job_id


def job_row(sessions: sessionmaker[Session], job_id: str) -> dict[str, Any]:
    """The job as the API shows it."""
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert job is not None, job_id
        return jobs.job_summary(job)


def worker_env(settings: Settings, **extra: Any) -> dict[str, str]:
    """Environment for a `python -m app.trainer` subprocess using `settings` (keys are RECO_<FIELD>)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
    env["RECO_DATABASE_URL"] = settings.database_url
    env["RECO_ARTIFACT_DIR"] = str(settings.artifact_dir)
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2])
    for name, value in {**TINY, **extra}.items():
        env[f"RECO_{name.upper()}"] = str(value)
    return env


PYTHON = sys.executable
