"""Retraining benchmark: time from `POST /v1/admin/retrain` to the new version serving, on MovieLens 100K.

Imports ml-100k into a fresh store (SQLite file, or a private PostgreSQL database), starts `reco serve` and a
separate `python -m app.trainer` process with production poll intervals, then times one retrain: the job's
queue wait, reading the store, training, refit, writing the artifact, registering + gate + activation, and
the API's hot swap, until a recommendation answer carries the new version. Writes JSON and a Markdown table.

    PYTHONPATH=. .venv/bin/python scripts/bench_retrain.py --threads 2 --update-docs
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdocs import update_section  # noqa: E402  (scripts/ is on sys.path when a script runs)

from app.catalog.service import load_items  # noqa: E402
from app.datasets.movielens import read_movielens  # noqa: E402
from app.db.engine import make_engine, make_sessionmaker  # noqa: E402
from app.db.migrate import upgrade  # noqa: E402
from app.events.service import load_events  # noqa: E402
from app.settings import Settings  # noqa: E402

SECTION = "## Retraining (issue 5)"
ADMIN = "bench-admin-key-0000000000000"
READ = "bench-read-key-00000000000000"
RECO = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]


@contextmanager
def private_postgres(base_url: str) -> Iterator[str]:
    """A throwaway PostgreSQL database on the server of `base_url`, dropped at the end."""
    name = f"reco_bench_{uuid.uuid4().hex[:8]}"
    admin = sa.create_engine(
        base_url.replace("postgresql://", "postgresql+psycopg://", 1), isolation_level="AUTOCOMMIT"
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield base_url.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@contextmanager
def sqlite_store(folder: Path) -> Iterator[str]:
    """A SQLite file in `folder` (removed with it)."""
    yield f"sqlite:///{folder / 'reco.db'}"


def import_movielens(settings: Settings, data: Path) -> dict[str, Any]:
    """Load ml-100k's first 90% of events (by time) into the store the way `reco import movielens` does; the
    last 10% are returned as API event bodies, to arrive after the first model."""
    engine = make_engine(settings)
    upgrade(engine)
    sessions = make_sessionmaker(engine)
    started = time.perf_counter()
    items, events = read_movielens(data)
    items = list(items)
    ordered = sorted(events, key=lambda e: e.timestamp)
    cut = len(ordered) * 9 // 10
    n_items = load_items(sessions, items)
    stored, _ = load_events(sessions, ordered[:cut], source="bench")
    engine.dispose()
    later = [
        {
            "event_id": f"bench-{uuid.uuid4().hex}",
            "user_id": e.user_id,
            "item_id": e.item_id,
            "type": e.type,
            "timestamp": e.timestamp.isoformat(),
            **({"value": e.value} if e.value is not None else {}),
        }
        for e in ordered[cut:]
    ]
    return {"items": n_items, "events": stored, "import_s": time.perf_counter() - started, "later": later}


def _parse_ts(value: str | None) -> float | None:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp() if value else None


def wait_up(base: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    """Until /healthz answers (or the server died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"reco serve exited with {proc.returncode}")
        try:
            if httpx.get(base + "/healthz", timeout=0.5).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError("reco serve did not start")


def _retrain(
    http: httpx.Client, body: dict[str, Any], user: str, admin: dict[str, str], read: dict[str, str]
) -> dict[str, Any]:
    """POST one retrain, follow the job, and wait until an answer carries the new version; its timings."""
    t0 = time.time()
    job = http.post("/v1/admin/retrain", json={"reason": "bench", **body}, headers=admin).json()
    last_progress = -1.0
    while True:
        status = http.get(f"/v1/admin/jobs/{job['job_id']}", headers=admin).json()
        if status["status"] == "failed":
            raise RuntimeError(f"training failed: {status['error']}")
        if status["status"] == "succeeded":
            break
        if status["progress"] != last_progress:
            last_progress = status["progress"]
            detail = status.get("detail") or {}
            print(
                f"  {time.time() - t0:6.1f} s {status['status']} {last_progress:.0%} {detail.get('stage', '')} "
                f"epoch {detail.get('epoch', '-')} eta {detail.get('eta_s', '-')}",
                flush=True,
            )
        time.sleep(0.25)
    t_done = time.time()
    version = status["model_version"]
    model = next(
        m for m in http.get("/v1/admin/models", headers=admin).json()["models"] if m["version"] == version
    )
    answer: dict[str, Any] = {}
    if model["status"] == "active":  # a version the gate rejected is never served: nothing to wait for
        deadline = time.time() + 60
        while time.time() < deadline:
            answer = http.get(f"/v1/users/{user}/recommendations?k=10", headers=read).json()
            if answer["model_version"] == version:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError(f"version {version} is active but not served after 60 s")
    t_serving = time.time()
    created, started, finished = (_parse_ts(status[k]) for k in ("created_at", "started_at", "finished_at"))
    timings = model["timings"]
    return {
        "version": version,
        "mode": status["detail"].get("mode"),
        "mode_reason": status["detail"].get("mode_reason"),
        "stopped_by": status["detail"].get("stopped_by"),
        "model_status": model["status"],
        "gate_reason": model.get("reason"),
        "total_s": t_serving - t0,
        "stages_s": {
            "queue_wait": (started or t0) - (created or t0),
            "read_store": timings.get("read_s"),
            "train": timings.get("train_s"),
            "refit": timings.get("refit_s"),
            "save_artifact": timings.get("save_s"),
            "job_seen_done_by_client": t_done - t0,
            "activation_to_serving": t_serving - (finished or t_done),
        },
        "valid_metrics": {k: v for k, v in model["metrics"].items() if k.startswith("valid_")},
        "best_epoch": model["metrics"].get("best_epoch"),
        "users_with_new_events": model["metrics"].get("users_with_new_events"),
        "data": model["data"],
        "answer_after": answer.get("strategy"),
    }


