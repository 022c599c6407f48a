"""`reco import movielens` into the store of a running service: the events land, and with Redis configured
the cache epoch moves so that no cached answer or latest-events list from before the import is used again."""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select

from app.cache import keys as cache_keys
from app.cli import main
from app.db.engine import make_engine
from app.db.tables import Event
from app.settings import Settings


def test_import_stores_events_and_bumps_the_cache_epoch(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "ml"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n2,6,0.5,964982224\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n1,A (1995),Comedy\n3,B (1996),Drama\n6,C,Drama\n"
    )
    monkeypatch.setenv("RECO_DATABASE_URL", settings.database_url)
    if settings.redis_url:
        monkeypatch.setenv("RECO_REDIS_URL", settings.redis_url)
        monkeypatch.setenv("RECO_REDIS_PREFIX", settings.redis_prefix)
    else:
        monkeypatch.delenv("RECO_REDIS_URL", raising=False)
    assert main(["import", "movielens", str(folder)]) == 0
    assert "imported 3 items and 3 events" in capsys.readouterr().out
    engine = make_engine(settings)
    with engine.connect() as conn:
        assert conn.scalar(select(func.count()).select_from(Event)) == 3
    engine.dispose()
    if settings.redis_url:
        client = redis.Redis.from_url(settings.redis_url)
        assert client.get(settings.redis_prefix + cache_keys.EPOCH) == b"1"
        client.close()
