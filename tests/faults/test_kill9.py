"""kill -9 under ingestion load: SIGKILL of the whole `reco serve --workers 2` process group, twice, while four
clients post batches (a cut batch is re-sent with the same ids until acknowledged). Proves that no acknowledged
event is lost and none is stored twice; first that the kills really cut requests in flight."""

from __future__ import annotations

import pytest

from scripts.bench_kill9 import run
from tests.conftest import PG_URL, _truncate

pytestmark = pytest.mark.skipif(not PG_URL, reason="RECO_TEST_DATABASE_URL is not set")


def test_sigkill_of_the_process_group_loses_and_doubles_no_acknowledged_event(pg_database: str) -> None:
    _truncate(pg_database)
    result = run(pg_database, kills=2, seconds=3.0, workers=2, clients=4, batch=50)
    assert result.cut > 0, "no request was in flight when the service was killed: the test proved nothing"
    assert result.acked > 1000
    assert result.lost == 0
    assert result.duplicates == 0
    assert result.stored == result.distinct == result.acked
