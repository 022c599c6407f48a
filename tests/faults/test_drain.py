"""SIGTERM drains `reco serve` (RECO_DRAIN_S): the process says it is leaving, finishes what it has, then stops.

Proves, on `reco serve --workers 2` (the supervisor forwards SIGTERM to each worker): during the drain
/readyz answers 503 `draining` while other requests are still answered (a load balancer's health check takes
the replica out of rotation, nothing routed to it is refused); after it, new connections are no longer served;
a request that was in progress when SIGTERM came (its body half sent) is still answered 200 and its event is
stored; then the process exits by itself.
"""

from __future__ import annotations

import signal
import socket
import sqlite3
import time
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import orjson

from tests.conftest import INGEST_KEY, STATIC_KEYS
from tests.helpers.servers import reco_serve

DRAIN_S = 1.5


def test_sigterm_drains_then_finishes_requests_in_progress(tmp_path: Path) -> None:
    db = tmp_path / "reco.db"
    env = {
        "RECO_DATABASE_URL": f"sqlite:///{db}",
        "RECO_API_KEYS": STATIC_KEYS,
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "RECO_LOG_LEVEL": "WARNING",
        "RECO_DRAIN_S": str(DRAIN_S),
        "RECO_SHUTDOWN_TIMEOUT_S": "10",
    }
    with reco_serve(env, workers=2) as (proc, base):
        port = urlsplit(base).port
        assert port is not None
        body = orjson.dumps(
            {"events": [{"event_id": "drain-1", "user_id": "u1", "item_id": "i1", "type": "view"}]}
        )
        head = (
            f"POST /v1/events HTTP/1.1\r\nHost: reco\r\nAuthorization: Bearer {INGEST_KEY}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        in_flight = socket.create_connection(("127.0.0.1", port), timeout=15)
        in_flight.sendall(head + body[:10])  # a request in progress: its body is not all there yet
        time.sleep(0.3)

        proc.send_signal(signal.SIGTERM)
        asked = time.monotonic()
        # the fault is seen: /readyz turns 503 `draining` at once, while the process still answers requests
        while True:
            r = httpx.get(base + "/readyz", timeout=2)
            if r.status_code == 503:
                break
            assert time.monotonic() - asked < 1.0, "/readyz never said draining"
            time.sleep(0.05)
        assert r.json()["error"]["code"] == "draining"
        assert httpx.get(base + "/healthz", timeout=2).status_code == 200
        assert proc.poll() is None

        # after the drain, new connections are not served any more
        while True:
            try:
                httpx.get(base + "/healthz", timeout=0.5)
            except httpx.TransportError:
                break
            assert time.monotonic() - asked < DRAIN_S + 5, "still serving new requests long after the drain"
            time.sleep(0.1)
        assert time.monotonic() - asked >= DRAIN_S - 0.1  # not before the drain was over

        # what was in progress is finished and answered
        in_flight.sendall(body[10:])
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = in_flight.recv(65536)
            if not chunk:
                break
            answer += chunk
        in_flight.close()
        status_line, _, rest = answer.partition(b"\r\n")
        assert status_line.split()[1] == b"200", answer[:500]
        assert orjson.loads(rest.partition(b"\r\n\r\n")[2])["accepted"] == 1

        assert proc.wait(timeout=15) is not None  # and the process stops by itself

    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM events WHERE event_id = 'drain-1'").fetchone() == (1,)
