"""One training run from the store: stream interactions and items, fit, write the artifact, register, gate."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import and_, func, select
from sqlalchemy.orm import Session

from app.artifacts import load_version
from app.catalog.repository import iter_item_records
from app.db.tables import Event, Impression
from app.events.repository import iter_interactions
from app.ml.cleaning import CleaningRules, clean_log, format_report
from app.ml.config import TrainConfig
from app.ml.data import IMPRESSION_KIND, InteractionLog, Negatives
from app.ml.result import FitResult
from app.ml.train import ProgressInfo, WarmStart, fit
from app.records import ItemRecord, as_utc
from app.registry import jobs
from app.registry import repository as registry
from app.registry.jobs import Lease
from app.settings import Settings
from app.trainer.gate import decide

READ_CHUNK = 50_000

log = logging.getLogger(__name__)


class LeaseLost(RuntimeError):
    """Another worker took the job over (our heartbeat expired): drop this run's result."""


@dataclass(frozen=True, eq=False)
class TrainingData:
    """What one run trains on: the interaction log, the catalog and the newest event id read."""

    log: InteractionLog
    items: dict[str, ItemRecord]
    max_event_id: int
    skipped_types: dict[str, int]
    read_s: float
    cleaning: dict[str, Any] | None = None  # clean_log's report: the rules used and what each dropped
    negatives: Negatives | None = None  # explicit negatives: negative event types, unclicked impressions


@dataclass(frozen=True)
class Outcome:
    """The registered version and the gate's verdict."""

    version: str
    status: str
    reason: str
    metrics: dict[str, Any]
    data_stats: dict[str, Any]
    timings: dict[str, Any]
    previous: str | None


def train_config(settings: Settings) -> TrainConfig:
    """The TrainConfig the worker uses: the model's defaults, overridden by the `RECO_TRAIN_*` settings set."""
    base = TrainConfig()
    model = base.model
    if settings.train_dim is not None:
        heads = model.heads if settings.train_dim % model.heads == 0 else 1
        model = replace(model, d=settings.train_dim, heads=heads)
    if settings.train_max_len is not None:
        model = replace(model, max_len=settings.train_max_len)
    if settings.train_members is not None:
        model = replace(model, members=settings.train_members)
    config = replace(
        base,
        model=model,
        event_weights={name: weight for name, weight in settings.event_weights.items() if weight > 0},
        device=settings.train_device,
        threads=settings.train_threads,
        negative_weight=settings.negative_weight,
    )
    config = replace(config, time_budget_s=settings.train_time_budget_s)
    if settings.train_epochs is not None:
        config = replace(config, epochs=settings.train_epochs)
    if settings.train_patience is not None:
        config = replace(config, patience=settings.train_patience)
    if settings.train_batch_size is not None:
        config = replace(config, batch_size=settings.train_batch_size)
    if settings.train_seed is not None:
        config = replace(config, seed=settings.train_seed)
    return config


def cleaning_rules(settings: Settings) -> CleaningRules:
    """The data cleaning the worker applies before training: the `RECO_CLEAN_*` settings (0: a rule is off)."""
    return CleaningRules(
        type_weights=dict(settings.event_weights),
        bot_events_per_minute=settings.clean_bot_events_per_minute,
        repeat_window_s=settings.clean_repeat_window_s,
        max_events_per_user=settings.clean_max_events_per_user,
        max_events_per_item=settings.clean_max_events_per_item,
    )


def negative_options(settings: Settings) -> dict[str, Any]:
    """read_training_data's keyword arguments for explicit negatives, from the settings."""
    return {
        "negative_types": tuple(settings.negative_types),
        "impression_window_s": settings.impression_negative_window_s
        if settings.train_impression_negatives
        else None,
    }


