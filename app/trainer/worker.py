"""The worker loop: take back expired jobs, queue scheduled ones, claim a job, run it under a heartbeat lease."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import save_version
from app.artifacts.store import ArtifactError
from app.db.engine import run_transaction
from app.db.tables import utcnow
from app.index import service_index_config
from app.ml.config import TrainConfig
from app.ml.distributed import DistributedTrainingError, backend_for, run_ranks
from app.ml.train import FitResult, ProgressInfo, WarmStart, WarmStartError
from app.registry import jobs
from app.registry import repository as registry
from app.registry.jobs import Lease
from app.settings import Settings
from app.trainer.pipeline import (
    LeaseLost,
    Outcome,
    RunPlan,
    TrainingData,
    artifact_path,
    cleaning_rules,
    describe_run,
    fit_data,
    fit_rank,
    negative_options,
    plain,
    plan_run,
    progress_detail,
    read_training_data,
    register,
    stage_progress,
    train_config,
    warm_start_from,
)
from app.trainer.retention import clean_temp_dirs, prune_versions
from app.trainer.schedule import maybe_enqueue

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """The worker was asked to stop while training: the job goes back to the queue."""


@dataclass(frozen=True)
class JobResult:
    """How one claimed job ended for this worker: succeeded, failed, released or lost."""

    job_id: str
    status: str
    outcome: Outcome | None = None
    error: str | None = None


def new_worker_id() -> str:
    """host:pid:random, unique per worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Heartbeat(threading.Thread):
    """Refreshes a job's lease and progress in the background; sets `lost` when the job is no longer ours."""

    def __init__(self, sessions: sessionmaker[Session], lease: Lease, interval_s: float) -> None:
        super().__init__(daemon=True, name=f"heartbeat-{lease.job_id[:8]}")
        self.sessions = sessions
        self.lease = lease
        self.interval_s = interval_s
        self.progress = 0.0
        self.detail: dict[str, Any] | None = None  # the job's live detail (stage, epoch, ETA)
        self.lost = threading.Event()
        self._done = threading.Event()

    def beat(self) -> None:
        """One lease refresh now (also used to publish progress promptly)."""
        try:
            held = run_transaction(
                self.sessions, lambda s: jobs.heartbeat(s, self.lease, self.progress, self.detail)
            )
        except SQLAlchemyError as exc:  # a database blip: the lease survives until it expires
            log.warning("job %s: heartbeat failed: %s", self.lease.job_id, str(exc).splitlines()[0])
            return
        if not held:
            self.lost.set()

    def run(self) -> None:
        while not self._done.wait(self.interval_s) and not self.lost.is_set():
            self.beat()

    def stop(self) -> None:
        """Stop beating and wait for the thread."""
        self._done.set()
        if self.is_alive():
            self.join()


