"""A worker process: engine, signal handling, the loop (`reco worker`, `python -m app.trainer`)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

from app.db.engine import make_engine, make_sessionmaker
from app.db.migrate import upgrade
from app.settings import Settings
from app.trainer.worker import Worker

log = logging.getLogger(__name__)


def watch_parent(parent_pid: int, stop: threading.Event, interval_s: float = 1.0) -> threading.Thread:
    """Set `stop` once `parent_pid` is no longer our parent (the API process of embedded mode died)."""

    def watch() -> None:
        while not stop.wait(interval_s):
            if os.getppid() != parent_pid:
                log.warning("worker: parent process %d is gone, stopping", parent_pid)
                stop.set()

    thread = threading.Thread(target=watch, name="reco-parent-watch", daemon=True)
    thread.start()
    return thread


def run_worker(settings: Settings, *, once: bool = False, parent_pid: int | None = None) -> int:
    """Run a worker until SIGTERM/SIGINT (a job in progress goes back to the queue), or until idle with `once`."""
    engine = make_engine(settings)
    if settings.is_sqlite:
        upgrade(engine)  # embedded mode: the schema is always current
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if stop.is_set():
            raise KeyboardInterrupt  # a second signal: stop now, the lease will expire
        log.info("worker: %s received, stopping after the current epoch", signal.Signals(signum).name)
        stop.set()

    if parent_pid is not None:
        watch_parent(parent_pid, stop)
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return Worker(settings, make_sessionmaker(engine), stop=stop).run(once=once)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        engine.dispose()
