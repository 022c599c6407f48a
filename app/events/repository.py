"""SQL for the append-only event table: bulk insert, latest events of a user, streaming reads, erasure."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import orjson
from sqlalchemy import Connection, bindparam, delete, func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from app.db.tables import Event, Impression
from app.records import EventRecord, as_utc


@dataclass(frozen=True, slots=True)
class NewEvent:
    """A validated event ready to insert."""

    event_id: str | None
    user_id: str
    item_id: str
    type: str
    value: float | None
    ts: datetime
    recommendation_id: str | None = None


@dataclass(frozen=True, slots=True)
class NewImpression:
    """Items one answer showed, as the client reported them (position 1 first)."""

    recommendation_id: str
    user_id: str
    items: tuple[str, ...]
    ts: datetime
    placement: str | None = None
    experiment: str | None = None
    variant: str | None = None


# One statement, one round trip: the rows travel as one JSON document (parsed in C on the server, where
# psycopg's text arrays cost ~4 ms of Python quoting per 500 events); unknown users and items are created by
# data-modifying CTEs (always executed), in sorted order so that concurrent batches cannot deadlock on them.
# `events` is partitioned by ts (migration 0009), so event ids are claimed in `event_ids` first (sorted too:
# two batches sharing ids wait on each other in one order, never in a cycle); a claim that conflicts waits for
# the other transaction and is skipped when it committed. Only events whose id was claimed now (or that have no
# id) are stored, in batch order (`n`). The rows stored (RETURNING) are added to the per-minute rollup
# `event_counts` in the same statement, as new delta rows: concurrent batches never wait on one another's
# (minute, type) row.
_PG_INSERT_BATCH = text(
    "WITH new_users AS ("
    " INSERT INTO users (user_id, attributes, created_at, updated_at)"
    " SELECT u, '{}', now(), now() FROM json_array_elements_text(CAST(:users AS json)) AS u"
    " ON CONFLICT (user_id) DO NOTHING"
    "), new_items AS ("
    " INSERT INTO items (item_id, categories, tags, available, deleted, attributes, created_at, updated_at)"
    " SELECT i, '[]', '[]', true, false, '{}', now(), now() FROM json_array_elements_text(CAST(:items AS json)) AS i"
    " ON CONFLICT (item_id) DO NOTHING"
    "), incoming AS MATERIALIZED ("
    " SELECT * FROM json_to_recordset(CAST(:events AS json))"
    " AS x(n int4, e text, u text, i text, t text, v float8, ts timestamptz, r text)"
    "), claimed AS ("
    " INSERT INTO event_ids (event_id)"
    ' SELECT e FROM incoming WHERE e IS NOT NULL ORDER BY e COLLATE "C"'
    " ON CONFLICT (event_id) DO NOTHING"
    " RETURNING event_id"
    "), stored AS ("
    " INSERT INTO events (event_id, user_id, item_id, type, value, ts, recommendation_id)"
    " SELECT e, u, i, t, v, ts, r FROM incoming"
    " WHERE e IS NULL OR e IN (SELECT event_id FROM claimed) ORDER BY n"
    " RETURNING type, ts"
    "), counted AS ("
    " INSERT INTO event_counts (bucket_start, type, count)"
    " SELECT date_trunc('minute', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS b, type, count(*) FROM stored"
    " GROUP BY 1, 2"
    ") "
    "SELECT count(*) FROM stored"
)


def first_of_each_id(events: Sequence[NewEvent]) -> list[NewEvent]:
    """`events` less repeats of an event_id (the first is kept, in order); events without one all stay."""
    seen: set[str] = set()
    out: list[NewEvent] = []
    for e in events:
        if e.event_id is not None:
            if e.event_id in seen:
                continue
            seen.add(e.event_id)
        out.append(e)
    return out


# SQLite has one writer: the rows above the highest id read after taking the write lock are this batch's.
_SQLITE_COUNT = (
    "INSERT INTO event_counts (bucket_start, type, count) "
    "SELECT strftime('%Y-%m-%d %H:%M:00.000000', ts) AS b, type, count(*) FROM events WHERE id > ? "
    "GROUP BY 1, 2"
)


def _sqlite_ts(ts: datetime) -> str:
    """The text form SQLAlchemy's DateTime uses on SQLite (UTC, naive)."""
    return as_utc(ts).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")


