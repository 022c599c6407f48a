"""`reco serve` replicas behind Debian's HAProxy running deploy/haproxy.cfg, all on loopback free ports
(shared by tests/faults/test_balancer.py and scripts/bench_balancer.py)."""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import httpx

from tests.helpers.servers import RECO, ROOT, free_port

HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"


def haproxy_binary() -> str:
    """Debian's haproxy (`apt-get install haproxy`), or FileNotFoundError."""
    found = shutil.which("haproxy") or ("/usr/sbin/haproxy" if Path("/usr/sbin/haproxy").is_file() else None)
    if found is None:
        raise FileNotFoundError("haproxy is not installed (apt-get install haproxy)")
    return found


class Replica:
    """One `reco serve` in its own process group (a SIGKILL of the group takes every worker)."""

    def __init__(self, env: dict[str, str], workers: int = 1, port: int | None = None) -> None:
        self.port = port or free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [*RECO, "serve", "--port", str(self.port), "--workers", str(workers)],
            cwd=ROOT,
            env={**os.environ, **env, "PYTHONPATH": str(ROOT)},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"reco serve exited: {self.log.read().decode(errors='replace')[-2000:]}")
            with suppress(httpx.TransportError):
                if httpx.get(self.base + "/readyz", timeout=1).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise TimeoutError(f"reco serve on {self.port} not ready within {timeout} s")
            time.sleep(0.1)

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            with suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=15)
        with suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        self.log.close()


class Balancer:
    """HAProxy with deploy/haproxy.cfg in front of two replicas; `stats()` reads its CSV stats page."""

    def __init__(self, first: str, second: str) -> None:
        self.port, self.stats_port = free_port(), free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "RECO_LB_BIND": f"127.0.0.1:{self.port}",
            "RECO_LB_STATS": f"127.0.0.1:{self.stats_port}",
            "RECO_API_1": first,
            "RECO_API_2": second,
        }
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 (closed by stop())
        self.proc = subprocess.Popen(
            [haproxy_binary(), "-db", "-f", str(HAPROXY_CFG)],
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def stats(self) -> dict[str, dict[str, str]]:
        """Rows of HAProxy's stats, by `backend/server` (the backend itself: `reco_api/BACKEND`)."""
        text = httpx.get(f"http://127.0.0.1:{self.stats_port}/stats;csv", timeout=2).text
        rows = csv.DictReader(io.StringIO(text.lstrip("# ")))
        return {f"{r['pxname']}/{r['svname']}": r for r in rows}

    def wait(self, server: str, status: str, timeout: float = 15.0) -> float:
        """Until `reco_api/<server>` has `status` (UP, DOWN); returns the seconds it took."""
        start = time.monotonic()
        while True:
            with suppress(httpx.TransportError):
                if self.stats()[f"reco_api/{server}"]["status"] == status:
                    return time.monotonic() - start
            if self.proc.poll() is not None:
                raise RuntimeError(f"haproxy exited: {self.output()[-2000:]}")
            if time.monotonic() - start > timeout:
                raise TimeoutError(f"{server} not {status} after {timeout} s: {self.output()[-2000:]}")
            time.sleep(0.05)

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


@contextmanager
def balanced(env: dict[str, str], workers: int = 1) -> Iterator[tuple[Balancer, list[Replica]]]:
    """Two replicas with `env` (started together), HAProxy in front, both seen UP by its health checks. The
    list is the caller's: a replica it puts in place of one (same port) is stopped at the end too."""
    replicas = [Replica(env, workers), Replica(env, workers)]
    balancer: Balancer | None = None
    try:
        for replica in replicas:
            replica.wait_ready()
        balancer = Balancer(f"127.0.0.1:{replicas[0].port}", f"127.0.0.1:{replicas[1].port}")
        balancer.wait("api1", "UP")
        balancer.wait("api2", "UP")
        yield balancer, replicas
    finally:
        if balancer is not None:
            balancer.stop()
        for replica in replicas:
            replica.stop()