def read_unclicked_impressions(
    session: Session, window_s: float, now: float | None = None, chunk_size: int = READ_CHUNK
) -> Negatives:
    """Impressions the user did not act on: no event of that user on that item at or after the impression's
    time, within `window_s` seconds. One SQL query (SQLite and PostgreSQL alike): each impression with the
    time of the first such event after it (a LEFT JOIN on the events' (user_id, ts) index, MIN per
    impression); the window test is done on the rows. Impressions younger than `window_s` (before `now`,
    default the clock) are not judged yet: the user may still act on them.
    """
    cutoff = datetime.fromtimestamp(time.time() if now is None else now, UTC) - timedelta(seconds=window_s)
    first_after = func.min(Event.ts)
    stmt = (
        select(Impression.user_id, Impression.item_id, Impression.ts, first_after)
        .select_from(Impression)
        .outerjoin(
            Event,
            and_(
                Event.user_id == Impression.user_id,
                Event.item_id == Impression.item_id,
                Event.ts >= Impression.ts,
            ),
        )
        .where(Impression.ts <= cutoff)
        .group_by(Impression.id, Impression.user_id, Impression.item_id, Impression.ts)
        .order_by(Impression.id)
    )
    users: list[str] = []
    items: list[str] = []
    times: list[float] = []
    result = session.execute(stmt.execution_options(stream_results=True, yield_per=chunk_size))
    for user_id, item_id, shown, acted in result:
        shown_s = as_utc(shown).timestamp()
        if acted is None or as_utc(acted).timestamp() - shown_s > window_s:
            users.append(user_id)
            items.append(item_id)
            times.append(shown_s)
    return Negatives(users, items, [IMPRESSION_KIND] * len(users), np.asarray(times, dtype=np.float64))


def read_training_data(
    session: Session,
    event_weights: Mapping[str, float],
    chunk_size: int = READ_CHUNK,
    *,
    rules: CleaningRules | None = None,
    negative_types: Sequence[str] = ("not_interested",),
    impression_window_s: float | None = None,
) -> TrainingData:
    """Stream every interaction (server-side cursor, no ORM objects) and every item out of the store, cleaned.

    Erased users' events are deleted from the table, so they cannot appear here. Events of `negative_types`
    ("not for me") are taken out first, whatever their weight: they become explicit negatives (`negatives`),
    never positives, and appear in no sequence. Then `clean_log` applies `rules` (app/ml/cleaning.py: bot users,
    repeats, per-user and per-item caps); its type rule always follows `event_weights`: types whose weight is
    0, or that the weights do not name, are left out of training (counted in `skipped_types` and in the
    report). Without `rules` only the type rule applies. With `impression_window_s`, impressions not acted on
    within that many seconds are negatives too (`read_unclicked_impressions`). The report's "negatives" counts
    the negatives read of each kind (FitResult.data_stats["negatives"] those training used).
    """
    started = time.perf_counter()
    builder = InteractionLog.builder()
    newest = 0
    negative = frozenset(negative_types)
    neg_users: list[str] = []
    neg_items: list[str] = []
    neg_kinds: list[str] = []
    neg_times: list[float] = []
    for chunk in iter_interactions(session, chunk_size=chunk_size):
        newest = max(newest, int(chunk[-1][0]))
        if negative:
            rows = [r for r in chunk if r[3] not in negative]
            if len(rows) < len(chunk):
                for r in chunk:
                    if r[3] in negative:
                        neg_users.append(r[1])
                        neg_items.append(r[2])
                        neg_kinds.append(r[3])
                        neg_times.append(r[5])
            chunk = rows
        if not chunk:
            continue
        builder.extend(
            [r[1] for r in chunk],
            [r[2] for r in chunk],
            [r[3] for r in chunk],
            np.fromiter((r[5] for r in chunk), dtype=np.float64, count=len(chunk)),  # [n] epoch seconds
        )
    cleaned, report = clean_log(
        builder.build(), replace(rules or CleaningRules(), type_weights=dict(event_weights))
    )
    parts = [Negatives(neg_users, neg_items, neg_kinds, np.asarray(neg_times, dtype=np.float64))]
    if impression_window_s is not None:
        parts.append(read_unclicked_impressions(session, impression_window_s, chunk_size=chunk_size))
    negatives = Negatives.concat(parts)
    report["negatives"] = {
        "types": sorted(negative),
        "impression_window_s": impression_window_s,
        "read": negatives.counts(),
    }
    log.info("%s (%.1f s)", format_report(report), report["seconds"])
    items = {record.item_id: record for record in iter_item_records(session)}
    skipped = dict(report["dropped"]["types"]["by_type"])
    return TrainingData(cleaned, items, newest, skipped, time.perf_counter() - started, report, negatives)


