"""kill -9 of each component of the event-log path under load, and a database outage, counted.

One `reco serve` (RECO_EVENT_LOG_URL on a private nats-server) and one `reco consume`, both reaching PostgreSQL
through a TCP proxy, take batches from three clients that re-send a failed batch with the same ids until it
is acknowledged. While the load runs: the consumer gets SIGKILL and is started again; then the API; then the
database is cut (for the consumer and the API) until five more batches were acknowledged, and restored. Each
fault is first shown to have hit (the kill's exit status and rows still missing then; requests that failed;
connections refused while cut, no row written meanwhile while the API kept acknowledging); then every
acknowledged event is in the table once and the per-minute rollup counted each stored row once."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

from tests.conftest import INGEST_KEY, PG_URL, REDIS_URL, STATIC_KEYS, _truncate
from tests.eventlog.support import Api, Load, consumer, count_rows, rollup_total, stored_ids, wait_until
from tests.helpers.nats import NatsServer, private_nats
from tests.helpers.proxy import TcpProxy

pytestmark = pytest.mark.skipif(
    not (PG_URL and REDIS_URL), reason="needs RECO_TEST_DATABASE_URL and _REDIS_URL"
)


@pytest.fixture
def nats_server() -> Iterator[NatsServer]:
    with private_nats() as server:
        yield server


def test_sigkill_of_consumer_and_api_and_a_database_cut_lose_and_double_no_acknowledged_event(
    pg_database: str, nats_server: NatsServer, redis_prefix: str
) -> None:
    _truncate(pg_database)
    parts = urlsplit(pg_database)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    via_proxy = pg_database.replace(f"{parts.hostname}:{parts.port}", f"127.0.0.1:{proxy.port}", 1)
    tag = uuid.uuid4().hex[:8]
    assert REDIS_URL
    env = {
        "RECO_DATABASE_URL": via_proxy,
        "RECO_REDIS_URL": REDIS_URL,
        "RECO_REDIS_PREFIX": redis_prefix,
        "RECO_API_KEYS": STATIC_KEYS,
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_EVENT_LOG_URL": nats_server.url,
        "RECO_EVENT_LOG_STREAM": f"KILL_{tag}",
        "RECO_EVENT_LOG_SUBJECT": f"kill.{tag}.events",
        "RECO_EVENT_LOG_DURABLE": f"consume-{tag}",
        "RECO_EVENT_LOG_ACK_WAIT_S": "2",
        "RECO_LOG_LEVEL": "WARNING",
        "RECO_MODEL_POLL_SECONDS": "0",
        "RECO_CATALOG_POLL_SECONDS": "0",
        "RECO_POPULAR_POLL_SECONDS": "0",
    }
    api = Api(env)
    worker = consumer(env)
    load = Load(api.base, INGEST_KEY, clients=3, batch=20, prefix=f"k{tag}")
    try:
        try:
            api.start_ready()
            worker.start()
            worker.wait_for_line("consuming stream")
            load.start()
            time.sleep(2.0)

            # 1. the consumer, mid-write
            assert worker.sigkill() == -9
            acked_then, stored_then = len(load.acked), count_rows(pg_database, load.prefix)[0]
            assert stored_then > 0, "the consumer stored nothing before the kill: it proved nothing"
            time.sleep(1.0)  # the API keeps acknowledging meanwhile
            assert len(load.acked) > acked_then
            worker = consumer(env)
            worker.start()
            wait_until(
                lambda: count_rows(pg_database, load.prefix)[0] >= acked_then, 30, "the restarted consumer"
            )

            # 2. the API, mid-request
            failed_before = load.failed
            assert api.sigkill() == -9
            time.sleep(0.5)
            api.start_ready()
            time.sleep(1.0)
            assert load.failed > failed_before, "no request failed: the API kill hit nothing"

            # 3. the database, for the consumer and the API: the API keeps acknowledging, nothing is written
            proxy.cut()
            cut_at = time.monotonic()
            time.sleep(0.3)  # a commit that was on its way has landed
            rows_at_cut = count_rows(pg_database, load.prefix)[0]
            acked_at_cut = len(load.acked)
            time.sleep(1.0)
            wait_until(lambda: len(load.acked) - acked_at_cut >= 5 * 20, 20, "batches acknowledged while cut")
            rows_during = count_rows(pg_database, load.prefix)[0]
            during = [status for at, status in load.statuses if at > cut_at]
            proxy.restore()
            assert proxy.seen > 0, "nobody tried the database while it was cut"
            assert during and set(during) == {200}, f"the API did not answer every batch while cut: {during}"
            assert rows_during == rows_at_cut, "rows were written while the database was cut"
            time.sleep(1.0)
        finally:
            load.stop()
        acked = load.acked
        wait_until(
            lambda: count_rows(pg_database, load.prefix)[0] >= len(acked),
            60,
            "every acknowledged event stored",
        )
        time.sleep(1.0)  # anything still in flight lands too
        rows, distinct = count_rows(pg_database, load.prefix)
        stored = stored_ids(pg_database, load.prefix)
        assert len(acked) > 500
        assert acked - stored == set()  # nothing acknowledged is lost
        assert stored <= load.sent  # nothing came from elsewhere
        assert rows == distinct  # nothing doubled
        total, all_rows = rollup_total(pg_database)
        assert total == all_rows == rows  # and every stored row counted once in the rollup
    finally:
        worker.close()
        api.close()
        proxy.close()
