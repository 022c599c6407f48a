"""Monthly partitions of `events` on PostgreSQL (migration 0009): create them ahead, drop them past retention.

`events` is range-partitioned by `ts`; partition `events_pYYYYMM` holds [first of the month, first of the next)
in UTC, `events_default` whatever no monthly partition covers (timestamps of months never created: an import of
old data, say). Both functions are idempotent and safe to run from every API process and a scheduler at once:
each works in one transaction under a transaction-level advisory lock (taken without waiting: a pass that finds
another one running leaves the work to it), with a lock timeout on the tables so that a busy table makes a pass
give up (and the next one retry) instead of queueing every insert behind it. On SQLite (one table) and on a
PostgreSQL database whose `events` is not partitioned they do nothing. Give them an engine whose statement
timeout suits moving or dropping a month of rows (`maintenance_engine`), not the API's.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text

from app.db.engine import make_engine
from app.db.tables import EVENT_PARTITION
from app.settings import Settings

log = logging.getLogger(__name__)

PARENT = "events"
DEFAULT_PARTITION = "events_default"
LOCK_KEY = 0x7265636F_6576  # pg_advisory_xact_lock key of partition maintenance ("reco" "ev")
LOCK_TIMEOUT = "5s"
STATEMENT_TIMEOUT_S = 3600.0  # a month's ids leaving event_ids, rows leaving the default partition
BUSY = "another process is maintaining the event partitions now: left to it"


@dataclass
class Maintenance:
    """What one pass did (or, `skipped`, why it did nothing)."""

    created: list[str] = field(default_factory=list)
    moved_from_default: int = 0
    dropped: dict[str, int] = field(default_factory=dict)  # partition -> rows it held
    deleted_from_default: int = 0
    skipped: str | None = None
    cutoff: datetime | None = None  # retention: events before this were due to go

    def lines(self) -> list[str]:
        """Human-readable, one line per action."""
        if self.skipped:
            return [self.skipped]
        out = [f"created partition {name}" for name in self.created]
        if self.moved_from_default:
            out.append(f"moved {self.moved_from_default} events from {DEFAULT_PARTITION} to their months")
        out += [f"dropped partition {name} ({rows} events)" for name, rows in self.dropped.items()]
        if self.deleted_from_default:
            out.append(f"deleted {self.deleted_from_default} expired events from {DEFAULT_PARTITION}")
        if not out and self.cutoff is not None:
            return [f"retention: no events before {self.cutoff.isoformat(timespec='seconds')} to drop"]
        return out or ["partitions: every month up to the horizon exists already"]


def month_of(at: datetime) -> datetime:
    """The first instant (UTC) of `at`'s month."""
    at = at.astimezone(UTC) if at.tzinfo else at.replace(tzinfo=UTC)
    return at.replace(day=1, hour=0, minute=0, second=0, microsecond=0)


def add_months(month: datetime, n: int) -> datetime:
    """The first of the month `n` months after `month` (a first of a month)."""
    k = month.year * 12 + month.month - 1 + n
    return month.replace(year=k // 12, month=k % 12 + 1)


def partition_name(month: datetime) -> str:
    """`events_pYYYYMM`."""
    return f"{PARENT}_p{month.year:04d}{month.month:02d}"


def month_of_partition(name: str) -> datetime | None:
    """The month an `events_pYYYYMM` partition starts at (None for the default one or a foreign name)."""
    found = EVENT_PARTITION.match(name)
    if not found or found.group(1) == "default":
        return None
    digits = found.group(1)[1:]
    return datetime(int(digits[:4]), int(digits[4:]), 1, tzinfo=UTC)


def is_partitioned(conn: Connection) -> bool:
    """Whether `events` is a partitioned table here (PostgreSQL at migration 0009 or later)."""
    if conn.dialect.name != "postgresql":
        return False
    kind = conn.execute(text("SELECT relkind FROM pg_class WHERE oid = to_regclass(:t)"), {"t": PARENT})
    return kind.scalar() == "p"


def partitions(conn: Connection) -> list[str]:
    """Names of the partitions of `events`, sorted."""
    rows = conn.execute(
        text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = to_regclass(:t) ORDER BY 1"
        ),
        {"t": PARENT},
    )
    return [r[0] for r in rows]


def maintenance_engine(settings: Settings) -> Engine:
    """A one-connection engine for these passes, with a statement timeout long enough for them."""
    if settings.is_sqlite:
        return make_engine(settings)  # nothing to maintain there
    return make_engine(settings, statement_timeout_s=STATEMENT_TIMEOUT_S, pool_size=1, max_overflow=0)


