"""`reco train [--enqueue]`, `reco evaluate [--data PATH]`, `reco worker`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from app.datasets.errors import DatasetFormatError
from app.datasets.movielens import read_movielens
from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.migrate import upgrade
from app.events.repository import max_event_id
from app.ml.cleaning import format_report
from app.ml.data import InteractionLog
from app.ml.evaluate import evaluate_report, format_table
from app.ml.train import ProgressInfo
from app.registry import jobs
from app.registry import repository as registry
from app.settings import Settings, load_settings
from app.trainer.pipeline import cleaning_rules, negative_options, read_training_data, train_config
from app.trainer.process import run_worker
from app.trainer.worker import Worker, new_worker_id

FINISHED = ("succeeded", "failed")


def register(commands: argparse._SubParsersAction) -> None:
    """Add the training commands."""
    train = commands.add_parser(
        "train",
        help="train a model version from the store",
        description="Train a model on the events in the store, register it and (if it passes the quality "
        "gate) make it active. With --enqueue, only queue the job for the background worker.",
    )
    train.add_argument("--enqueue", action="store_true", help="queue a job for `reco worker` and return")
    train.add_argument("--reason", default=None, help="a note stored on the job")
    train.add_argument("--json", action="store_true", help="print the job as JSON")
    _training_options(train)
    _nproc_option(train)
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="offline evaluation (protocol: docs/EVALUATION.md)",
        description="Chronological leave-one-out, full ranking: the model beside MostPop, ItemKNN and EASE "
        "on the same split. Data: --data PATH (a MovieLens folder), else the store.",
    )
    evaluate.add_argument("--data", type=Path, default=None, help="a MovieLens folder instead of the store")
    evaluate.add_argument("--seeds", default="0,1,2", help="model seeds, comma separated (default 0,1,2)")
    evaluate.add_argument("--no-baselines", action="store_true", help="skip MostPop, ItemKNN and EASE")
    evaluate.add_argument("--json", action="store_true", help="print the report as JSON")
    _training_options(evaluate)
    evaluate.set_defaults(handler=cmd_evaluate)

    worker = commands.add_parser(
        "worker",
        help="run the background trainer",
        description="Claim training jobs and run them; also queues scheduled jobs (RECO_RETRAIN_*). "
        "Same as `python -m app.trainer`. SIGTERM puts a job in progress back in the queue.",
    )
    worker.add_argument("--once", action="store_true", help="run the queued jobs, then exit")
    _nproc_option(worker)
    worker.set_defaults(handler=cmd_worker)


def _nproc_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--nproc",
        type=int,
        default=None,
        help="train each model on N DDP processes (gloo on the CPU, NCCL on N GPUs; "
        "override RECO_TRAIN_NPROC, default 1)",
    )


def _training_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("training (override RECO_TRAIN_*)")
    group.add_argument("--epochs", type=int, default=None, help="most epochs (early stopping ends sooner)")
    group.add_argument("--dim", type=int, default=None, help="vector size d")
    group.add_argument("--max-len", type=int, default=None, help="history length L")
    group.add_argument(
        "--members", type=int, default=None, help="ensemble members (default 1; 2 reach the bar)"
    )
    group.add_argument("--batch-size", type=int, default=None)
    group.add_argument("--patience", type=int, default=None)
    group.add_argument("--device", choices=("auto", "cpu", "cuda"), default=None)
    group.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    group.add_argument("--time-budget", type=float, default=None, help="seconds of training at most")


def with_overrides(settings: Settings, args: argparse.Namespace) -> Settings:
    """Settings with the command line's training options applied (validated like the environment)."""
    pairs = {
        "train_epochs": args.epochs,
        "train_dim": args.dim,
        "train_max_len": args.max_len,
        "train_members": args.members,
        "train_batch_size": args.batch_size,
        "train_patience": args.patience,
        "train_device": args.device,
        "train_threads": args.threads,
        "train_time_budget_s": args.time_budget,
        "train_nproc": getattr(args, "nproc", None),
    }
    update = {name: value for name, value in pairs.items() if value is not None}
    if not update:
        return settings
    return load_settings(**{**settings.model_dump(), **update})


def _open_store(settings: Settings) -> tuple[Any, sessionmaker[Session]]:
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)
    return engine, make_sessionmaker(engine)