def insert_batch(session: Session, events: Sequence[NewEvent]) -> int:
    """Insert events, skipping event_ids already stored; create unknown users and items; add the stored ones
    to the per-minute rollup (`event_counts`) in the same statement (PostgreSQL) or transaction (SQLite).
    Returns rows stored."""
    if not events:
        return 0
    users = sorted({e.user_id for e in events})  # a fixed lock order: concurrent batches cannot deadlock
    items = sorted({e.item_id for e in events})
    if session.get_bind().dialect.name == "postgresql":
        rows = [
            {
                "n": n,
                "e": e.event_id,
                "u": e.user_id,
                "i": e.item_id,
                "t": e.type,
                "v": e.value,
                "ts": as_utc(e.ts),
                "r": e.recommendation_id,
            }
            for n, e in enumerate(first_of_each_id(events))  # one claim per id: repeats are duplicates
        ]  # stored in `n` order: row ids follow the batch order
        result = session.execute(
            _PG_INSERT_BATCH,
            {
                "users": orjson.dumps(users).decode(),
                "items": orjson.dumps(items).decode(),
                "events": orjson.dumps(rows).decode(),
            },
        )
        return int(result.scalar_one())
    conn = session.connection()
    now = _sqlite_ts(datetime.now(UTC))
    conn.exec_driver_sql(
        "INSERT INTO users (user_id, attributes, created_at, updated_at) VALUES (?, '{}', ?, ?) "
        "ON CONFLICT (user_id) DO NOTHING",
        [(u, now, now) for u in users],
    )
    conn.exec_driver_sql(
        "INSERT INTO items (item_id, categories, tags, available, deleted, attributes, created_at, updated_at) "
        "VALUES (?, '[]', '[]', 1, 0, '{}', ?, ?) ON CONFLICT (item_id) DO NOTHING",
        [(i, now, now) for i in items],
    )  # the write lock is held from here on
    before = conn.exec_driver_sql("SELECT coalesce(max(id), 0) FROM events").scalar_one()
    cursor = conn.exec_driver_sql(
        "INSERT INTO events (event_id, user_id, item_id, type, value, ts, recommendation_id) "
        "VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (event_id) DO NOTHING",
        [
            (e.event_id, e.user_id, e.item_id, e.type, e.value, _sqlite_ts(e.ts), e.recommendation_id)
            for e in events
        ],
    )
    stored = int(cursor.rowcount)
    if stored:
        conn.exec_driver_sql(_SQLITE_COUNT, (before,))
    return stored


def insert_impressions(session: Session, impressions: Sequence[NewImpression]) -> tuple[int, int]:
    """Store each reported impression once per (recommendation_id, item): returns (reports that stored at
    least one new row, reports that were all already stored)."""
    if not impressions:
        return 0, 0
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    stored = repeated = 0
    for imp in impressions:
        rows = [
            {
                "recommendation_id": imp.recommendation_id,
                "user_id": imp.user_id,
                "item_id": item_id,
                "position": position,
                "placement": imp.placement,
                "experiment": imp.experiment,
                "variant": imp.variant,
                "ts": as_utc(imp.ts),
            }
            for position, item_id in enumerate(dict.fromkeys(imp.items), start=1)
        ]
        stmt = (
            insert(Impression)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["recommendation_id", "item_id"])
            .returning(
                Impression.id
            )  # rowcount is -1 for a multi-row insert on psycopg: count what came back
        )
        if session.execute(stmt).all():
            stored += 1
        else:
            repeated += 1
    return stored, repeated


