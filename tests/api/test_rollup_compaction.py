"""The per-minute event rollup: ingestion appends delta rows (no shared row to wait on), a background pass
folds settled minutes into one compacted row per (minute, type), and every total stays the same."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select

from app.db.engine import make_engine, make_sessionmaker
from app.db.tables import EventCount
from app.events.service import compact_rollup, load_events
from app.records import EventRecord
from app.settings import Settings


def totals(sessions) -> dict[tuple[datetime, str], int]:  # type: ignore[no-untyped-def]
    with sessions() as session:
        rows = session.execute(
            select(EventCount.bucket_start, EventCount.type, func.sum(EventCount.count)).group_by(
                EventCount.bucket_start, EventCount.type
            )
        ).all()
    return {(b.replace(tzinfo=UTC) if b.tzinfo is None else b, t): int(n) for b, t, n in rows}


def test_compaction_folds_settled_minutes_and_keeps_every_total(database_url: str) -> None:
    engine = make_engine(Settings(database_url=database_url))
    sessions = make_sessionmaker(engine)
    now = datetime.now(UTC).replace(second=30, microsecond=0)
    records = [
        EventRecord(f"u{j % 7}", f"i{j % 5}", ("view", "click")[j % 2], now - timedelta(minutes=j % 10))
        for j in range(300)
    ]
    for start in range(0, 300, 50):  # six batches: six delta rows per (minute, type) they touch
        load_events(sessions, records[start : start + 50], source=f"b{start}")
    before = totals(sessions)
    with sessions() as session:
        rows_before = session.scalar(select(func.count()).select_from(EventCount))
    folded = compact_rollup(sessions, now)
    assert folded > 0
    assert totals(sessions) == before  # the same counts, fewer rows
    with sessions() as session:
        settled = session.execute(
            select(EventCount.bucket_start, EventCount.type, EventCount.compacted)
        ).all()
        rows_after = len(settled)
    assert rows_after < rows_before
    cutoff = now - timedelta(minutes=2)
    compacted = [(b, t) for b, t, c in settled if c]
    assert len(compacted) == len(set(compacted))  # one compacted row per (minute, type)
    assert all((b.replace(tzinfo=UTC) if b.tzinfo is None else b) < cutoff for b, _ in compacted)
    load_events(sessions, records[:50], source="again")  # new deltas fold into the compacted rows later
    compact_rollup(sessions, now + timedelta(hours=1))
    after = totals(sessions)
    assert sum(after.values()) == 350
    engine.dispose()
