"""Partitioned events (issue 14, migration 0009): on PostgreSQL `events` is range-partitioned by month with an
`event_ids` dedupe table; partitions are created ahead and dropped past retention; SQLite keeps one table.

Every PostgreSQL test gets a private database (RECO_TEST_DATABASE_URL); under CI=true an unreachable server fails
the test (tests/conftest.py), it never skips."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.engine import make_url

from app.api.app import create_app
from app.catalog.service import erase_user
from app.cli import main
from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.migrate import upgrade
from app.db.partitions import (
    BUSY,
    LOCK_KEY,
    add_months,
    apply_retention,
    ensure_partitions,
    maintain,
    month_of,
    partition_name,
    partitions,
)
from app.events.repository import NewEvent, insert_batch
from app.settings import Settings
from tests.conftest import PG_URL
from tests.integration.test_migrations import downgrade

needs_pg = pytest.mark.skipif(not PG_URL, reason="RECO_TEST_DATABASE_URL is not set (CI=true requires it)")


def request_pg() -> Engine:
    """An engine on a new private, empty PostgreSQL database; not migrated (drop_pg removes it)."""
    assert PG_URL
    name = f"reco_part_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    url = _admin_url().set(database=name).render_as_string(hide_password=False).replace("+psycopg", "")
    return make_engine(Settings(database_url=url))


def _admin_url() -> sa.URL:
    assert PG_URL
    return make_url(PG_URL.replace("postgresql://", "postgresql+psycopg://", 1))


def drop_pg(engine: Engine) -> None:
    """Dispose of the engine and drop its database."""
    name = engine.url.database
    engine.dispose()
    admin = sa.create_engine(_admin_url(), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def pg_engine() -> Iterator[Engine]:
    """An engine on a private, empty PostgreSQL database (dropped afterwards); not migrated."""
    engine = request_pg()
    try:
        yield engine
    finally:
        drop_pg(engine)


@pytest.fixture
def pg(pg_engine: Engine) -> Engine:
    """The private database migrated to head."""
    upgrade(pg_engine)
    return pg_engine


def at(year: int, month: int, day: int = 15) -> datetime:
    return datetime(year, month, day, 12, tzinfo=UTC)


def ev(event_id: str | None, ts: datetime, user: str = "u1", item: str = "i1") -> NewEvent:
    return NewEvent(event_id, user, item, "view", None, ts)


def store(engine: Engine, events: list[NewEvent]) -> int:
    return run_transaction(make_sessionmaker(engine), lambda s: insert_batch(s, events))


def where_rows_are(engine: Engine) -> dict[str, str]:
    """event_id -> the partition its row is in (tableoid)."""
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT event_id, tableoid::regclass::text FROM events"))
        return {r[0]: r[1] for r in rows}


def scalar(engine: Engine, sql: str) -> object:
    with engine.connect() as conn:
        return conn.execute(sa.text(sql)).scalar()


@needs_pg
def test_migration_converts_a_populated_plain_table_keeping_rows_and_ids(pg_engine: Engine) -> None:
    upgrade(pg_engine, "0008")
    months = [at(2024, 11), at(2025, 1), at(2025, 1, 20), at(2025, 3)]
    with pg_engine.begin() as conn:
        for n, ts in enumerate(months):
            conn.execute(
                sa.text(
                    "INSERT INTO events (event_id, user_id, item_id, type, ts) VALUES (:e, 'u', 'i', 'view', :ts)"
                ),
                {"e": f"old-{n}" if n != 2 else None, "ts": ts},
            )
        conn.execute(sa.text("DELETE FROM events WHERE event_id = 'old-0'"))  # a gap in the ids
        before = conn.execute(sa.text("SELECT id, event_id, ts FROM events ORDER BY id")).all()
    upgrade(pg_engine)
    assert scalar(pg_engine, "SELECT relkind FROM pg_class WHERE oid = 'events'::regclass") == "p"
    with pg_engine.connect() as conn:
        after = conn.execute(sa.text("SELECT id, event_id, ts FROM events ORDER BY id")).all()
        ids = conn.execute(sa.text("SELECT event_id FROM event_ids ORDER BY 1")).scalars().all()
        names = partitions(conn)
    assert after == before
    assert ids == ["old-1", "old-3"]
    assert {"events_p202501", "events_p202503", "events_default"} <= set(names)
    assert "events_p202411" not in names  # its only row was deleted before the migration
    assert where_rows_are(pg_engine)["old-1"] == "events_p202501"
    store(pg_engine, [ev("new-1", datetime.now(UTC))])  # the same sequence: ids keep growing
    new_id = scalar(pg_engine, "SELECT id FROM events WHERE event_id = 'new-1'")
    assert isinstance(new_id, int) and new_id > max(r[0] for r in before)
    assert store(pg_engine, [ev("old-1", at(2025, 1))]) == 0  # migrated ids still dedupe

    downgrade(pg_engine, "0008")  # back to one plain table with the unique index
    assert scalar(pg_engine, "SELECT relkind FROM pg_class WHERE oid = 'events'::regclass") == "r"
    assert scalar(pg_engine, "SELECT to_regclass('event_ids')") is None
    with pg_engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events")).scalar() == len(before) + 1
        indexes = {ix["name"]: ix for ix in sa.inspect(conn).get_indexes("events")}
    assert indexes["uq_events_event_id"]["unique"]


@needs_pg
def test_events_land_in_their_months_and_dedupe_across_partitions(pg: Engine) -> None:
    ensure_partitions(pg, 2, now=at(2025, 1))
    assert (
        store(pg, [ev("a", at(2025, 1)), ev("b", at(2025, 2)), ev("c", at(2019, 6)), ev(None, at(2025, 3))])
        == 4
    )
    placed = where_rows_are(pg)
    assert placed["a"] == "events_p202501"
    assert placed["b"] == "events_p202502"
    assert placed["c"] == "events_default"  # no partition of that month
    assert placed[None] == "events_p202503"  # type: ignore[index]
    # a retry with another timestamp (another partition) is the same event: stored once
    assert (
        store(pg, [ev("a", at(2025, 2)), ev("b", at(2025, 1)), ev("d", at(2025, 2)), ev("d", at(2025, 1))])
        == 1
    )
    assert store(pg, [ev(None, at(2025, 3))]) == 1  # no id, no dedupe
    with pg.connect() as conn:
        rows = conn.execute(sa.text("SELECT event_id, count(*) FROM events GROUP BY 1")).all()
        ids = set(conn.execute(sa.text("SELECT event_id FROM event_ids")).scalars())
        counted = conn.execute(sa.text("SELECT sum(count) FROM event_counts")).scalar()
    assert dict(rows) == {"a": 1, "b": 1, "c": 1, "d": 1, None: 2}
    assert ids == {"a", "b", "c", "d"}
    assert counted == 6  # the rollup counted what was stored, not the duplicates
    assert where_rows_are(pg)["d"] == "events_p202502"  # the first of the batch won


@needs_pg
def test_concurrent_batches_store_each_event_once(pg: Engine) -> None:
    now = datetime.now(UTC)
    batch = [ev(f"c-{n}", now - timedelta(days=40 * (n % 3)), user=f"u{n % 7}") for n in range(300)]
    stored: list[int] = []
    errors: list[BaseException] = []

    def send(k: int) -> None:
        try:
            stored.append(store(pg, batch[k % 2 :: 1] if k % 2 else list(reversed(batch))))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(k,)) for k in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sum(stored) == 300
    assert scalar(pg, "SELECT count(*) FROM events") == 300
    assert scalar(pg, "SELECT count(DISTINCT event_id) FROM events") == 300


@needs_pg
def test_maintain_creates_partitions_ahead_idempotently_and_splits_the_default(pg: Engine) -> None:
    store(pg, [ev("old", at(2020, 5)), ev("old2", at(2020, 5, 20))])  # into the default partition
    first = ensure_partitions(pg, 2, now=at(2030, 1))
    assert first.created == ["events_p202005", "events_p203001", "events_p203002", "events_p203003"]
    assert first.moved_from_default == 2
    assert where_rows_are(pg)["old"] == "events_p202005"
    assert ensure_partitions(pg, 2, now=at(2030, 1)).created == []  # again: nothing to do
    assert store(pg, [ev("old", at(2020, 5))]) == 0

    results: list[list[str]] = []  # several processes at once: each month is created once, nobody fails
    threads = [
        threading.Thread(target=lambda: results.append(ensure_partitions(pg, 4, now=at(2030, 1)).created))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(name for created in results for name in created) == ["events_p203004", "events_p203005"]
    with pg.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM events_default")).scalar() == 0


@needs_pg
def test_retention_drops_old_partitions_keeps_recent_ones(pg: Engine) -> None:
    ensure_partitions(pg, 3, now=at(2025, 1))
    store(
        pg,
        [ev("jan", at(2025, 1)), ev("feb", at(2025, 2)), ev("mar", at(2025, 3)), ev("oldest", at(2019, 1))],
    )
    assert apply_retention(pg, None).dropped == {}  # unset: kept forever
    # 60 days before 2025-04-10 is 2025-02-09: January is wholly older, February is not
    done = apply_retention(pg, 60, now=datetime(2025, 4, 10, tzinfo=UTC))
    assert done.dropped == {"events_p202501": 1}
    assert done.deleted_from_default == 1
    with pg.connect() as conn:
        names = partitions(conn)
        left = set(conn.execute(sa.text("SELECT event_id FROM events")).scalars())
        ids = set(conn.execute(sa.text("SELECT event_id FROM event_ids")).scalars())
        counted = conn.execute(sa.text("SELECT sum(count) FROM event_counts")).scalar()
    assert "events_p202501" not in names and {"events_p202502", "events_p202503", "events_default"} <= set(
        names
    )
    assert left == ids == {"feb", "mar"}
    assert counted == 2  # the rollup forgot the dropped events
    assert store(pg, [ev("jan", at(2025, 1))]) == 1  # its id is free again (default partition now)
    # the late January event waits in the default partition: its month is not created again only to go
    assert ensure_partitions(pg, 0, now=datetime(2025, 4, 10, tzinfo=UTC), retention_days=60).created == []
    again = apply_retention(pg, 60, now=datetime(2025, 4, 10, tzinfo=UTC))
    assert again.dropped == {} and again.deleted_from_default == 1


@needs_pg
def test_erasure_removes_a_users_events_from_every_partition(pg: Engine) -> None:
    ensure_partitions(pg, 2, now=at(2025, 1))
    mine = [ev(f"m{n}", ts, user="gone") for n, ts in enumerate([at(2025, 1), at(2025, 2), at(2018, 3)])]
    store(pg, [*mine, ev(None, at(2025, 3), user="gone"), ev("other", at(2025, 2), user="stays")])
    assert len(set(where_rows_are(pg).values())) == 4  # the user's events span four partitions
    assert run_transaction(make_sessionmaker(pg), lambda s: erase_user(s, "gone"))
    with pg.connect() as conn:
        users = conn.execute(sa.text("SELECT DISTINCT user_id FROM events")).scalars().all()
        ids = conn.execute(sa.text("SELECT event_id FROM event_ids")).scalars().all()
        counted = conn.execute(sa.text("SELECT sum(count) FROM event_counts")).scalar()
    assert users == ["stays"]
    assert ids == ["other"]
    assert counted == 1


def test_sqlite_keeps_one_table(tmp_path: Path) -> None:
    engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path / 'one.db'}"))
    upgrade(engine)
    names = set(sa.inspect(engine).get_table_names())
    assert "events" in names and "event_ids" not in names
    assert not [n for n in names if n.startswith("events_")]
    indexes = {ix["name"]: ix for ix in sa.inspect(engine).get_indexes("events")}
    assert indexes["uq_events_event_id"]["unique"]
    assert ensure_partitions(engine, 3).skipped
    assert apply_retention(engine, 30).skipped
    assert [m.skipped for m in maintain(engine, 3, 30)] == [
        "SQLite keeps one events table: nothing to maintain (no partitions)"
    ]
    assert store(engine, [ev("a", at(2025, 1)), ev("a", at(2025, 2))]) == 1
    assert store(engine, [ev("a", at(2025, 3))]) == 0
    assert set(sa.inspect(engine).get_table_names()) == names
    engine.dispose()


@pytest.mark.parametrize("store_kind", ["sqlite", "postgresql"])
def test_reco_db_maintain_prints_what_it_did(
    store_kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if store_kind == "sqlite":
        monkeypatch.setenv("RECO_DATABASE_URL", f"sqlite:///{tmp_path / 'm.db'}")
        assert main(["db", "maintain", "--retention-days", "30"]) == 0
        assert capsys.readouterr().out.splitlines() == [
            "SQLite keeps one events table: nothing to maintain (no partitions)"
        ]
        return
    if not PG_URL:
        pytest.skip("RECO_TEST_DATABASE_URL is not set (CI=true requires it)")
    engine = request_pg()
    try:
        upgrade(engine)
        earlier = datetime.now(UTC) - timedelta(days=60)  # a past month: no partition yet (default)
        store(engine, [ev("stale", at(2019, 1)), ev("earlier", earlier)])
        monkeypatch.setenv("RECO_DATABASE_URL", engine.url.render_as_string(hide_password=False))
        monkeypatch.setenv("RECO_EVENT_RETENTION_DAYS", "400")
        assert main(["db", "maintain", "--months-ahead", "5"]) == 0
        out = capsys.readouterr().out.splitlines()
        ahead = add_months(month_of(datetime.now(UTC)), 5)
        assert f"created partition {partition_name(ahead)}" in out
        assert f"created partition {partition_name(month_of(earlier))}" in out  # split out of the default
        assert "moved 1 events from events_default to their months" in out
        assert "deleted 1 expired events from events_default" in out  # 2019's: past retention, not split out
        assert main(["db", "maintain", "--months-ahead", "5"]) == 0  # again: nothing to do
        again = capsys.readouterr().out.splitlines()
        assert again[0] == "partitions: every month up to the horizon exists already"
        assert again[1].startswith("retention: no events before ")
    finally:
        drop_pg(engine)


@needs_pg
def test_a_pass_finding_another_one_running_leaves_the_work_to_it(pg: Engine) -> None:
    with pg.connect() as holder:
        holder.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": LOCK_KEY})
        try:
            assert ensure_partitions(pg, 8).skipped == BUSY
            assert apply_retention(pg, 30).skipped == BUSY
        finally:
            holder.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_KEY})
    assert ensure_partitions(pg, 8).created  # once free, the months come


@needs_pg
def test_the_service_creates_the_months_ahead_at_start(pg: Engine, tmp_path: Path) -> None:
    url = pg.url.render_as_string(hide_password=False).replace("+psycopg", "")
    settings = Settings(
        database_url=url, artifact_dir=tmp_path / "a", embedded_worker=False, event_partitions_ahead=6
    )
    with TestClient(create_app(settings)):
        pass
    with pg.connect() as conn:
        names = partitions(conn)
    assert partition_name(add_months(month_of(datetime.now(UTC)), 6)) in names
