"""`reco import events FILE` and `reco import items FILE` against the store (SQLite and, when configured,
PostgreSQL): good rows land, bad rows are reported by line and skipped, a re-run stores nothing new, items update
with the API's semantics, only an unreadable file fails, and the cache epoch moves only when something changed."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from app.cache import keys as cache_keys
from app.cli import main
from app.db.engine import make_engine
from app.db.tables import Event, Item
from app.records import as_utc
from app.settings import Settings

T0 = datetime(2020, 1, 1, tzinfo=UTC)  # 1577836800

EVENTS_CSV = (
    "user_id,item_id,type,timestamp,value,event_id\n"  # 1
    "u1,i1,view,1577836800,,\n"  # 2
    "u1,i2,rating,2020-01-01T00:00:01.5Z,4.5,\n"  # 3
    "u1,i3,fly,1577836802,,\n"  # 4 bad: unknown type
    "u2,i1,purchase,1577836803,,given-1\n"  # 5
    "u2,i2,view,4102444800,,\n"  # 6 bad: 2100, beyond max_future
)
# The same three good events as JSONL, written differently (ISO for Unix seconds and back).
EVENTS_JSONL = (
    '{"user_id": "u1", "item_id": "i1", "type": "view", "timestamp": "2020-01-01T00:00:00+00:00"}\n'
    '{"user_id": "u1", "item_id": "i2", "type": "rating", "timestamp": 1577836801.5, "value": 4.5}\n'
    '{"user_id": "u2", "item_id": "i1", "type": "purchase", "timestamp": 1577836803, "event_id": "given-1"}\n'
)


@pytest.fixture
def store(database_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[Settings]:
    """The test's empty store as the command line's settings (no Redis)."""
    monkeypatch.setenv("RECO_DATABASE_URL", database_url)
    monkeypatch.delenv("RECO_REDIS_URL", raising=False)
    yield Settings(database_url=database_url)


def _run(capsys: pytest.CaptureFixture[str], *argv: object) -> tuple[int, str, str]:
    code = main(["import", *(str(a) for a in argv), "--no-progress"])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _events(settings: Settings) -> list[tuple]:
    engine = make_engine(settings)
    with engine.connect() as conn:
        rows = conn.execute(
            select(Event.user_id, Event.item_id, Event.type, Event.value, Event.ts, Event.event_id).order_by(
                Event.id
            )
        ).all()
    engine.dispose()
    return [(u, i, t, v, as_utc(ts), e) for u, i, t, v, ts, e in rows]


def _items(settings: Settings) -> dict[str, Any]:
    """The stored item rows by id."""
    engine = make_engine(settings)
    with engine.connect() as conn:
        rows = conn.execute(select(Item).order_by(Item.id)).all()
    engine.dispose()
    return {r.item_id: r for r in rows}


def test_events_load_bad_rows_are_reported_and_skipped_and_a_rerun_stores_nothing_new(
    store: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(EVENTS_CSV)
    code, out, err = _run(capsys, "events", path)
    assert code == 0
    assert "5 rows read: 3 events stored, 0 already present, 2 bad" in out
    errors = [line for line in err.splitlines() if line.startswith(str(path))]
    assert [line.split(": ", 1)[0] for line in errors] == [f"{path}:4", f"{path}:6"]
    assert "type: unknown event type 'fly'" in errors[0]
    assert "timestamp: 2100-01-01T00:00:00+00:00 is more than" in errors[1]
    stored = _events(store)
    assert [row[:5] for row in stored] == [
        ("u1", "i1", "view", None, T0),
        ("u1", "i2", "rating", 4.5, T0 + timedelta(seconds=1.5)),
        ("u2", "i1", "purchase", None, T0 + timedelta(seconds=3)),
    ]
    assert stored[2][5] == "given-1" and all(row[5].startswith("imp:") for row in stored[:2])

    code, out, _ = _run(capsys, "events", path)
    assert code == 0 and "5 rows read: 0 events stored, 3 already present, 2 bad" in out
    gz = tmp_path / "same-events.jsonl.gz"
    gz.write_bytes(gzip.compress(EVENTS_JSONL.encode()))
    code, out, _ = _run(capsys, "events", gz)
    assert code == 0 and "3 rows read: 0 events stored, 3 already present, 0 bad" in out
    assert _events(store) == stored


def test_items_load_then_update_on_rerun_with_fields_left_out_kept(
    store: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "items.jsonl"
    path.write_text(
        '{"item_id": "1", "tags": ["a1", "a2"]}\n'
        '{"item_id": "2", "title": "Kite", "price": 9.5, "published_at": "2020-01-01T00:00:00Z"}\n'
        '{"item_id": "3", "colour": "red"}\n'
    )
    code, out, err = _run(capsys, "items", path)
    assert code == 0
    assert "3 rows read: 2 items stored (2 new, 0 updated), 0 already present unchanged, 1 bad" in out
    assert f"{path}:3: colour: is not a known field: remove it" in err
    first = _items(store)
    assert first["1"].tags == ["a1", "a2"] and first["2"].title == "Kite"
    assert first["2"].published_at is not None and as_utc(first["2"].published_at) == T0

    code, out, _ = _run(capsys, "items", path)
    assert "0 items stored (0 new, 0 updated), 2 already present unchanged, 1 bad" in out
    again = _items(store)
    assert {k: v.updated_at for k, v in again.items()} == {k: v.updated_at for k, v in first.items()}

    path.write_text(
        '{"item_id": "1", "price": 3.0}\n'  # tags left out: kept
        '{"item_id": "2", "title": "Kite", "price": 9.5}\n'  # unchanged
        '{"item_id": "3", "title": "Ball", "available": false}\n'
    )
    code, out, _ = _run(capsys, "items", path)
    assert code == 0 and "2 items stored (1 new, 1 updated), 1 already present unchanged, 0 bad" in out
    third = _items(store)
    assert (third["1"].tags, third["1"].price) == (["a1", "a2"], 3.0)
    assert third["1"].updated_at != first["1"].updated_at and third["2"].updated_at == first["2"].updated_at
    assert (third["3"].title, third["3"].available) == ("Ball", False)


def test_max_errors_stops_before_loading_more(
    store: Settings, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "events.csv"
    path.write_text(EVENTS_CSV)
    code, out, err = _run(capsys, "events", path, "--max-errors", "0")
    assert code == 1
    assert "3 rows read: 2 events stored, 0 already present, 1 bad" in out
    assert f"{path}:4: stopped: more than 0 bad rows" in err
    assert [row[1] for row in _events(store)] == ["i1", "i2"]  # the rows before line 4, nothing after


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("absent.csv", None, "cannot be read"),
        ("array.json", b"[]", "a JSON array"),
        ("cut.csv.gz", gzip.compress(EVENTS_CSV.encode())[:20], "cannot be read"),
        ("header.csv", b"user,item,type,timestamp\nu1,i1,view,1\n", "no column user_id, item_id"),
    ],
)
def test_an_unreadable_file_or_unknown_format_exits_non_zero_and_stores_nothing(
    store: Settings,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    name: str,
    content: bytes | None,
    message: str,
) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    code, out, err = _run(capsys, "events", path)
    assert code == 1 and "0 rows read" in out
    assert f"import failed: {path}" in err and message in err
    assert _events(store) == []
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\n1,Kite\n")
    code, _, err = _run(capsys, "items", items)
    assert code == 1 and "items must be JSONL" in err


def test_the_cache_epoch_moves_only_when_an_import_changed_something(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RECO_DATABASE_URL", settings.database_url)
    if settings.redis_url:
        monkeypatch.setenv("RECO_REDIS_URL", settings.redis_url)
        monkeypatch.setenv("RECO_REDIS_PREFIX", settings.redis_prefix)
    else:
        monkeypatch.delenv("RECO_REDIS_URL", raising=False)
    events = tmp_path / "events.csv"
    events.write_text(EVENTS_CSV)
    items = tmp_path / "items.jsonl"
    items.write_text('{"item_id": "i1", "title": "Kite"}\n')
    epochs = []
    for argv in (["events", events], ["events", events], ["items", items], ["items", items]):
        assert _run(capsys, *argv)[0] == 0
        if settings.redis_url:
            client = redis.Redis.from_url(settings.redis_url)
            epochs.append(client.get(settings.redis_prefix + cache_keys.EPOCH))
            client.close()
    if settings.redis_url:
        assert epochs == [b"1", b"1", b"2", b"2"]
