"""partitioned events: on PostgreSQL `events` becomes range-partitioned by ts (monthly) and event ids move to
the `event_ids` table; SQLite keeps its one table (a no-op there)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03

PostgreSQL, in one transaction under an ACCESS EXCLUSIVE lock on `events` (every existing row is copied once:
on a large table, plan a maintenance window):
- the plain table and its indexes are renamed `events_plain*`;
- a partitioned `events` (same columns, same `events_id_seq` default, so ids keep growing) with the primary
  key (id, ts) is created, with one partition per month holding existing rows, the current month and three
  ahead (`events_pYYYYMM`), and a DEFAULT partition (`events_default`) for anything else;
- the rows are copied (ids kept), `event_ids` is filled with their event ids, and the plain table dropped;
- the indexes are rebuilt on the partitioned table, except the unique one on event_id (a unique index of a
  partitioned table must contain ts; `event_ids` is the dedupe now).
No other table references `events` (no foreign keys; training_jobs.max_event_id is a plain number).
Downgrade copies the rows back into a plain table with the unique event_id index and drops `event_ids`.
"""

from __future__ import annotations

from datetime import UTC, datetime

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

MONTHS_AHEAD = 3
COLUMNS = "id, event_id, user_id, item_id, type, value, ts, recommendation_id"
# (name, columns) of the indexes both layouts keep
INDEXES = (
    ("ix_events_user_ts", "user_id, ts"),
    ("ix_events_recommendation_id", "recommendation_id"),
    ("ix_events_item_id", "item_id, type"),
)


def _month(year: int, month: int, ahead: int = 0) -> tuple[int, int]:
    n = year * 12 + (month - 1) + ahead
    return n // 12, n % 12 + 1


def _bound(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}-01 00:00:00+00"


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return  # SQLite: one table, event_id unique by its index
    op.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    sequence = bind.exec_driver_sql("SELECT pg_get_serial_sequence('events', 'id')").scalar_one()
    op.execute("ALTER TABLE events RENAME TO events_plain")
    op.execute("ALTER TABLE events_plain RENAME CONSTRAINT pk_events TO pk_events_plain")
    for name, _ in (*INDEXES, ("uq_events_event_id", "")):
        op.execute(f"ALTER INDEX IF EXISTS {name} RENAME TO {name.replace('events', 'events_plain', 1)}")
    op.execute(
        "CREATE TABLE events (LIKE events_plain INCLUDING DEFAULTS, "
        "CONSTRAINT pk_events PRIMARY KEY (id, ts)) PARTITION BY RANGE (ts)"
    )
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY events.id")  # survives the plain table's drop
    months = {
        (int(y), int(m))
        for y, m in bind.exec_driver_sql(
            "SELECT DISTINCT extract(year FROM ts AT TIME ZONE 'UTC'), extract(month FROM ts AT TIME ZONE 'UTC') "
            "FROM events_plain"
        )
    }
    now = datetime.now(UTC)
    months |= {_month(now.year, now.month, k) for k in range(MONTHS_AHEAD + 1)}
    for year, month in sorted(months):
        upper = _month(year, month, 1)
        op.execute(
            f"CREATE TABLE events_p{year:04d}{month:02d} PARTITION OF events "
            f"FOR VALUES FROM ('{_bound(year, month)}') TO ('{_bound(*upper)}')"
        )
    op.execute("CREATE TABLE events_default PARTITION OF events DEFAULT")
    op.execute(f"INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM events_plain ORDER BY id")
    op.execute(
        "CREATE TABLE event_ids (event_id varchar(256) NOT NULL, CONSTRAINT pk_event_ids PRIMARY KEY (event_id))"
    )
    op.execute(
        "INSERT INTO event_ids (event_id) SELECT event_id FROM events_plain WHERE event_id IS NOT NULL"
    )
    op.execute("DROP TABLE events_plain")
    for name, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON events ({columns})")
    op.execute("ANALYZE events")


def downgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    op.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")
    sequence = bind.exec_driver_sql("SELECT pg_get_serial_sequence('events', 'id')").scalar_one()
    op.execute("ALTER TABLE events RENAME TO events_partitioned")
    op.execute("ALTER TABLE events_partitioned RENAME CONSTRAINT pk_events TO pk_events_partitioned")
    for name, _ in INDEXES:
        op.execute(
            f"ALTER INDEX IF EXISTS {name} RENAME TO {name.replace('events', 'events_partitioned', 1)}"
        )
    op.execute(
        "CREATE TABLE events (LIKE events_partitioned INCLUDING DEFAULTS, CONSTRAINT pk_events PRIMARY KEY (id))"
    )
    if sequence:
        op.execute(f"ALTER SEQUENCE {sequence} OWNED BY events.id")
    op.execute(f"INSERT INTO events ({COLUMNS}) SELECT {COLUMNS} FROM events_partitioned ORDER BY id")
    op.execute("DROP TABLE events_partitioned CASCADE")  # and every partition
    op.execute("DROP TABLE event_ids")
    for name, columns in INDEXES:
        op.execute(f"CREATE INDEX {name} ON events ({columns})")
    op.execute("CREATE UNIQUE INDEX uq_events_event_id ON events (event_id)")
    op.execute("ANALYZE events")
