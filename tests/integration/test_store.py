"""The event and catalog store, one contract on SQLite and PostgreSQL: idempotent bulk insert, batch order kept,
users and items made on the fly, exact timestamps, latest events, streaming reads, erasure, bulk loaders."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session, sessionmaker

from app.catalog import repository as catalog
from app.catalog.service import erase_user, load_items
from app.db.engine import make_engine, make_read_engine, make_sessionmaker, read, run_transaction
from app.events import repository
from app.events.repository import NewEvent
from app.events.service import load_events
from app.records import EventRecord, ItemRecord
from app.settings import Settings

T0 = datetime(2026, 11, 27, 10, 0, 0, 123456, tzinfo=UTC)


@pytest.fixture
def sessions(database_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test's empty store."""
    engine = make_engine(Settings(database_url=database_url))
    yield make_sessionmaker(engine)
    engine.dispose()


def ev(n: int, user: str = "u1", item: str | None = None, ts: datetime = T0, **kw: object) -> NewEvent:
    """Event e<n>."""
    return NewEvent(
        kw.get("event_id", f"e{n}"),  # type: ignore[arg-type]
        user,
        item or f"i{n}",
        str(kw.get("type", "view")),
        kw.get("value"),  # type: ignore[arg-type]
        ts,
    )


def insert(sessions: sessionmaker[Session], events: list[NewEvent]) -> int:
    """insert_batch in its own transaction."""
    return run_transaction(sessions, lambda s: repository.insert_batch(s, events))


def all_events(sessions: sessionmaker[Session]) -> list[tuple]:
    """(event_id, user, item, type, value, epoch) in insertion order."""
    with sessions() as s:
        return [row[1:] for chunk in repository.iter_interactions(s, chunk_size=7) for row in chunk]


def test_insert_is_idempotent_on_event_id_and_keeps_events_without_one(
    sessions: sessionmaker[Session],
) -> None:
    assert insert(sessions, [ev(1), ev(2), ev(3, event_id=None)]) == 3
    assert insert(sessions, [ev(2), ev(3, event_id=None), ev(4)]) == 2  # e2 known; id-less events always new
    assert insert(sessions, []) == 0
    with sessions() as s:
        assert s.scalar(sa.text("SELECT count(*) FROM events")) == 5
        assert s.scalar(sa.text("SELECT count(DISTINCT event_id) FROM events")) == 3


def test_rows_follow_the_batch_order_and_values_round_trip(sessions: sessionmaker[Session]) -> None:
    ids = [7, 3, 9, 1, 5, 2, 8]  # not sorted: the store keeps the order the client sent
    insert(
        sessions,
        [ev(n, ts=T0 + timedelta(microseconds=n), type="rating", value=n / 2) for n in ids],
    )
    rows = all_events(sessions)
    assert [r[0] for r in rows] == ["u1"] * 7
    assert [r[1] for r in rows] == [f"i{n}" for n in ids]
    assert [r[3] for r in rows] == [n / 2 for n in ids]
    assert [r[4] for r in rows] == [(T0 + timedelta(microseconds=n)).timestamp() for n in ids]


def test_users_and_items_are_made_on_the_fly_once(sessions: sessionmaker[Session]) -> None:
    run_transaction(sessions, lambda s: catalog.upsert_items(s, [("i1", {"title": "Known", "price": 3.0})]))
    insert(sessions, [ev(n, user=f"u{n % 3}", item=f"i{n % 4}") for n in range(12)])
    insert(sessions, [ev(n, user=f"u{n % 3}", item=f"i{n % 4}") for n in range(12, 20)])
    with sessions() as s:
        assert s.scalars(sa.text("SELECT user_id FROM users ORDER BY user_id")).all() == ["u0", "u1", "u2"]
        assert s.scalars(sa.text("SELECT item_id FROM items ORDER BY item_id")).all() == [
            "i0",
            "i1",
            "i2",
            "i3",
        ]
        known = catalog.get_item(s, "i1")
        assert known is not None and known.title == "Known" and known.price == 3.0  # not overwritten
        fresh = catalog.get_item(s, "i2")
        assert fresh is not None and fresh.title is None and fresh.available and fresh.categories == []
        user = catalog.get_user(s, "u2")
        assert user is not None and user.attributes == {} and user.created_at is not None


def test_timestamps_are_utc_to_the_microsecond(sessions: sessionmaker[Session]) -> None:
    plus9 = datetime(2026, 1, 1, 18, 0, 0, 654321, tzinfo=timezone(timedelta(hours=9)))
    naive = datetime(2020, 5, 5, 5, 5, 5, 5)
    insert(sessions, [ev(1, ts=plus9), ev(2, ts=naive)])
    with sessions() as s:
        got = {e.event_id: e.timestamp for e in repository.recent_events(s, "u1", 10)}
    assert got["e1"] == plus9 and got["e1"].hour == 9  # the same instant, told in UTC
    assert got["e2"] == naive.replace(tzinfo=UTC)
    assert all(t.tzinfo is not None and t.utcoffset() == timedelta(0) for t in got.values())