class Worker:
    """Claims training jobs from the store and runs them; one job at a time."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        *,
        worker_id: str | None = None,
        stop: threading.Event | None = None,
        on_progress: Callable[[ProgressInfo], None] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.worker_id = worker_id or new_worker_id()
        self.stop = stop or threading.Event()
        self.on_progress = on_progress
        self.artifact_dir = Path(settings.artifact_dir)

    def start_up(self) -> None:
        """Remove temporary directories that crashed writers left behind."""
        clean_temp_dirs(self.artifact_dir, older_than_s=self.settings.job_lease_seconds)

    def recover(self) -> list[jobs.Recovered]:
        """Re-queue (or fail) running jobs whose worker stopped heartbeating."""
        recovered = run_transaction(
            self.sessions,
            lambda s: jobs.recover_expired(
                s, lease_seconds=self.settings.job_lease_seconds, max_attempts=self.settings.job_max_attempts
            ),
        )
        for item in recovered:
            log.warning("job %s: %s -> %s", item.job_id, item.message, item.status)
        return recovered

    def tick(self) -> JobResult | None:
        """One round: recover expired leases, queue a scheduled job if due, run one queued job if any."""
        self.recover()
        scheduled = run_transaction(self.sessions, lambda s: maybe_enqueue(s, self.settings, utcnow()))
        if scheduled is not None:
            log.info("job %s queued: %s", scheduled.job_id, scheduled.reason)
        lease = run_transaction(self.sessions, lambda s: jobs.claim(s, self.worker_id))
        return self.run_job(lease) if lease is not None else None

    def run(self, *, once: bool = False) -> int:
        """Loop until stopped (or, with `once`, until no job is left); returns how many jobs ended here."""
        self.start_up()
        log.info("worker %s started (artifacts in %s)", self.worker_id, self.artifact_dir)
        done = 0
        while not self.stop.is_set():
            try:
                result = self.tick()
            except SQLAlchemyError as exc:
                log.warning("worker: database unavailable (%s); retrying", str(exc).splitlines()[0])
                result = None
            if result is not None:
                done += 1
                continue
            if once:
                break
            self.stop.wait(self.settings.worker_poll_seconds)
        log.info("worker %s stopped after %d job(s)", self.worker_id, done)
        return done

    def run_job(self, lease: Lease) -> JobResult:
        """Run a claimed job end to end; every outcome is written to the job row (unless the lease was lost)."""
        log.info("job %s: started by %s (attempt %d)", lease.job_id, self.worker_id, lease.attempt)
        interval = max(0.05, min(self.settings.job_lease_seconds / 4.0, 2.0))
        heartbeat = Heartbeat(self.sessions, lease, interval)
        heartbeat.start()
        saved: Path | None = None
        try:
            with self.sessions() as session:
                data = read_training_data(
                    session,
                    self.settings.event_weights,
                    rules=cleaning_rules(self.settings),
                    **negative_options(self.settings),
                )
            heartbeat.progress = 0.1
            heartbeat.beat()
            log.info(
                "job %s: read %d interactions, %d items in %.1f s",
                lease.job_id,
                len(data.log),
                len(data.items),
                data.read_s,
            )
            config, warm, plan = self._plan(lease)
            heartbeat.detail = {"stage": "train", "mode": plan.mode, "mode_reason": plan.why}
            report = self._progress(lease, heartbeat, plan)
            try:
                result = self._fit(data, config, report, warm)
            except WarmStartError as exc:
                log.warning("job %s: %s; falling back to a full retrain", lease.job_id, exc)
                plan = RunPlan("full", f"warm start refused ({exc})")
                heartbeat.detail = {"stage": "train", "mode": plan.mode, "mode_reason": plan.why}
                report = self._progress(lease, heartbeat, plan)
                result = self._fit(data, config, report, None)
            result.metrics["mode_reason"] = plan.why
            if plan.base is not None and result.metrics.get("mode") == "incremental":
                result.metrics["warm_started_from"] = plan.base
            started = time.perf_counter()
            saved = save_version(result, self.artifact_dir, index_config=service_index_config(self.settings))
            stats, timings = describe_run(data, result, time.perf_counter() - started)
            heartbeat.stop()
            if heartbeat.lost.is_set():
                raise LeaseLost(f"job {lease.job_id}: the lease was lost while saving")
            version = saved.name
            outcome = run_transaction(
                self.sessions,
                lambda s: register(
                    s, lease, version, plain(result.metrics), stats, timings, self.settings.gate_tolerance
                ),
            )
        except LeaseLost as exc:
            log.warning("%s; another worker owns the job now, this run's result is dropped", exc)
            self._drop_unregistered(saved)
            return JobResult(lease.job_id, "lost", error=str(exc))
        except Interrupted:
            run_transaction(
                self.sessions, lambda s: jobs.release(s, lease, f"worker {self.worker_id} stopped")
            )
            log.info("job %s: released back to the queue (worker stopping)", lease.job_id)
            return JobResult(lease.job_id, "released")
        except Exception as exc:  # the job's row must say why it failed, whatever failed
            message = str(exc) if isinstance(exc, ValueError) else f"{type(exc).__name__}: {exc}"
            log.exception("job %s failed: %s", lease.job_id, message)
            self._drop_unregistered(saved)
            try:
                run_transaction(self.sessions, lambda s: jobs.fail(s, lease, message))
            except SQLAlchemyError:
                log.exception("job %s: could not record the failure; its lease will expire", lease.job_id)
            return JobResult(lease.job_id, "failed", error=message)
        finally:
            heartbeat.stop()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        log.info("job %s: version %s %s (%s)", lease.job_id, outcome.version, outcome.status, outcome.reason)
        self.housekeeping()
        return JobResult(lease.job_id, "succeeded", outcome=outcome)

    def _fit(
        self,
        data: TrainingData,
        config: TrainConfig,
        report: Callable[[ProgressInfo], None],
        warm: WarmStart | None,
    ) -> FitResult:
        """Fit here (one process) or on RECO_TRAIN_NPROC DDP ranks; either way this process, which holds the
        lease, then writes the artifact and records the version from rank 0's result."""
        nproc = self.settings.train_nproc
        if nproc <= 1:
            return fit_data(data, config, report, warm)
        log.info("training on %d DDP processes (%s)", nproc, backend_for(config))
        try:
            result: FitResult = run_ranks(
                nproc,
                fit_rank,
                (data, warm),
                config,
                report,
                timeout_s=self.settings.train_ddp_timeout_s,
            )
        except DistributedTrainingError:
            if self.stop.is_set():  # the ranks got the stop signal too (sent to the process group)
                raise Interrupted("stopped while training on DDP processes") from None
            raise
        result.metrics["nproc"] = nproc
        return result

    def _drop_unregistered(self, saved: Path | None) -> None:
        """Delete an artifact this run wrote but did not register (kept if a row names it after all)."""
        if saved is None:
            return
        try:
            with self.sessions() as session:
                if registry.get_version(session, saved.name) is not None:
                    return
        except SQLAlchemyError:
            return  # unknown: leave it to retention rather than risk deleting a registered version
        shutil.rmtree(saved, ignore_errors=True)

    def _plan(self, lease: Lease) -> tuple[TrainConfig, WarmStart | None, RunPlan]:
        """The job's config (its own time budget, if it asked) and whether it warm-starts, and from what."""
        with self.sessions() as session:
            job = jobs.get_job(session, lease.job_id)
            params = dict(job.params or {}) if job is not None else {}
            plan = plan_run(session, self.settings, params)
        config = train_config(self.settings)
        if params.get("time_budget_s"):
            config = replace(config, time_budget_s=float(params["time_budget_s"]))
        warm = None
        if plan.mode == "incremental" and plan.base is not None:
            try:
                warm = warm_start_from(artifact_path(self.settings, plan.base), plan.since)
            except (ArtifactError, OSError, ValueError) as exc:
                log.warning(
                    "job %s: cannot load %s to warm-start (%s); full retrain", lease.job_id, plan.base, exc
                )
                plan = RunPlan("full", f"the active version could not be loaded ({exc})")
        log.info("job %s: %s retrain (%s)", lease.job_id, plan.mode, plan.why)
        return config, warm, plan

    def _progress(self, lease: Lease, heartbeat: Heartbeat, plan: RunPlan) -> Callable[[ProgressInfo], None]:
        def report(info: ProgressInfo) -> None:
            heartbeat.progress = stage_progress(info)
            heartbeat.detail = {**progress_detail(info), "mode": plan.mode, "mode_reason": plan.why}
            if self.on_progress is not None:
                self.on_progress(info)
            valid = f" valid NDCG@10 {info.valid['NDCG@10']:.4f}" if info.valid else ""
            log.log(
                logging.DEBUG
                if self.on_progress is not None
                else logging.INFO,  # the caller shows it already
                "job %s: %s epoch %d/%d loss %.4f%s",
                lease.job_id,
                info.stage,
                info.epoch,
                info.epochs,
                info.loss,
                valid,
            )
            if heartbeat.lost.is_set():
                raise LeaseLost(f"job {lease.job_id}: the lease of attempt {lease.attempt} was lost")
            if self.stop.is_set():
                raise Interrupted(lease.job_id)

        return report

    def housekeeping(self) -> list[str]:
        """Retention: keep the newest `keep_versions` artifact directories, never the active one."""

        def prune(session: Session) -> list[str]:
            registry.lock_registry(session)  # no activation of a version while its files are deleted
            active = registry.active_version(session)
            return prune_versions(
                self.artifact_dir, self.settings.keep_versions, {active} if active else set()
            )

        try:
            deleted = run_transaction(self.sessions, prune)
        except SQLAlchemyError as exc:
            log.warning("retention skipped: %s", str(exc).splitlines()[0])
            return []
        clean_temp_dirs(self.artifact_dir, older_than_s=self.settings.job_lease_seconds)
        return deleted