def _fmt_seconds(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def print_progress(info: ProgressInfo) -> None:
    """One line per epoch on stderr: stage, epoch, loss, validation NDCG@10, speed and ETA."""
    width = 24
    filled = int(width * info.epoch / max(info.epochs, 1))
    bar = "#" * filled + "." * (width - filled)
    valid = f" valid NDCG@10 {info.valid['NDCG@10']:.4f} (best {info.best_ndcg10:.4f})" if info.valid else ""
    print(
        f"{info.stage:5s} [{bar}] epoch {info.epoch}/{info.epochs} loss {info.loss:.4f}{valid} "
        f"{info.sequences_per_s:,.0f} seq/s ETA {_fmt_seconds(info.eta_s)} (early stopping may end sooner)",
        file=sys.stderr,
        flush=True,
    )


def _job_table(job: dict[str, Any], model: dict[str, Any] | None) -> str:
    lines = [f"job {job['job_id']}: {job['status']}" + (f" ({job['error']})" if job["error"] else "")]
    if job["model_version"]:
        gate = job["metrics"].get("gate", {})
        status = model["status"] if model else "?"
        lines.append(f"model version {job['model_version']}: {status}; gate: {gate.get('reason', '-')}")
        lines.append("| metric (validation, each user's latest item) | value |")
        lines.append("|---|---|")
        for key, value in job["metrics"].items():
            if key != "gate" and isinstance(value, int | float):
                lines.append(
                    f"| {key} | {value:.4f} |" if isinstance(value, float) else f"| {key} | {value} |"
                )
        if isinstance(job["metrics"].get("cleaning"), dict):
            lines.append(format_report(job["metrics"]["cleaning"]))
        if model:
            timing = ", ".join(f"{k} {v:.1f}" for k, v in model["timings"].items() if isinstance(v, float))
            data = {k: v for k, v in (model["data_stats"] or {}).items() if k != "cleaning"}
            lines.append(f"data: {json.dumps(data)}")
            lines.append(f"seconds: {timing}")
    return "\n".join(lines)


def _job_state(sessions: sessionmaker[Session], job_id: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    with sessions() as session:
        job = jobs.get_job(session, job_id)
        assert job is not None
        summary = jobs.job_summary(job)
        row = registry.get_version(session, job.model_version) if job.model_version else None
        model = (
            {"status": row.status, "data_stats": row.data_stats, "timings": row.timings, "reason": row.reason}
            if row is not None
            else None
        )
    return summary, model


def cmd_train(args: argparse.Namespace) -> int:
    """Queue a training job and (unless --enqueue) run it here, printing progress; exit 1 if it failed."""
    settings = with_overrides(load_settings(), args)
    engine, sessions = _open_store(settings)
    try:
        job, created = run_transaction(
            sessions,
            lambda s: jobs.enqueue(s, trigger="cli", reason=args.reason, max_event_id=max_event_id(s)),
        )
        if not created:
            print(f"job {job.job_id} is already {job.status}; following it", file=sys.stderr)
        if not args.enqueue:
            worker_id = new_worker_id()
            lease = run_transaction(sessions, lambda s: jobs.claim(s, worker_id, job.job_id))
            if lease is not None:
                Worker(settings, sessions, worker_id=worker_id, on_progress=print_progress).run_job(lease)
            else:
                _follow(sessions, job.job_id)
        summary, model = _job_state(sessions, job.job_id)
    finally:
        engine.dispose()
    if args.json:
        print(json.dumps({**summary, "model": model}, default=str, indent=2))
    elif args.enqueue:
        print(
            f"job {summary['job_id']} {summary['status']}: `reco worker` (or the embedded worker) will run it"
        )
    else:
        print(_job_table(summary, model))
    return 1 if summary["status"] == "failed" else 0


def _follow(sessions: sessionmaker[Session], job_id: str) -> None:
    """Wait for a job another worker runs, printing its progress."""
    last = None
    while True:
        summary, _ = _job_state(sessions, job_id)
        if summary["status"] in FINISHED:
            return
        state = (summary["status"], round(summary["progress"], 2))
        if state != last:
            print(f"job {job_id}: {state[0]}, progress {state[1]:.0%}", file=sys.stderr, flush=True)
            last = state
        time.sleep(1.0)


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SystemExit(f"--seeds: {text!r} must be integers separated by commas") from None
    if not seeds:
        raise SystemExit("--seeds: give at least one seed")
    return seeds


def cmd_evaluate(args: argparse.Namespace) -> int:
    """Run EVALUATION.md on a MovieLens folder or on the store; print the table (or JSON)."""
    settings = with_overrides(load_settings(), args)
    seeds = _parse_seeds(args.seeds)
    if args.data is not None:
        try:
            records, events = read_movielens(args.data, progress=not args.json)
            log = InteractionLog.from_records(events)
        except DatasetFormatError as exc:
            raise SystemExit(f"evaluate: {exc}") from None
        items = {record.item_id: record for record in records}
        source, cleaning = str(args.data), None
    else:
        engine, sessions = _open_store(settings)
        try:
            with sessions() as session:
                data = read_training_data(
                    session,
                    settings.event_weights,
                    rules=cleaning_rules(settings),
                    **negative_options(settings),
                )
        finally:
            engine.dispose()
        log, items, source = data.log, data.items, settings.database_url.split("@")[-1]
        cleaning = data.cleaning
        if not args.json and cleaning is not None:
            print(format_report(cleaning), file=sys.stderr)
    try:
        report = evaluate_report(
            log,
            items,
            train_config(settings),
            seeds=seeds,
            baselines=not args.no_baselines,
            progress=None if args.json else print_progress,
        )
    except ValueError as exc:
        raise SystemExit(f"evaluate: {exc}") from None
    report["source"] = source
    if cleaning is not None:
        report["cleaning"] = cleaning  # the store's events are cleaned as the worker cleans them
    if args.json:
        print(json.dumps(report, indent=2, default=float))
    else:
        print(format_table(report))
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    """Run the background trainer until stopped."""
    settings = load_settings()
    if args.nproc is not None:
        settings = load_settings(**{**settings.model_dump(), "train_nproc": args.nproc})
    run_worker(settings, once=args.once)
    return 0
