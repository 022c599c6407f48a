"""Servers a test starts and stops itself (never the shared ones): a private redis-server, uvicorn."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
# Small, fast training for a `reco serve` with the embedded trainer: a retrain finishes in seconds on two cores.
FAST_TRAINING = {
    "RECO_TRAIN_TIME_BUDGET_S": "8",
    "RECO_TRAIN_EPOCHS": "4",
    "RECO_TRAIN_DIM": "16",
    "RECO_TRAIN_MAX_LEN": "20",
    "RECO_TRAIN_MEMBERS": "1",
    "RECO_TRAIN_BATCH_SIZE": "64",
    "RECO_TRAIN_THREADS": "1",
    "RECO_TRAIN_DEVICE": "cpu",
    "RECO_TRAIN_PATIENCE": "2",
}
RECO = [sys.executable, "-c", "import sys; from app.cli import main; sys.exit(main())"]  # `reco ...`


def free_port() -> int:
    """A TCP port nobody listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Block until something accepts connections on 127.0.0.1:port."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@contextmanager
def private_redis() -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """A throwaway `redis-server` on a free port, without persistence; killed at the end."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise FileNotFoundError("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--save", "", "--appendonly", "no", "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port)
        yield proc, port
    finally:
        proc.kill()
        proc.wait(timeout=10)


@contextmanager
def uvicorn_server(env: dict[str, str], workers: int = 1) -> Iterator[str]:
    """`reco serve` in a subprocess with `env` (RECO_* settings) on a free port; yields its base URL."""
    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*RECO, "serve", "--port", str(port), "--workers", str(workers)],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 90  # generous: a loaded 2-core machine imports torch slowly
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    err = log.read().decode(errors="replace")
                    raise RuntimeError(f"reco serve exited with {proc.returncode}: {err[-2000:]}")
                try:
                    if httpx.get(base + "/healthz", timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError("reco serve did not start within 90 s")
                time.sleep(0.1)
            yield base
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)


@contextmanager
def reco_serve(
    env: dict[str, str], workers: int = 1, ready_path: str = "/readyz", timeout: float = 60.0
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """`reco serve` in its own process group on a free port, until `ready_path` answers 200; yields the process
    and its base URL. Stopped (SIGTERM, then SIGKILL of the group) at the end unless already gone."""
    port = free_port()
    full_env = {**os.environ, **env, "PYTHONPATH": str(ROOT)}
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            [*RECO, "serve", "--port", str(port), "--workers", str(workers)],
            cwd=ROOT,
            env=full_env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    err = log.read().decode(errors="replace")
                    raise RuntimeError(f"reco serve exited with {proc.returncode}: {err[-2000:]}")
                try:
                    if httpx.get(base + ready_path, timeout=0.5).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"reco serve was not ready within {timeout} s")
                time.sleep(0.1)
            yield proc, base
        finally:
            if proc.poll() is None:
                proc.terminate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=15)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # workers left behind by a SIGKILLed supervisor
            proc.wait(timeout=10)
