"""Two `reco serve` replicas behind Debian's HAProxy (deploy/haproxy.cfg, the file the compose profile `scale`
mounts), sharing one PostgreSQL database and one Redis; one replica gets SIGKILL under load.

Load through the balancer: threads asking for recommendations (GET, never retried by the client) and threads
posting event batches with event_ids (a batch that got no 2xx is re-sent by the client with the same ids, as a
real client does; POSTs are not replayed by the balancer). Proves, first, that the kill happened and was seen
(the process is gone, HAProxy marks the replica DOWN, and it had to retry requests), then what survived: every
GET was answered 200 (the ones the dead replica dropped were retried on the other one), every acknowledged
event is in the database exactly once (counted by event_id).
"""

from __future__ import annotations

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
from tests.helpers.balancer import balanced, haproxy_binary

pytestmark = pytest.mark.skipif(not PG_URL, reason="RECO_TEST_DATABASE_URL is not set")

LOAD_BEFORE_S = 2.0  # load before the kill
LOAD_AFTER_S = 3.0  # and after it


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


def test_killing_one_replica_loses_no_retried_request_and_no_acknowledged_event(
    pg_database: str, redis_prefix: str, tmp_path: Path, haproxy: str
) -> None:
    _truncate(pg_database)
    env = {
        "RECO_DATABASE_URL": pg_database,
        "RECO_API_KEYS": STATIC_KEYS,
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "RECO_LOG_LEVEL": "WARNING",
    }
    if REDIS_URL:  # both replicas share the cache too, as in production
        env |= {"RECO_REDIS_URL": REDIS_URL, "RECO_REDIS_PREFIX": redis_prefix}
    with balanced(env) as (lb, (victim, survivor)):
        stop = threading.Event()
        readers = [Reader(n, lb.base, stop) for n in range(3)]
        writers = [Writer(n, lb.base, stop) for n in range(2)]
        for thread in (*readers, *writers):
            thread.start()
        time.sleep(LOAD_BEFORE_S)
        before = lb.stats()
        assert int(before["reco_api/api1"]["stot"]) > 0 and int(before["reco_api/api2"]["stot"]) > 0

        victim.kill9()
        marked_down_s = lb.wait("api1", "DOWN", timeout=10)
        time.sleep(LOAD_AFTER_S)
        stop.set()
        for thread in (*readers, *writers):
            thread.join(timeout=30)
            assert not thread.is_alive()
        after = lb.stats()

    # the fault was met and seen
    assert victim.proc.returncode == -9
    assert survivor.proc.returncode is not None  # stopped by us at the end, after the load
    backend = after["reco_api/BACKEND"]
    retried = int(backend["wretr"]) + int(backend["wredis"])
    assert retried > 0, "HAProxy never had to retry: the kill hit no traffic"
    assert int(after["reco_api/api2"]["stot"]) > int(before["reco_api/api2"]["stot"])

    # no GET lost: each was answered 200, the dropped ones after HAProxy retried them on the survivor
    gets: Counter[str] = Counter()
    for reader in readers:
        gets.update(reader.statuses)
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

    failed: Counter[str] = Counter()
    for writer in writers:
        failed.update(writer.failed)
    print(
        f"\nbalancer: {gets['200']} GETs all 200, HAProxy retries {backend['wretr']} redispatches "
        f"{backend['wredis']}, api1 DOWN {marked_down_s:.2f} s after SIGKILL; {len(acked)} events acknowledged, "
        f"all stored once; POSTs not acknowledged then re-sent with the same ids: "
        f"{sum(w.resent for w in writers)} ({dict(failed)}), events already stored among them: "
        f"{sum(w.answered_as_duplicates for w in writers)}"
    )
