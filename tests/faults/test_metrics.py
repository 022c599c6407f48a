"""/metrics never blocks (issue 11, item 3), and one scrape covers every worker of `reco serve --workers 2`.

Proves: with the database hung, /metrics and /healthz still answer within 0.5 s (before, the scrape ran a
synchronous training_jobs query on the event loop and froze the worker); and under `--workers 2` requests
spread over both workers (each wrote its own multiprocess file) are all counted by a single scrape (counters and
the latency histogram alike).
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.mmap_dict import MmapedDict

from tests.api.test_ops import metric
from tests.conftest import PG_URL, STATIC_KEYS
from tests.faults.test_database import hung_app, proxied  # noqa: F401  (fixture)
from tests.helpers.proxy import TcpProxy
from tests.helpers.servers import uvicorn_server


@pytest.mark.skipif(not PG_URL, reason="RECO_TEST_DATABASE_URL is not set")
def test_scrape_answers_at_once_while_the_database_hangs(
    proxied: tuple[TcpProxy, str],  # noqa: F811
    tmp_path: Path,
) -> None:
    proxy, url = proxied
    with hung_app(url, tmp_path) as client:
        assert client.get("/metrics").status_code == 200
        proxy.hang()
        deadline = time.monotonic() + 3
        while client.get("/readyz").status_code != 503:  # the fault is met: the probe sees it
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert proxy.seen > 0
        time.sleep(0.5)  # the metrics poller is now stuck on the hung database
        for path in ("/metrics", "/healthz", "/metrics"):
            start = time.monotonic()
            r = client.get(path)
            took = time.monotonic() - start
            assert r.status_code == 200 and took < 0.5, (path, took)
        proxy.restore()


def test_one_scrape_counts_every_worker(tmp_path: Path) -> None:
    multiproc = tmp_path / "prom"
    multiproc.mkdir()
    (multiproc / "counter_999999.db").write_bytes(b"stale")  # left by an earlier run: cleared at start
    env = {
        "RECO_DATABASE_URL": f"sqlite:///{tmp_path / 'reco.db'}",
        "RECO_API_KEYS": STATIC_KEYS,
        "RECO_EMBEDDED_WORKER": "false",
        "RECO_ARTIFACT_DIR": str(tmp_path / "artifacts"),
        "RECO_LOG_LEVEL": "WARNING",
        "PROMETHEUS_MULTIPROC_DIR": str(multiproc),
    }
    with uvicorn_server(env, workers=2) as base:
        start = httpx.get(base + "/metrics").text
        before = metric(start, "reco_http_requests_total", method="GET", route="/healthz", status="200")
        made = 0
        deadline = time.monotonic() + 20
        while True:
            for _ in range(20):  # a new connection each: the kernel spreads them over the workers
                assert httpx.get(base + "/healthz").status_code == 200
                made += 1
            if len(_workers_that_served(multiproc, "/healthz")) >= 2:
                break
            assert time.monotonic() < deadline, "every request went to one worker"
        text = httpx.get(base + "/metrics").text
        after = metric(text, "reco_http_requests_total", method="GET", route="/healthz", status="200")
        assert after - before == made
        # the latency histogram is summed the same way, and counters are exposed as counters
        count = "reco_http_request_seconds_count"
        assert metric(text, count, method="GET", route="/healthz") - metric(
            start, count, method="GET", route="/healthz"
        ) == pytest.approx(made)
        assert "# TYPE reco_http_requests_total counter" in text
        assert "# TYPE reco_http_request_seconds histogram" in text
        assert text.count("# TYPE reco_cache_hit_ratio gauge") == 1  # one ratio for the replica
        assert "999999" not in "".join(p.name for p in multiproc.iterdir())


def _workers_that_served(multiproc: Path, route: str) -> set[str]:
    """The pids whose multiprocess counter file holds a request to `route`."""
    served = set()
    for path in multiproc.glob("counter_*.db"):
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            if "reco_http_requests" in key and route in key and value > 0:
                served.add(path.stem.rsplit("_", 1)[-1])
    return served
