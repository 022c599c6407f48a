"""Processes and load for the event-log tests: `python -m app.eventlog` (reco consume), `reco serve`, clients."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import IO

import httpx
import psycopg

from tests.helpers.servers import RECO, ROOT, free_port

CONSUME = [sys.executable, "-m", "app.eventlog"]


class Proc:
    """A subprocess in its own process group, its output in a temporary file."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.argv = argv
        self.env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
        self.log: IO[bytes] = tempfile.TemporaryFile()  # noqa: SIM115  (closed in stop())
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv,
            cwd=ROOT,
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def wait_for_line(self, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.output():
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.argv} exited with {self.proc.returncode}: {self.output()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{text!r} not logged within {timeout} s: {self.output()[-3000:]}")
            time.sleep(0.1)

    def sigkill(self) -> int:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGTERM (SIGKILL after 10 s)."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)

    def close(self) -> None:
        self.stop()
        self.log.close()


def consumer(env: dict[str, str]) -> Proc:
    """`reco consume` (as `python -m app.eventlog`, which skips loading the training code)."""
    return Proc([*CONSUME, "--log-every", "1"], {**env, "RECO_LOG_LEVEL": "INFO"})


class Api(Proc):
    """`reco serve` on a fixed port (restarted on the same one after a kill)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        super().__init__([*RECO, "serve", "--port", str(self.port)], env)
        self.base = f"http://127.0.0.1:{self.port}"

    def start_ready(self, timeout: float = 60.0) -> None:
        self.start()
        deadline = time.monotonic() + timeout
        while True:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"reco serve exited with {self.proc.returncode}: {self.output()[-3000:]}")
            try:
                if httpx.get(self.base + "/healthz", timeout=0.5).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"reco serve did not start within {timeout} s")
            time.sleep(0.1)


class Load:
    """Client threads posting batches of unique event ids; a batch that fails is re-sent (same ids) until it is
    acknowledged, as a real client does. `acked` holds every acknowledged id; `statuses` what each try got."""

    def __init__(
        self,
        base: str,
        key: str,
        *,
        clients: int = 3,
        batch: int = 20,
        pause: float = 0.05,
        prefix: str = "ev",
    ) -> None:
        self.base, self.key, self.batch, self.pause, self.prefix = base, key, batch, pause, prefix
        self.acked: set[str] = set()
        self.sent: set[str] = set()
        self.failed = 0  # tries that got no 200 (cut, refused, 503)
        self.statuses: list[tuple[float, int]] = []  # (monotonic, status or 0 for a transport error)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(c,), daemon=True) for c in range(clients)]

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout)
        assert not any(t.is_alive() for t in self._threads), (
            "a client could not get its last batch acknowledged"
        )

    def _run(self, client: int) -> None:
        headers = {"Authorization": f"Bearer {self.key}"}
        with httpx.Client(timeout=5.0, headers=headers) as http:
            n = 0
            while not self._stop.is_set():
                ids = [f"{self.prefix}-{client}-{n}-{j}" for j in range(self.batch)]
                n += 1
                body = {
                    "events": [
                        {
                            "event_id": i,
                            "user_id": f"u{hash(i) % 50}",
                            "item_id": f"i{hash(i) % 200}",
                            "type": "view",
                        }
                        for i in ids
                    ]
                }
                with self._lock:
                    self.sent.update(ids)
                give_up = time.monotonic() + 25
                while time.monotonic() < give_up:
                    try:
                        status = http.post(self.base + "/v1/events", json=body).status_code
                    except httpx.TransportError:
                        status = 0
                    with self._lock:
                        self.statuses.append((time.monotonic(), status))
                        if status == 200:
                            self.acked.update(ids)
                            break
                        self.failed += 1
                    time.sleep(0.05)
                else:
                    return  # never acknowledged: the stop() assertion reports it
                time.sleep(self.pause)  # a steady load the consumer keeps up with


def count_rows(db_url: str, prefix: str) -> tuple[int, int]:
    """(rows, distinct ids) of events whose id starts with `prefix`."""
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        row = conn.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM events WHERE event_id LIKE %s", (prefix + "%",)
        ).fetchone()
    assert row is not None
    return int(row[0]), int(row[1])


def stored_ids(db_url: str, prefix: str) -> set[str]:
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        rows = conn.execute("SELECT event_id FROM events WHERE event_id LIKE %s", (prefix + "%",)).fetchall()
    return {r[0] for r in rows}


def rollup_total(db_url: str) -> tuple[int, int]:
    """(sum of the event_counts rollup, rows in events): equal when every stored row was counted once."""
    with psycopg.connect(db_url, connect_timeout=5) as conn:
        total = conn.execute("SELECT coalesce(sum(count), 0) FROM event_counts").fetchone()
        rows = conn.execute("SELECT count(*) FROM events").fetchone()
    assert total is not None and rows is not None
    return int(total[0]), int(rows[0])


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout} s")
        time.sleep(0.2)
