"""A real Redis Cluster a test starts and kills itself: three masters on free loopback ports, no replicas, no
persistence, each in its own temporary directory (its `--cluster-config-file` lives there)."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.servers import free_port, wait_for_port

REPLICAS_NONE = ("--cluster-replicas", "0", "--cluster-yes")
NODE_TIMEOUT_MS = 500  # how long a silent master takes to be marked failed (the default is 15 s)


@dataclass
class RedisClusterProcs:
    """The started masters: ports, processes, and the `RECO_REDIS_URL` that names them."""

    ports: list[int]
    procs: list[subprocess.Popen[bytes]]
    killed: set[int] = field(default_factory=set)  # killed or stopped: not asked any more

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in self.ports)

    def cli(self, port: int, *args: str, timeout: float = 5.0) -> str:
        """`redis-cli -p port args...` (bounded); its output."""
        done = subprocess.run(
            ["redis-cli", "-p", str(port), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        return done.stdout

    def info(self, port: int) -> dict[str, str]:
        """CLUSTER INFO of one node, as a dict."""
        out = self.cli(port, "cluster", "info")
        return dict(line.strip().split(":", 1) for line in out.splitlines() if ":" in line)

    def port_of_slot(self, slot: int) -> int:
        """The port of the master serving `slot` (asked of a live node)."""
        live = next(p for p in self.ports if p not in self.killed)
        for line in self.cli(live, "cluster", "nodes").splitlines():
            parts = line.split()
            if "master" not in parts[2]:
                continue
            port = int(parts[1].split("@", 1)[0].rsplit(":", 1)[1])
            for span in parts[8:]:
                if span.startswith("["):
                    continue
                low, _, high = span.partition("-")
                if int(low) <= slot <= int(high or low):
                    return port
        raise LookupError(f"no master serves slot {slot}")

    def kill(self, port: int) -> None:
        """SIGKILL one master."""
        proc = self.procs[self.ports.index(port)]
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        self.killed.add(port)

    def stop(self, port: int) -> None:
        """SIGSTOP one master: it keeps its sockets and answers nothing (a hung host); killed at the end."""
        self.procs[self.ports.index(port)].send_signal(signal.SIGSTOP)
        self.killed.add(port)

    def wait_marked_failed(self, port: int, timeout: float = 10.0) -> str:
        """Block until every live node marks `port` failed; returns the cluster_state a live node reports."""
        deadline = time.monotonic() + timeout
        while True:
            views = []
            for live in (p for p in self.ports if p not in self.killed):
                line = next(
                    (ln for ln in self.cli(live, "cluster", "nodes").splitlines() if f":{port}@" in ln), ""
                )
                views.append("fail" in line.split()[2].split(",") if line else False)
            if views and all(views):
                live = next(p for p in self.ports if p not in self.killed)
                return self.info(live).get("cluster_state", "")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster never marked :{port} failed")
            time.sleep(0.05)


def _node_args(port: int, node_dir: Path) -> list[str]:
    """One master's command line: loopback only, its own directory and cluster config, no persistence."""
    return [
        *("--port", str(port), "--bind", "127.0.0.1", "--dir", str(node_dir)),
        *("--cluster-enabled", "yes", "--cluster-config-file", str(node_dir / "nodes.conf")),
        *("--cluster-node-timeout", str(NODE_TIMEOUT_MS), "--cluster-require-full-coverage", "no"),
        *("--save", "", "--appendonly", "no"),
    ]


def _free_cluster_port(taken: list[int]) -> int:
    """A free port below 55536 whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        port = free_port()
        if port in taken or port + 10000 > 65535:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@contextmanager
def redis_cluster(masters: int = 3, timeout: float = 30.0) -> Iterator[RedisClusterProcs]:
    """Start `masters` cluster-enabled `redis-server`s, join them with `redis-cli --cluster create`, wait for
    cluster_state:ok everywhere; kill them all (SIGKILL) and remove their directories at the end.

    `cluster-require-full-coverage no`: with a master gone, the others keep serving their slots (a cache
    degrades by the missing third, it does not stop)."""
    binary, cli = shutil.which("redis-server"), shutil.which("redis-cli")
    if binary is None or cli is None:
        raise FileNotFoundError("redis-server and redis-cli are needed for a Redis Cluster")
    root = Path(tempfile.mkdtemp(prefix="reco-cluster-"))
    ports: list[int] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for n in range(masters):
            port = _free_cluster_port(ports)
            node_dir = root / str(n)
            node_dir.mkdir()
            procs.append(
                subprocess.Popen(
                    [binary, *_node_args(port, node_dir)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            ports.append(port)
        for port in ports:
            wait_for_port(port)
        created = subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), *REPLICAS_NONE],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if created.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed: {created.stdout[-1500:]}{created.stderr}")
        cluster = RedisClusterProcs(ports, procs)
        deadline = time.monotonic() + timeout
        while not all(cluster.info(p).get("cluster_state") == "ok" for p in ports):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster on {ports} never reached cluster_state:ok")
            time.sleep(0.05)
        yield cluster
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)
        shutil.rmtree(root, ignore_errors=True)