def recent_events(session: Session, user_id: str, limit: int) -> list[EventRecord]:
    """The user's latest `limit` events, newest first (ties: the later insert first)."""
    rows = session.execute(
        select(Event.event_id, Event.item_id, Event.type, Event.value, Event.ts)
        .where(Event.user_id == user_id)
        .order_by(Event.ts.desc(), Event.id.desc())
        .limit(limit)
    ).all()
    return [
        EventRecord(
            user_id=user_id,
            item_id=r.item_id,
            type=r.type,
            timestamp=as_utc(r.ts),
            value=r.value,
            event_id=r.event_id,
        )
        for r in rows
    ]


_LATEST = (
    select(Event.item_id, Event.type, Event.ts)
    .where(Event.user_id == bindparam("user_id"))
    .order_by(Event.ts.desc(), Event.id.desc())
    .limit(bindparam("limit"))
)


def latest_history(conn: Connection, user_id: str, limit: int) -> list[tuple[str, str, datetime]]:
    """(item_id, type, ts) of the user's latest `limit` events, newest first: the serving read (one indexed
    query on a bare connection, no ORM objects)."""
    rows = conn.execute(_LATEST, {"user_id": user_id, "limit": limit}).all()
    return [(r[0], r[1], as_utc(r[2])) for r in rows]


def count_for_user(session: Session, user_id: str) -> int:
    """How many events the user has."""
    return int(session.scalar(select(func.count()).select_from(Event).where(Event.user_id == user_id)) or 0)


_PG_UNCOUNT = text(
    "INSERT INTO event_counts (bucket_start, type, count) "
    "SELECT date_trunc('minute', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', type, -count(*) "
    "FROM events WHERE user_id = :user_id GROUP BY 1, 2"
)
_UNCOUNT = text(
    "INSERT INTO event_counts (bucket_start, type, count) "
    "SELECT strftime('%Y-%m-%d %H:%M:00.000000', ts), type, -count(*) FROM events WHERE user_id = :user_id "
    "GROUP BY 1, 2"
)


# PostgreSQL: the ids of the user's events (in every partition, by each one's user index) leave event_ids too.
_PG_FORGET_IDS = text(
    "DELETE FROM event_ids WHERE event_id IN "
    "(SELECT event_id FROM events WHERE user_id = :user_id AND event_id IS NOT NULL)"
)


def delete_for_user(session: Session, user_id: str) -> int:
    """Erase every event and impression of a user (from every partition on PostgreSQL, with their event_ids
    rows); returns how many events. The per-minute rollup loses the erased events too: negative delta rows from
    one indexed read of the user's events."""
    postgres = session.get_bind().dialect.name == "postgresql"
    session.execute(_PG_UNCOUNT if postgres else _UNCOUNT, {"user_id": user_id})
    if postgres:
        session.execute(_PG_FORGET_IDS, {"user_id": user_id})
    session.execute(delete(Impression).where(Impression.user_id == user_id))
    result = session.execute(delete(Event).where(Event.user_id == user_id))
    return int(result.rowcount)  # type: ignore[attr-defined]


def iter_interactions(
    session: Session, *, chunk_size: int = 50_000, since_id: int = 0
) -> Iterator[list[tuple]]:
    """Stream `(id, user_id, item_id, type, value, epoch_seconds)` in insertion order, chunk by chunk.

    Uses a server-side cursor on PostgreSQL (no whole-table load, no ORM objects).
    """
    stmt = (
        select(Event.id, Event.user_id, Event.item_id, Event.type, Event.value, Event.ts)
        .where(Event.id > since_id)
        .order_by(Event.id)
    )
    result = session.execute(stmt.execution_options(stream_results=True, yield_per=chunk_size))
    for partition in result.partitions(chunk_size):
        yield [(r[0], r[1], r[2], r[3], r[4], as_utc(r[5]).timestamp()) for r in partition]


