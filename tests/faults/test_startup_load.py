"""`reco serve --workers 2` comes up on a busy machine without a worker being killed (issue 11, item 4).

One busy process per CPU hog the CPUs while the server starts; /readyz must answer within a bound and the log must
show no worker death (uvicorn logs "Child process [pid] died" when its health check kills a worker).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.helpers.servers import RECO, ROOT, free_port

BOUND_S = 30.0


def test_two_workers_start_under_a_cpu_hog(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "RECO_DATABASE_URL": f"sqlite:///{tmp_path / 'reco.db'}",
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "RECO_LOG_LEVEL": "INFO",
    }
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    log_path = tmp_path / "serve.log"
    port = free_port()
    try:
        time.sleep(0.3)
        assert all(p.poll() is None for p in hogs)  # the load is real while the server starts
        with log_path.open("wb") as log:
            server = subprocess.Popen(
                [*RECO, "serve", "--port", str(port), "--workers", "2"],
                cwd=ROOT,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        try:
            started = time.monotonic()
            ready = None
            while time.monotonic() - started < BOUND_S and server.poll() is None:
                try:
                    ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
                    break
                except httpx.TransportError:
                    time.sleep(0.2)
            took = time.monotonic() - started
            time.sleep(1.0)  # one more supervisor health-check round with the hog still on
        finally:
            server.terminate()
            server.wait(timeout=20)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait(timeout=10)
    text = log_path.read_text(errors="replace")
    assert ready in (200, 503), f"no /readyz answer within {BOUND_S} s: {text[-2000:]}"
    assert text.count("Started server process") >= 2, text[-2000:]  # both workers started
    deaths = text.count(" died") + text.count("was not ready in time")
    assert deaths == 0, f"{deaths} worker deaths in {took:.1f} s: {text[-2000:]}"