def measure(
    env: dict[str, str], port: int, user: str, log_dir: Path, later: list[dict[str, Any]]
) -> dict[str, Any]:
    """Start the API and a worker; time a full retrain, then (after new events) an incremental one."""
    base = f"http://127.0.0.1:{port}"
    with (log_dir / "serve.log").open("wb") as serve_log, (log_dir / "worker.log").open("wb") as worker_log:
        server = subprocess.Popen(
            [*RECO, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=serve_log, stderr=serve_log
        )
        worker = subprocess.Popen(
            [sys.executable, "-m", "app.trainer"], cwd=ROOT, env=env, stdout=worker_log, stderr=worker_log
        )
        try:
            wait_up(base, server)
            time.sleep(3.0)  # let the worker import torch and reach its idle poll, as a long-running one is
            admin = {"Authorization": f"Bearer {ADMIN}"}
            read = {"Authorization": f"Bearer {READ}"}
            with httpx.Client(base_url=base, timeout=60) as http:
                before = http.get(f"/v1/users/{user}/recommendations?k=10", headers=read).json()
                full = _retrain(http, {"mode": "full"}, user, admin, read)
                events = later
                for start in range(0, len(events), 500):
                    r = http.post("/v1/events", json={"events": events[start : start + 500]}, headers=admin)
                    r.raise_for_status()
                incremental = _retrain(http, {}, user, admin, read)
        finally:
            for proc in (worker, server):
                proc.terminate()
            for proc in (worker, server):
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    return {
        "answer_before": before.get("strategy"),
        "full": full,
        "incremental": incremental,
        "new_events": len(events),
    }


def table(result: dict[str, Any]) -> str:
    """The Markdown section for docs/BENCHMARKS.md."""
    m = result["measure"]
    full, inc = m["full"], m["incremental"]
    cfg = result["config"]
    load = result.get("load_average")
    busy = f" Load average before/after: {load[0]:.1f}/{load[1]:.1f} (the 2 CPUs are shared)." if load else ""

    def cell(r: dict[str, Any], key: str, digits: int = 1) -> str:
        value = r["stages_s"].get(key)
        return "-" if value is None else f"{value:.{digits}f}"

    rows = [
        ("queue wait (POST -> a worker claims the job)", "queue_wait", 1),
        ("read the store (stream interactions + items, clean)", "read_store", 1),
        ("train (validation stage)", "train", 1),
        ("refit (continued on all interactions)", "refit", 1),
        ("write the artifact (atomic)", "save_artifact", 2),
        ("activation -> the API serves it (registry poll + load + index)", "activation_to_serving", 1),
    ]
    lines = [
        SECTION,
        "",
        f"Command: `{result['command']}` (JSON in `{result['json']}`).",
        f"Machine: {result['machine']}; store {result['store']}; device {result['device']}. "
        f"ml-100k's first 90% by time imported into the store first ({result['import']['events']:,} events, "
        f"{result['import']['items']:,} items, {result['import']['import_s']:.1f} s); `reco serve` (1 process) "
        "and a separate `python -m app.trainer` with the production poll intervals (worker 2 s, model 2 s). "
        f'First a full retrain (`{{"mode": "full"}}`), then {m["new_events"]:,} new events through '
        "`POST /v1/events` (the last 10% of ml-100k by time, held back from the import) and a retrain with the "
        "default mode.",
        f"Training settings: {cfg}.{busy}",
        "",
        f"| stage | full | {inc['mode']} |",
        "|---|---:|---:|",
    ]
    lines += [f"| {label} | {cell(full, key, d)} | {cell(inc, key, d)} |" for label, key, d in rows]
    lines += [
        f"| **POST /v1/admin/retrain -> answers carry the new version** | **{full['total_s']:.1f}** | "
        f"**{inc['total_s']:.1f}** |",
        "",
        f"- Goals: full < 120 s: {'met' if full['total_s'] < 120 else 'NOT met'}; incremental < 30 s: "
        f"{'met' if inc['total_s'] < 30 and inc['mode'] == 'incremental' and inc['model_status'] == 'active' else 'NOT met'} "
        f"(mode {inc['mode']}: {inc['mode_reason']}; {inc['users_with_new_events']} users with new events).",
        f"- Validation NDCG@10 (each user's latest item, full ranking): full "
        f"{full['valid_metrics'].get('valid_NDCG@10', 0):.4f}, incremental "
        f"{inc['valid_metrics'].get('valid_NDCG@10', 0):.4f}; both {full['model_status']}/{inc['model_status']} "
        "after the same quality gate.",
        "- GPU: not measured (no GPU was lent to this session).",
    ]
    return "\n".join(lines) + "\n"


def update_docs(path: Path, section: str) -> None:
    """Replace (or append) this benchmark's section of docs/BENCHMARKS.md."""
    update_section(path, SECTION, section)


def main() -> int:
    """Parse the options, run the benchmark once, write JSON (and the docs section)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--store", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--pg-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the worker")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--max-len", type=int, default=None)
    parser.add_argument("--dim", type=int, default=None)
    parser.add_argument("--time-budget", type=float, default=None, help="seconds of the train stage at most")
    parser.add_argument("--user", default="1", help="the user whose answers are polled")
    parser.add_argument("--out", type=Path, default=Path("var/bench/retrain.json"))
    parser.add_argument("--update-docs", action="store_true", help="rewrite the Retraining section")
    args = parser.parse_args()
    if not (args.data / "ml-100k.inter").is_file() and not (args.data / "u.data").is_file():
        raise SystemExit(f"--data: no MovieLens files in {args.data}")
    train_env = {
        "RECO_TRAIN_THREADS": args.threads,
        "RECO_TRAIN_DEVICE": args.device,
        "RECO_TRAIN_EPOCHS": args.epochs,
        "RECO_TRAIN_MAX_LEN": args.max_len,
        "RECO_TRAIN_DIM": args.dim,
        "RECO_TRAIN_TIME_BUDGET_S": args.time_budget,
    }
    train_env = {k: str(v) for k, v in train_env.items() if v is not None}
    load_before = os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="reco-bench-retrain-"))
    try:
        store = sqlite_store(work) if args.store == "sqlite" else private_postgres(args.pg_url)
        with store as url:
            settings = Settings(database_url=url, artifact_dir=work / "artifacts")
            print(f"importing {args.data} into {args.store} ...", flush=True)
            imported = import_movielens(settings, args.data)
            env = {k: v for k, v in os.environ.items() if not k.startswith("RECO_")}
            env.update(
                {
                    "PYTHONPATH": str(ROOT),
                    "RECO_DATABASE_URL": url,
                    "RECO_ARTIFACT_DIR": str(work / "artifacts"),
                    "RECO_API_KEYS": f"{ADMIN}:admin+ingest,{READ}:read",
                    "RECO_EMBEDDED_WORKER": "false",
                    **train_env,
                }
            )
            port = 18000 + os.getpid() % 1000
            print("retraining ...", flush=True)
            measured = measure(env, port, args.user, work, imported["later"])
    finally:
        shutil.rmtree(work, ignore_errors=True)
    command = "PYTHONPATH=. .venv/bin/python scripts/bench_retrain.py " + " ".join(sys.argv[1:])
    result = {
        "command": command.strip(),
        "json": str(args.out),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}",
        "store": args.store,
        "device": "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu",
        "config": ", ".join(f"{k}={v}" for k, v in train_env.items()) + " (the rest: the model's defaults)",
        "import": {k: v for k, v in imported.items() if k != "later"},
        "load_average": [load_before, os.getloadavg()[0]],
        "measure": measured,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    section = table(result)
    print(section)
    if args.update_docs:
        update_docs(ROOT / "docs" / "BENCHMARKS.md", section)
    return 0


if __name__ == "__main__":
    sys.exit(main())
