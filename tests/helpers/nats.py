"""A private nats-server with JetStream (file storage in a temporary directory), started and killed by a test."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tests.helpers.servers import free_port, wait_for_port


class NatsServer:
    """`nats-server -js` on a free port; `kill()` (SIGKILL) and `start()` again keep the same port and store."""

    def __init__(self, store: Path) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            raise FileNotFoundError("nats-server is not installed")
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


@contextmanager
def private_nats() -> Iterator[NatsServer]:
    """A running private NATS JetStream server; killed and its store removed at the end."""
    store = Path(tempfile.mkdtemp(prefix="reco-nats-"))
    server = NatsServer(store)
    try:
        server.start()
        yield server
    finally:
        server.kill()
        shutil.rmtree(store, ignore_errors=True)
