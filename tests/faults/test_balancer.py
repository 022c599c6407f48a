"""Two `reco serve` replicas behind Debian's HAProxy (deploy/haproxy.cfg, the file the compose profile `scale`
mounts), sharing one PostgreSQL database and one Redis; under load one replica gets SIGTERM (it drains), comes
back, then the other gets SIGKILL.

Load through the balancer: threads asking for recommendations (GET, never retried by the client) and threads
posting event batches with event_ids (a batch that got no 2xx is re-sent by the client with the same ids, as a
real client does; POSTs are not replayed by the balancer). Proves:
- drain: the SIGTERMed replica is marked DOWN by HAProxy's /readyz check and exits; no request failed at all
  meanwhile, GET or POST (nothing needed a retry or a re-send);
- kill: first that it happened and was seen (the process is gone, HAProxy marks the replica DOWN, and it had to
  retry requests), then what survived: every GET was answered 200 (the ones the dead replica dropped were
  retried on the other one), every acknowledged event is in the database exactly once (counted by event_id).
"""

from __future__ import annotations

import signal
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import orjson
import pytest
import sqlalchemy as sa

from app.db.engine import make_engine
from app.settings import Settings
from tests.conftest import ADMIN_KEY, IN_CI, PG_URL, READ_KEY, REDIS_URL, STATIC_KEYS, _truncate
from tests.helpers.balancer import Replica, balanced, haproxy_binary

pytestmark = pytest.mark.skipif(not PG_URL, reason="RECO_TEST_DATABASE_URL is not set")

LOAD_S = 1.0  # load between the steps
DRAIN_S = 3.0  # RECO_DRAIN_S: above HAProxy's time to take a replica out (2 checks, 1 s apart)


@pytest.fixture
def haproxy() -> str:
    try:
        return haproxy_binary()
    except FileNotFoundError:
        if IN_CI:
            raise
        pytest.skip("haproxy is not installed")