def test_recent_events_newest_first_ties_by_insertion(sessions: sessionmaker[Session]) -> None:
    insert(
        sessions,
        [ev(1, ts=T0), ev(2, ts=T0 + timedelta(hours=1)), ev(3, ts=T0), ev(4, ts=T0 - timedelta(days=1))],
    )
    insert(sessions, [ev(5, user="u2")])
    with sessions() as s:
        latest = repository.recent_events(s, "u1", 10)
        assert [e.event_id for e in latest] == ["e2", "e3", "e1", "e4"]
        assert [e.event_id for e in repository.recent_events(s, "u1", 2)] == ["e2", "e3"]
        assert latest[0] == EventRecord(
            user_id="u1",
            item_id="i2",
            type="view",
            timestamp=T0 + timedelta(hours=1),
            value=None,
            event_id="e2",
        )
        assert repository.count_for_user(s, "u1") == 4
        assert repository.count_for_user(s, "nobody") == 0
        assert repository.recent_events(s, "nobody", 5) == []


def test_serving_read_latest_history_one_statement_no_transaction_survives_a_dropped_connection(
    sessions: sessionmaker[Session], database_url: str
) -> None:
    """The recommendation read path: `read` on the read engine returns (item, type, ts) newest first; on
    PostgreSQL it runs in autocommit (no BEGIN/ROLLBACK round trips) and a connection the server dropped is
    replaced transparently."""
    insert(sessions, [ev(1, ts=T0), ev(2, ts=T0 + timedelta(hours=1), type="click"), ev(3, user="u2")])
    settings = Settings(database_url=database_url)
    engine = make_read_engine(settings) if not settings.is_sqlite else make_engine(settings)
    try:
        got = read(engine, lambda conn: repository.latest_history(conn, "u1", 10))
        assert got == [("i2", "click", T0 + timedelta(hours=1)), ("i1", "view", T0)]
        if settings.is_sqlite:
            return
        with engine.connect() as conn:
            assert conn.connection.driver_connection.autocommit is True  # type: ignore[union-attr]
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar()
        with sessions() as s:  # the server drops the pooled connection
            s.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        got = read(engine, lambda conn: repository.latest_history(conn, "u1", 1))
        assert got == [("i2", "click", T0 + timedelta(hours=1))]
    finally:
        engine.dispose()


def test_streaming_reads_every_event_once_in_order(sessions: sessionmaker[Session]) -> None:
    for start in range(0, 100, 25):
        insert(sessions, [ev(n, user=f"u{n % 7}") for n in range(start, start + 25)])
    with sessions() as s:
        chunks = list(repository.iter_interactions(s, chunk_size=30))
        assert [len(c) for c in chunks] == [30, 30, 30, 10]
        rows = [r for c in chunks for r in c]
        assert [r[2] for r in rows] == [f"i{n}" for n in range(100)]
        assert [r[0] for r in rows] == sorted(r[0] for r in rows)
        newest = repository.max_event_id(s)
        assert newest == rows[-1][0]
        later = [r for c in repository.iter_interactions(s, since_id=rows[89][0]) for r in c]
        assert [r[2] for r in later] == [f"i{n}" for n in range(90, 100)]


def test_erasure_removes_the_user_and_only_their_events(sessions: sessionmaker[Session]) -> None:
    insert(sessions, [ev(n, user="u1" if n % 2 else "u10") for n in range(10)])
    run_transaction(sessions, lambda s: catalog.upsert_user(s, "u1", {"x": 1}))
    assert run_transaction(sessions, lambda s: erase_user(s, "u1")) is True
    assert run_transaction(sessions, lambda s: erase_user(s, "u1")) is False
    with sessions() as s:
        assert catalog.get_user(s, "u1") is None
        assert repository.count_for_user(s, "u1") == 0
        assert repository.count_for_user(s, "u10") == 5
        assert s.scalar(sa.text("SELECT count(*) FROM items")) == 10


def test_bulk_loaders_are_idempotent(sessions: sessionmaker[Session]) -> None:
    items = [ItemRecord(item_id=f"m{n}", title=f"Movie {n}", categories=("Drama",)) for n in range(30)]
    assert load_items(sessions, items, chunk_size=7) == 30
    records = [
        EventRecord(
            user_id=f"u{n % 4}",
            item_id=f"m{n % 30}",
            type="rating",
            timestamp=T0 + timedelta(seconds=n),
            value=4.0,
        )
        for n in range(50)
    ]
    assert load_events(sessions, records, source="test", chunk_size=16) == (50, 0)
    assert load_events(sessions, records, source="test", chunk_size=16) == (0, 50)  # deterministic ids
    with sessions() as s:
        item = catalog.get_item(s, "m3")
        assert item is not None and item.categories == ["Drama"] and item.title == "Movie 3"
        assert repository.count_for_user(s, "u1") == 13


def test_ids_with_quotes_backslashes_and_unicode_round_trip(sessions: sessionmaker[Session]) -> None:
    odd = ['a"b', "back\\slash", "O'Brien", "emoji-🙂", "tab\tand\nnewline", "{json}", "x" * 256, "ü,;()"]
    insert(sessions, [ev(n, user=u, item=u, event_id=u) for n, u in enumerate(odd)])
    assert insert(sessions, [ev(0, user=u, item=u, event_id=u) for u in odd]) == 0  # all known again
    rows = all_events(sessions)
    assert [r[0] for r in rows] == odd and [r[1] for r in rows] == odd
    with sessions() as s:
        assert sorted(s.scalars(sa.text("SELECT user_id FROM users")).all()) == sorted(odd)
        assert sorted(s.scalars(sa.text("SELECT item_id FROM items")).all()) == sorted(odd)
        assert sorted(s.scalars(sa.text("SELECT event_id FROM events")).all()) == sorted(odd)