def plain(value: Any) -> Any:
    """JSON-able copy of metrics (numpy scalars become floats, NaN becomes None)."""

    def default(obj: Any) -> Any:
        if isinstance(obj, np.generic):
            return obj.item()
        raise TypeError(f"{type(obj).__name__} is not JSON-able")

    data = json.loads(json.dumps(value, default=default))

    def clean(obj: Any) -> Any:
        if isinstance(obj, float) and not math.isfinite(obj):
            return None
        if isinstance(obj, dict):
            return {k: clean(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [clean(v) for v in obj]
        return obj

    return clean(data)


def stage_progress(info: ProgressInfo) -> float:
    """Map a training progress report onto the job's 0..1 (reading 0-0.1, train 0.1-0.8, refit 0.8-0.95).

    Early stopping and the time budget end a stage before its last epoch: the elapsed share of the time
    (elapsed / (elapsed + ETA)) moves the bar then, so it never sits near 0.1 while a long stage runs.
    """
    by_epoch = info.epoch / max(info.epochs, 1)
    by_time = info.elapsed_s / max(info.elapsed_s + info.eta_s, 1e-9)
    frac = max(by_epoch, by_time) if info.stage.startswith("train") else by_epoch
    return 0.1 + 0.7 * frac if info.stage.startswith("train") else 0.8 + 0.15 * frac


def progress_detail(info: ProgressInfo) -> dict[str, Any]:
    """The job's live `detail`: stage, epoch, loss, validation NDCG@10, elapsed and ETA."""
    return {
        "stage": info.stage,
        "epoch": info.epoch,
        "epochs": info.epochs,
        "loss": round(info.loss, 5),
        "valid_NDCG@10": None if info.valid is None else round(info.valid["NDCG@10"], 5),
        "best_valid_NDCG@10": round(info.best_ndcg10, 5),
        "elapsed_s": round(info.elapsed_s, 1),
        "eta_s": round(info.eta_s, 1),
        "sequences_per_s": round(info.sequences_per_s, 1),
    }


@dataclass(frozen=True)
class RunPlan:
    """How a job trains: full or incremental (from `base`, the active version), and why."""

    mode: str
    why: str
    base: str | None = None
    since: float | None = None


def plan_run(session: Session, settings: Settings, params: Mapping[str, Any]) -> RunPlan:
    """Choose full or incremental: what the job asked for, else incremental when an active version exists
    that recorded its newest event time, unless RECO_RETRAIN_FULL_EVERY says a full retrain is due."""
    asked = params.get("mode")
    active = registry.active_row(session)
    if asked == "full":
        return RunPlan("full", "asked for")
    if active is None:
        return RunPlan("full", "no active version to start from")
    since = (active.data_stats or {}).get("max_event_ts")
    if since is None:
        return RunPlan("full", f"the active version {active.version} did not record its newest event time")
    if asked != "incremental":
        every = settings.retrain_full_every
        if every == 1:
            return RunPlan("full", "RECO_RETRAIN_FULL_EVERY=1")
        if every > 1:
            chain = 0
            for row in registry.list_versions(session):  # newest first
                if (row.metrics or {}).get("mode") != "incremental":
                    break
                chain += 1
            if chain + 1 >= every:
                return RunPlan(
                    "full", f"{chain} incremental version(s) in a row: RECO_RETRAIN_FULL_EVERY={every}"
                )
    return RunPlan(
        "incremental",
        "asked for" if asked else "a compatible active version exists",
        active.version,
        float(since),
    )


def warm_start_from(path: Path, since: float | None) -> WarmStart:
    """The active version's weights, item ids and event types, to continue from."""
    loaded = load_version(path, mmap=False)  # trained further: its own memory, not a map of the file
    return WarmStart(loaded.model, list(loaded.item_ids), list(loaded.type_names), since)


def fit_data(
    data: TrainingData,
    config: TrainConfig,
    progress: Callable[[ProgressInfo], None] | None,
    warm: WarmStart | None = None,
) -> FitResult:
    """Fit the serving model on the data read from the store (continuing from `warm` when given)."""
    return fit(data.log, data.items, config, progress, warm=warm, negatives=data.negatives)


def fit_rank(
    config: TrainConfig,
    progress: Callable[[ProgressInfo], None] | None,
    data: TrainingData,
    warm: WarmStart | None,
) -> FitResult:
    """One DDP rank's part of a job's fit (app/ml/distributed.py run_ranks calls it in every rank)."""
    return fit_data(data, config, progress, warm)


def describe_run(
    data: TrainingData, result: FitResult, save_s: float
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The data statistics and timings recorded on the version row."""
    stats = {
        **result.data_stats,
        "raw_interactions": len(data.log),
        "catalog_items": len(data.items),
        "max_event_id": data.max_event_id,
        "max_event_ts": float(data.log.timestamps.max()) if len(data.log) else None,
        "skipped_types": data.skipped_types,
        "cleaning": data.cleaning,
    }
    timings = {"read_s": data.read_s, **result.timings, "save_s": save_s}
    return plain(stats), plain(timings)


def register(
    session: Session,
    lease: Lease | None,
    version: str,
    metrics: dict[str, Any],
    data_stats: dict[str, Any],
    timings: dict[str, Any],
    tolerance: float,
) -> Outcome:
    """In one transaction: check the lease, add the candidate, apply the gate, activate, finish the job.

    Raises LeaseLost (the caller rolls back) when another worker owns the job now.
    """
    if lease is not None and not jobs.heartbeat(session, lease, 0.95):
        raise LeaseLost(f"job {lease.job_id}: the lease of attempt {lease.attempt} was lost")
    registry.lock_registry(session)  # the active version cannot change under the gate's feet
    active = registry.active_row(session)
    decision = decide(
        metrics,
        active.metrics if active is not None else None,
        active.version if active is not None else None,
        tolerance,
    )
    registry.add_version(
        session,
        version,
        metrics=metrics,
        data_stats=data_stats,
        timings=timings,
        job_id=lease.job_id if lease else None,
        status="candidate",
        reason=decision.reason,
    )
    previous = None
    if decision.accept:
        previous = registry.activate(session, version, decision.reason)
        status = "active"
    else:
        registry.set_status(session, version, "rejected", decision.reason)
        status = "rejected"
    if lease is not None:
        summary = {**metrics, "gate": {"accepted": decision.accept, "reason": decision.reason}}
        if data_stats.get("cleaning") is not None:
            summary["cleaning"] = data_stats["cleaning"]  # shown by GET /v1/admin/jobs/{id}
        detail: dict[str, Any] = {
            key: metrics[key]
            for key in ("mode", "mode_reason", "warm_started_from", "stopped_by", "time_budget_s", "refit")
            if key in metrics
        }
        detail["stage"] = "done"
        if not jobs.finish(session, lease, model_version=version, metrics=summary, detail=detail):
            raise LeaseLost(f"job {lease.job_id}: the lease of attempt {lease.attempt} was lost")
    return Outcome(version, status, decision.reason, metrics, data_stats, timings, previous)


def artifact_path(settings: Settings, version: str) -> Path:
    """Where a version's files live."""
    return Path(settings.artifact_dir) / version
