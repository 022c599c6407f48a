"""Slow clients are dropped: connections that send partial headers are closed after RECO_HEADER_TIMEOUT_S, a
stalled body after RECO_BODY_TIMEOUT_S, while a normal request on the same server still succeeds.

Before app/api/server.py, uvicorn kept such connections open forever (issue 11, item 8).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import httpx

from tests.helpers.servers import uvicorn_server

HEADER_TIMEOUT_S = 1.0


def _env(tmp: Path) -> dict[str, str]:
    return {
        "RECO_DATABASE_URL": f"sqlite:///{tmp / 'reco.db'}",
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_ARTIFACT_DIR": str(tmp / "artifacts"),
        "RECO_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "RECO_BODY_TIMEOUT_S": str(HEADER_TIMEOUT_S),
        "RECO_LOG_LEVEL": "WARNING",
    }


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """True when the server closes `sock` (EOF or reset) within `seconds` (an error response may come first)."""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            if sock.recv(1024) == b"":
                return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False
    return False


def test_partial_headers_and_stalled_bodies_are_closed_while_others_are_served(tmp_path: Path) -> None:
    with uvicorn_server(_env(tmp_path)) as base:
        port = int(base.rsplit(":", 1)[1])
        slow = []
        for i in range(20):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")  # headers never end
            else:  # headers complete, body promised and never sent
                sock.sendall(b"POST /v1/events HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            slow.append(sock)
        started = time.monotonic()
        # The fault is real: the connections are open, held by the server, just after they were made.
        assert not any(_closed_within(sock, 0.05) for sock in slow[:4])
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        closed = [_closed_within(sock, HEADER_TIMEOUT_S + 3 - (time.monotonic() - started)) for sock in slow]
        elapsed = time.monotonic() - started
        assert all(closed), f"{closed.count(False)} of 20 slow connections still open after {elapsed:.1f} s"
        assert elapsed < HEADER_TIMEOUT_S + 3
        assert httpx.get(base + "/healthz", timeout=5).status_code == 200
        for sock in slow:
            sock.close()