def max_event_id(session: Session) -> int:
    """The newest event's row id (0 when empty)."""
    return int(session.scalar(select(func.max(Event.id))) or 0)


_ROTATED = text(
    "SELECT item_id FROM impressions WHERE user_id = :user_id AND ts >= :since "
    "GROUP BY item_id HAVING count(*) >= :after"
)


def shown_often(conn: Connection, user_id: str, since: datetime, after: int) -> list[str]:
    """Items shown to the user `after` times or more since `since` (one indexed query: rotation)."""
    ts: datetime | str = as_utc(since)
    if conn.dialect.name == "sqlite":
        ts = _sqlite_ts(since)
    return [r[0] for r in conn.execute(_ROTATED, {"user_id": user_id, "since": ts, "after": after})]


_BEFORE = text(
    "SELECT item_id, type FROM events WHERE user_id = :user_id AND ts < :ts ORDER BY ts DESC, id DESC LIMIT :limit"
)


def history_before(conn: Connection, user_id: str, ts: datetime, limit: int) -> list[tuple[str, str]]:
    """(item_id, type) of the user's latest `limit` events before `ts`, newest first (offline replay)."""
    at: datetime | str = _sqlite_ts(ts) if conn.dialect.name == "sqlite" else as_utc(ts)
    return [(r[0], r[1]) for r in conn.execute(_BEFORE, {"user_id": user_id, "ts": at, "limit": limit})]


_PG_COMPACT = text(
    "WITH moved AS ("
    " DELETE FROM event_counts WHERE NOT compacted AND bucket_start < :cutoff"
    " RETURNING bucket_start, type, count"
    ") "
    "INSERT INTO event_counts (bucket_start, type, count, compacted) "
    "SELECT bucket_start, type, sum(count), true FROM moved GROUP BY 1, 2 "
    "ON CONFLICT (bucket_start, type) WHERE compacted DO UPDATE SET count = event_counts.count + excluded.count"
)


def compact_event_counts(session: Session, settled_before: datetime) -> int:
    """Fold the delta rows of minutes before `settled_before` into one compacted row per (minute, type);
    returns how many rows were folded. One transaction (the caller's); concurrent passes are safe (PostgreSQL:
    a row deleted by one is gone for the other; SQLite has one writer)."""
    if session.get_bind().dialect.name == "postgresql":
        moved = session.execute(
            text("SELECT count(*) FROM event_counts WHERE NOT compacted AND bucket_start < :c"),
            {"c": as_utc(settled_before)},
        ).scalar_one()
        if moved:
            session.execute(_PG_COMPACT, {"cutoff": as_utc(settled_before)})
        return int(moved)
    cutoff = _sqlite_ts(settled_before)
    top = session.execute(
        text("SELECT max(id), count(*) FROM event_counts WHERE NOT compacted AND bucket_start < :c"),
        {"c": cutoff},
    ).one()
    if not top[1]:
        return 0
    sums = session.execute(
        text(
            "SELECT bucket_start, type, sum(count) FROM event_counts "
            "WHERE NOT compacted AND bucket_start < :c AND id <= :top GROUP BY 1, 2"
        ),
        {"c": cutoff, "top": top[0]},
    ).all()
    session.execute(
        text("DELETE FROM event_counts WHERE NOT compacted AND bucket_start < :c AND id <= :top"),
        {"c": cutoff, "top": top[0]},
    )
    session.execute(
        text(
            "INSERT INTO event_counts (bucket_start, type, count, compacted) VALUES (:b, :t, :n, 1) "
            "ON CONFLICT (bucket_start, type) WHERE compacted DO UPDATE SET count = event_counts.count + excluded.count"
        ),
        [{"b": b, "t": kind, "n": int(n)} for b, kind, n in sums],
    )
    return int(top[1])
