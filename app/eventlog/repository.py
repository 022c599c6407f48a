"""SQL of the event-log consumer: a batch of events by COPY into a temporary table, then one INSERT ... SELECT
that skips event ids already stored (claimed in `event_ids`, the dedupe of the partitioned table). Kept apart
from app/events/repository.py so that a change of the events table's layout (partitions, a separate dedupe
structure) is adapted in this one function."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.orm import Session

from app.events import repository as events_repository
from app.events.repository import NewEvent
from app.records import as_utc

_PG_TEMP = (
    "CREATE TEMP TABLE IF NOT EXISTS eventlog_incoming "
    "(n int4, e text, u text, i text, t text, v float8, ts timestamptz, r text) ON COMMIT DELETE ROWS"
)
_PG_COPY = "COPY eventlog_incoming (n, e, u, i, t, v, ts, r) FROM STDIN WITH (FORMAT BINARY)"
_PG_TYPES = ["int4", "text", "text", "text", "text", "float8", "timestamptz", "text"]
# As app/events/repository._PG_INSERT_BATCH, from the copied rows: unknown users and items (in byte order, the
# order the direct path locks them in: concurrent writers cannot deadlock), the ids claimed in event_ids (byte
# order too; `events` is partitioned by ts, migration 0009, and event_ids is its dedupe), then the events whose
# id was claimed now (in batch order), their rollup delta rows, and the ids actually stored.
_PG_MOVE = text(
    "WITH new_users AS ("
    " INSERT INTO users (user_id, attributes, created_at, updated_at)"
    " SELECT u, '{}', now(), now() FROM (SELECT DISTINCT u FROM eventlog_incoming) x ORDER BY u COLLATE \"C\""
    " ON CONFLICT (user_id) DO NOTHING"
    "), new_items AS ("
    " INSERT INTO items (item_id, categories, tags, available, deleted, attributes, created_at, updated_at)"
    " SELECT i, '[]', '[]', true, false, '{}', now(), now()"
    ' FROM (SELECT DISTINCT i FROM eventlog_incoming) x ORDER BY i COLLATE "C"'
    " ON CONFLICT (item_id) DO NOTHING"
    "), claimed AS ("
    " INSERT INTO event_ids (event_id)"
    ' SELECT e FROM eventlog_incoming WHERE e IS NOT NULL ORDER BY e COLLATE "C"'
    " ON CONFLICT (event_id) DO NOTHING"
    " RETURNING event_id"
    "), stored AS ("
    " INSERT INTO events (event_id, user_id, item_id, type, value, ts, recommendation_id)"
    " SELECT e, u, i, t, v, ts, r FROM eventlog_incoming"
    " WHERE e IN (SELECT event_id FROM claimed) ORDER BY n"
    " RETURNING event_id, type, ts"
    "), counted AS ("
    " INSERT INTO event_counts (bucket_start, type, count)"
    " SELECT date_trunc('minute', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS b, type, count(*) FROM stored"
    " GROUP BY 1, 2"
    ") "
    "SELECT event_id FROM stored"
)


def copy_events(session: Session, events: Sequence[NewEvent]) -> set[str] | None:
    """Store events that all have an event_id, skipping ids already stored (and repeats within `events`: the
    first is kept); create unknown users and items; add the stored rows to the per-minute rollup. The caller
    commits. Returns the ids stored now (PostgreSQL), or None when only their number is known (SQLite: all
    stored, else unknown which)."""
    if not events:
        return set()
    seen: set[str | None] = set()
    unique: list[NewEvent] = []
    for e in events:  # the first of each id, in batch order
        if e.event_id not in seen:
            seen.add(e.event_id)
            unique.append(e)
    if session.get_bind().dialect.name != "postgresql":
        stored = events_repository.insert_batch(session, unique)
        return {str(e.event_id) for e in unique} if stored == len(unique) else None
    session.execute(text(_PG_TEMP))
    raw = session.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cur, cur.copy(_PG_COPY) as copy:
        copy.set_types(_PG_TYPES)
        for n, e in enumerate(unique):
            copy.write_row(
                (n, e.event_id, e.user_id, e.item_id, e.type, e.value, as_utc(e.ts), e.recommendation_id)
            )
    return {row[0] for row in session.execute(_PG_MOVE)}