def _lock(conn: Connection) -> bool:
    """Take the maintenance lock for this transaction; False when another pass holds it."""
    conn.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    return bool(conn.execute(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": LOCK_KEY}).scalar())


def _literal(at: datetime) -> str:
    return at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def _create(conn: Connection, month: datetime) -> int:
    """Create and attach the partition of `month`, first moving its rows out of the default partition (the
    attach would fail otherwise); returns how many rows moved."""
    name, start, end = partition_name(month), _literal(month), _literal(add_months(month, 1))
    conn.execute(text(f"LOCK TABLE {DEFAULT_PARTITION} IN ACCESS EXCLUSIVE MODE"))  # no new rows of the month
    conn.execute(text(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS)"))
    moved = conn.execute(
        text(
            f"WITH moved AS (DELETE FROM {DEFAULT_PARTITION} WHERE ts >= :a AND ts < :b RETURNING *) "
            f"INSERT INTO {name} SELECT * FROM moved"
        ),
        {"a": month, "b": add_months(month, 1)},
    ).rowcount
    # the constraint spares ATTACH a scan of the new table; dropped once attached (the bound says the same)
    conn.execute(
        text(f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound CHECK (ts >= '{start}' AND ts < '{end}')")
    )
    conn.execute(
        text(f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES FROM ('{start}') TO ('{end}')")
    )
    conn.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bound"))
    return int(moved or 0)


def ensure_partitions(
    engine: Engine, months_ahead: int = 3, *, now: datetime | None = None, retention_days: int | None = None
) -> Maintenance:
    """Create the partitions of the current month and `months_ahead` months after it, and of every month that
    has rows in the default partition (moving them there) unless retention would drop it at once (a late event
    of an expired month stays in the default partition until retention deletes it); existing ones are left
    alone."""
    out = Maintenance()
    if engine.dialect.name != "postgresql":
        out.skipped = "SQLite keeps one events table: no partitions to create"
        return out
    with engine.begin() as conn:
        if not is_partitioned(conn):
            out.skipped = "events is not partitioned (run `reco db upgrade`): no partitions to create"
            return out
        if not _lock(conn):
            out.skipped = BUSY
            return out
        existing = set(partitions(conn))
        current_time = now or datetime.now(UTC)
        current = month_of(current_time)
        wanted = {add_months(current, k) for k in range(max(0, months_ahead) + 1)}
        if DEFAULT_PARTITION in existing:
            expired = None if retention_days is None else current_time - timedelta(days=retention_days)
            for r in conn.execute(
                text(f"SELECT DISTINCT date_trunc('month', ts AT TIME ZONE 'UTC') FROM {DEFAULT_PARTITION}")
            ):
                month = month_of(r[0])
                if expired is None or add_months(month, 1) > expired:
                    wanted.add(month)
        for month in sorted(wanted):
            if partition_name(month) not in existing:
                out.moved_from_default += _create(conn, month)
                out.created.append(partition_name(month))
    for name in out.created:
        log.info("created event partition %s", name)
    return out


def apply_retention(engine: Engine, days: int | None, *, now: datetime | None = None) -> Maintenance:
    """Drop every monthly partition whose whole range is older than `days` days, and delete the default
    partition's rows older than that; the ids of the events dropped leave `event_ids`, and the per-minute rollup
    (`event_counts`) loses them too (whole minutes for a partition, negative deltas for default rows).
    `days` None keeps everything."""
    out = Maintenance()
    if engine.dialect.name != "postgresql":
        out.skipped = "SQLite keeps one events table: retention does not apply"
        return out
    if days is None:
        out.skipped = "RECO_EVENT_RETENTION_DAYS is unset: events are kept forever"
        return out
    cutoff = (now or datetime.now(UTC)) - timedelta(days=days)
    out.cutoff = cutoff
    with engine.begin() as conn:
        if not is_partitioned(conn):
            out.skipped = "events is not partitioned (run `reco db upgrade`): retention not applied"
            return out
        if not _lock(conn):
            out.skipped = BUSY
            return out
        names = partitions(conn)
        for name in names:
            month = month_of_partition(name)
            if month is None or add_months(month, 1) > cutoff:
                continue
            end = add_months(month, 1)
            rows = conn.execute(text(f"SELECT count(*) FROM {name}")).scalar_one()
            conn.execute(
                text(
                    f"DELETE FROM event_ids WHERE event_id IN "
                    f"(SELECT event_id FROM {name} WHERE event_id IS NOT NULL)"
                )
            )
            conn.execute(
                text("DELETE FROM event_counts WHERE bucket_start >= :a AND bucket_start < :b"),
                {"a": month, "b": end},
            )
            conn.execute(text(f"ALTER TABLE {PARENT} DETACH PARTITION {name}"))
            conn.execute(text(f"DROP TABLE {name}"))
            out.dropped[name] = int(rows)
        if DEFAULT_PARTITION in names:
            where = f"FROM {DEFAULT_PARTITION} WHERE ts < :c"
            conn.execute(
                text(
                    "INSERT INTO event_counts (bucket_start, type, count) "
                    "SELECT date_trunc('minute', ts AT TIME ZONE 'UTC') AT TIME ZONE 'UTC', type, -count(*) "
                    f"{where} GROUP BY 1, 2"
                ),
                {"c": cutoff},
            )
            conn.execute(
                text(
                    f"DELETE FROM event_ids WHERE event_id IN (SELECT event_id {where} AND event_id IS NOT NULL)"
                ),
                {"c": cutoff},
            )
            out.deleted_from_default = int(conn.execute(text(f"DELETE {where}"), {"c": cutoff}).rowcount or 0)
    for name, rows in out.dropped.items():
        log.info("dropped event partition %s (%d events, past retention)", name, rows)
    return out


def maintain(engine: Engine, months_ahead: int, retention_days: int | None) -> list[Maintenance]:
    """Both passes, partitions ahead then retention (what `reco db maintain` and the service's poller run)."""
    if engine.dialect.name != "postgresql":
        return [Maintenance(skipped="SQLite keeps one events table: nothing to maintain (no partitions)")]
    return [
        ensure_partitions(engine, months_ahead, retention_days=retention_days),
        apply_retention(engine, retention_days),
    ]