class Reader(threading.Thread):
    """GETs recommendations through the balancer over one keep-alive connection; no retry of its own."""

    def __init__(self, n: int, base: str, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.n, self.base, self.stop_flag = n, base, stop
        self.statuses: Counter[str] = Counter()

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {READ_KEY}"}
        with httpx.Client(base_url=self.base, headers=headers, timeout=20) as client:
            k = 0
            while not self.stop_flag.is_set():
                k += 1
                try:
                    r = client.get(f"/v1/users/u{self.n}-{k % 40}/recommendations", params={"k": 5})
                    self.statuses[str(r.status_code)] += 1
                except httpx.TransportError as exc:
                    self.statuses[type(exc).__name__] += 1


class Writer(threading.Thread):
    """Posts batches with unique event_ids; a batch not answered 2xx is re-sent with the same ids."""

    def __init__(self, n: int, base: str, stop: threading.Event, batch: int = 20) -> None:
        super().__init__(daemon=True)
        self.n, self.base, self.stop_flag, self.batch = n, base, stop, batch
        self.acked: list[str] = []
        self.failed: Counter[str] = Counter()  # why a POST was not acknowledged (then re-sent)
        self.resent = 0
        self.answered_as_duplicates = 0  # events of re-sent batches already stored before the cut answer

    def run(self) -> None:
        headers = {"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"}
        seq = 0
        with httpx.Client(base_url=self.base, headers=headers, timeout=20) as client:
            while not self.stop_flag.is_set():
                seq += 1
                ids = [f"w{self.n}-{seq}-{j}" for j in range(self.batch)]
                events = [
                    {
                        "event_id": i,
                        "user_id": f"u{self.n}-{j % 40}",
                        "item_id": f"i{j % 30}",
                        "type": "click",
                    }
                    for j, i in enumerate(ids)
                ]
                body = orjson.dumps({"events": events})
                for attempt in range(50):
                    if attempt:
                        self.resent += 1
                        time.sleep(0.05)
                    try:
                        r = client.post("/v1/events", content=body)
                    except httpx.TransportError as exc:
                        self.failed[type(exc).__name__] += 1
                        continue
                    if 200 <= r.status_code < 300:
                        self.acked.extend(ids)
                        self.answered_as_duplicates += int(r.json().get("duplicates", 0))
                        break
                    self.failed[str(r.status_code)] += 1
                else:
                    raise AssertionError(f"batch {seq} never acknowledged: {self.failed}")


def _snapshot(readers: list[Reader], writers: list[Writer]) -> tuple[Counter[str], Counter[str]]:
    gets: Counter[str] = Counter()
    for reader in readers:
        gets.update(reader.statuses.copy())
    failed: Counter[str] = Counter()
    for writer in writers:
        failed.update(writer.failed.copy())
    return gets, failed


def test_a_draining_replica_drops_nothing_and_a_killed_one_loses_nothing_acknowledged(
    pg_database: str, redis_prefix: str, tmp_path: Path, haproxy: str
) -> None:
    _truncate(pg_database)
    env = {
        "RECO_DATABASE_URL": pg_database,
        "RECO_API_KEYS": STATIC_KEYS,
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "RECO_LOG_LEVEL": "WARNING",
        "RECO_DRAIN_S": str(DRAIN_S),
    }
    if REDIS_URL:  # both replicas share the cache too, as in production
        env |= {"RECO_REDIS_URL": REDIS_URL, "RECO_REDIS_PREFIX": redis_prefix}
    with balanced(env) as (lb, replicas):
        stop = threading.Event()
        readers = [Reader(n, lb.base, stop) for n in range(3)]
        writers = [Writer(n, lb.base, stop) for n in range(2)]
        for thread in (*readers, *writers):
            thread.start()
        time.sleep(LOAD_S)
        first = lb.stats()
        assert int(first["reco_api/api1"]["stot"]) > 0 and int(first["reco_api/api2"]["stot"]) > 0

        # 1. SIGTERM of api2: it drains (/readyz 503), HAProxy's checks take it out, then it stops
        leaving = replicas[1]
        leaving.proc.send_signal(signal.SIGTERM)
        drained_down_s = lb.wait("api2", "DOWN", timeout=DRAIN_S + 5)
        check = lb.stats()["reco_api/api2"]
        # taken out by its health check answering 503 (L7STS), not by refused connections (L4CON)
        assert check["check_status"] == "L7STS", check
        assert leaving.proc.wait(timeout=30) is not None
        leaving.stop()
        time.sleep(0.5)
        gets_1, failed_1 = _snapshot(readers, writers)
        assert set(gets_1) == {"200"}, gets_1  # nothing routed to it was dropped...
        assert not failed_1, failed_1  # ...nor any POST: none needed a re-send

        replicas[1] = Replica(env, port=leaving.port)  # back, on the address HAProxy knows
        replicas[1].wait_ready()
        lb.wait("api2", "UP", timeout=15)
        time.sleep(LOAD_S)
        before = lb.stats()

        # 2. SIGKILL of api1 mid-load
        victim = replicas[0]
        victim.kill9()
        killed_down_s = lb.wait("api1", "DOWN", timeout=10)
        time.sleep(LOAD_S)
        stop.set()
        for thread in (*readers, *writers):
            thread.join(timeout=30)
            assert not thread.is_alive()
        after = lb.stats()

    # the kill was met and seen: the process is gone, HAProxy took it out and had to retry requests
    assert victim.proc.returncode == -9
    backend, before_backend = after["reco_api/BACKEND"], before["reco_api/BACKEND"]
    retried = int(backend["wretr"]) + int(backend["wredis"]) - int(before_backend["wretr"])
    retried -= int(before_backend["wredis"])
    assert retried > 0, "HAProxy never had to retry: the kill hit no traffic"
    assert int(after["reco_api/api2"]["stot"]) > int(before["reco_api/api2"]["stot"])

    # no GET lost: each was answered 200, the dropped ones after HAProxy retried them on the survivor
    gets, failed = _snapshot(readers, writers)
    assert set(gets) == {"200"}, gets
    assert gets["200"] > 50

    # every acknowledged event stored, once
    acked = [i for w in writers for i in w.acked]
    assert len(acked) > 100
    engine = make_engine(Settings(database_url=pg_database))
    try:
        with engine.connect() as conn:
            found = conn.execute(
                sa.text(
                    "SELECT count(*), count(DISTINCT event_id) FROM events WHERE event_id = ANY(CAST(:ids AS text[]))"
                ),
                {"ids": acked},
            ).one()
    finally:
        engine.dispose()
    assert tuple(found) == (len(acked), len(acked)), (found, len(acked))

    print(
        f"\nbalancer: drain: api2 DOWN {drained_down_s:.2f} s after SIGTERM, {gets_1['200']} GETs so far all 200, "
        f"no POST re-sent; kill: api1 DOWN {killed_down_s:.2f} s after SIGKILL, HAProxy retries+redispatches "
        f"{retried}; {gets['200']} GETs all 200; {len(acked)} events acknowledged, all stored once; POSTs not "
        f"acknowledged then re-sent with the same ids: {sum(w.resent for w in writers)} ({dict(failed)}), "
        f"events already stored among them: {sum(w.answered_as_duplicates for w in writers)}"
    )
