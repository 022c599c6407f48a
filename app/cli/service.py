"""`reco serve`."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from types import FrameType

from app.api.server import serve, server_config
from app.db.engine import make_engine
from app.db.migrate import upgrade
from app.settings import load_settings


def register(commands: argparse._SubParsersAction) -> None:
    """Add the serving commands."""
    serve = commands.add_parser(
        "serve",
        help="run the API",
        description="Run the HTTP API (and, in embedded mode, the trainer). Settings: RECO_* variables.",
    )
    add_server_options(serve)
    serve.set_defaults(handler=cmd_serve)


def add_server_options(parser: argparse.ArgumentParser) -> None:
    """--host, --port, --workers."""
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")


def run_server(host: str, port: int, workers: int) -> None:
    """Upgrade the embedded store if needed, then run uvicorn with the app factory."""
    settings = load_settings()
    if workers > 1 and settings.vector_engine_is_lite:
        raise SystemExit(
            "invalid configuration:\n  RECO_VECTOR_ENGINE: milvus-lite opens its file in one process only; "
            "with --workers N use a Milvus server (milvus://host:19530) or faiss"
        )
    if settings.is_sqlite:
        engine = make_engine(settings)
        upgrade(engine)
        engine.dispose()
    made_dir = prepare_multiprocess_metrics() if workers > 1 else None
    trainer = start_embedded_worker() if settings.run_embedded_worker else None
    if trainer is not None:
        # uvicorn ends by re-raising SIGTERM with our handler back in place: stop the worker, then die as asked.
        def on_sigterm(signum: int, _frame: FrameType | None) -> None:
            stop_embedded_worker(trainer)
            if made_dir is not None:
                shutil.rmtree(made_dir, ignore_errors=True)
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        serve(server_config(settings, host, port, workers))
    finally:
        if trainer is not None:
            stop_embedded_worker(trainer)
        if made_dir is not None:
            shutil.rmtree(made_dir, ignore_errors=True)


def prepare_multiprocess_metrics() -> str | None:
    """One scrape covers every worker: prometheus_client's multiprocess mode, in PROMETHEUS_MULTIPROC_DIR (a
    fresh temporary directory unless set, removed when the server stops; returned), emptied before the workers
    start."""
    made = None
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if not path:
        path = made = tempfile.mkdtemp(prefix="reco-metrics-")
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.remove(os.path.join(path, name))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return made


def start_embedded_worker() -> subprocess.Popen[bytes]:
    """Start `python -m app.trainer` beside the API (embedded mode); it reads the same settings."""
    # Its own session: a Ctrl-C of the terminal reaches the API only; we then stop the worker with one SIGTERM.
    # --parent-pid makes it stop by itself if this process dies without stopping it.
    return subprocess.Popen(
        [sys.executable, "-m", "app.trainer", "--parent-pid", str(os.getpid())], start_new_session=True
    )


def stop_embedded_worker(process: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    """SIGTERM (a job in progress goes back to the queue), then SIGKILL after `grace_s`."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def cmd_serve(args: argparse.Namespace) -> int:
    """Serve until interrupted."""
    run_server(args.host, args.port, args.workers)
    return 0
