"""Ingestion: validate each event on its own, store the valid ones idempotently, tell the cache."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import ValidationError
from sqlalchemy import text
from sqlalchemy.orm import Session, sessionmaker

from app.cache import Cache
from app.cache import keys as cache_keys
from app.db.engine import run_transaction
from app.events import repository
from app.events.repository import NewEvent, NewImpression
from app.events.schemas import IMPRESSION, EventIn, Rejection
from app.records import EventRecord, as_utc
from app.serving.recid import origin_of
from app.validation import describe, dotted

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass
class Validated:
    """A batch split into storable events and per-index rejections."""

    events: list[NewEvent] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    in_batch_duplicates: int = 0
    impressions: list[NewImpression] = field(default_factory=list)

    @property
    def valid(self) -> int:
        """Events and impression reports to store."""
        return len(self.events) + len(self.impressions)


def accepted_types(event_weights: Mapping[str, float], negative_types: Iterable[str]) -> frozenset[str]:
    """Every event type ingestion accepts: the weighted ones, the negative ones and `impression`."""
    return frozenset(event_weights) | frozenset(negative_types) | {IMPRESSION}


def validate_events(
    raw: list[Any], *, event_types: frozenset[str], max_future: timedelta, now: datetime | None = None
) -> Validated:
    """Check every event independently; an invalid one never blocks the valid ones of the same batch."""
    now = now or datetime.now(UTC)
    horizon = now + max_future
    out = Validated()
    seen_ids: set[str] = set()
    known = ", ".join(sorted(event_types))
    for index, item in enumerate(raw):
        prefix: list[str | int] = ["events", index]
        if not isinstance(item, dict):
            out.rejected.append(
                Rejection(index=index, error=f"{dotted(prefix)}: must be an object", loc=list(prefix))
            )
            continue
        try:
            event = EventIn.model_validate(item)
        except ValidationError as exc:
            detail = describe(exc, prefix)[0]
            out.rejected.append(
                Rejection(
                    index=index, error=f"{dotted(detail['loc'][2:])}: {detail['msg']}", loc=detail["loc"]
                )
            )
            continue
        problem = _shape_problem(event)
        if problem is not None:
            name, msg = problem
            out.rejected.append(Rejection(index=index, error=f"{name}: {msg}", loc=[*prefix, name]))
            continue
        if event.type not in event_types:
            out.rejected.append(
                Rejection(
                    index=index,
                    error=f"type: unknown event type {event.type!r}; use one of {known} (or configure it)",
                    loc=[*prefix, "type"],
                )
            )
            continue
        ts = event.timestamp or now
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        if ts > horizon:
            out.rejected.append(
                Rejection(
                    index=index,
                    error=f"timestamp: {ts.isoformat()} is more than {max_future} in the future; send UTC times",
                    loc=[*prefix, "timestamp"],
                )
            )
            continue
        if event.event_id is not None:
            if event.event_id in seen_ids:
                out.in_batch_duplicates += 1
                continue
            seen_ids.add(event.event_id)
        if event.type == IMPRESSION:
            assert event.recommendation_id is not None  # _shape_problem checked
            shown = tuple(event.items) if event.items else (str(event.item_id),)
            origin = origin_of(event.recommendation_id)
            out.impressions.append(
                NewImpression(
                    event.recommendation_id,
                    event.user_id,
                    shown,
                    ts,
                    origin.placement,
                    origin.experiment,
                    origin.variant,
                )
            )
            continue
        assert event.item_id is not None  # _shape_problem checked
        out.events.append(
            NewEvent(
                event.event_id,
                event.user_id,
                event.item_id,
                event.type,
                event.value,
                ts,
                event.recommendation_id,
            )
        )
    return out


def _shape_problem(event: EventIn) -> tuple[str, str] | None:
    """(field, what to change) when the fields do not suit the event's type."""
    if event.type == IMPRESSION:
        if event.recommendation_id is None:
            return "recommendation_id", "an impression needs the recommendation_id of the answer it showed"
        if not event.items and event.item_id is None:
            return "items", "an impression lists the items shown (or names one as item_id)"
        if event.items and event.item_id is not None and event.item_id not in event.items:
            return "item_id", "leave item_id out of an impression that lists items (or list it among them)"
        return None
    if event.item_id is None:
        return "item_id", f"is required for a {event.type!r} event (only an impression lists items instead)"
    if event.items is not None:
        return "items", f"only an impression lists items; a {event.type!r} event names one item_id"
    return None


@dataclass(frozen=True, slots=True)
class Stored:
    """What one batch stored: accepted and duplicate counts (impression reports included), and how many of
    the batch's events (impressions left out) were new rows."""

    accepted: int
    duplicates: int
    events_stored: int


def store(session: Session, batch: Validated) -> Stored:
    """Insert the valid events and impressions. The caller commits.

    An impression report counts as one accepted event when it stored a new row, else as one duplicate."""
    stored = repository.insert_batch(session, batch.events)
    shown, repeated = repository.insert_impressions(session, batch.impressions)
    duplicates = batch.in_batch_duplicates + (len(batch.events) - stored) + repeated
    return Stored(stored + shown, duplicates, stored)


def history_entry_of(item_id: str, event_type: str, ts: datetime) -> bytes:
    """An event as an entry of its user's latest-events list in the cache."""
    micros = (as_utc(ts) - _EPOCH) // timedelta(microseconds=1)
    return cache_keys.history_entry(micros, event_type, item_id)


def after_commit(
    cache: Cache, events: list[NewEvent], *, stored: int, history_len: int, history_seconds: int
) -> None:
    """Invalidate every cached answer of the users who just acted (their generation) and put the events on
    their latest-events lists. When some events were duplicates (not stored), the lists of the batch's users
    are dropped instead: which ones were stored is unknown here, and the next read refills from the store."""
    if not events:
        return
    updates: dict[str, list[bytes] | None] = {}
    if stored < len(events):
        updates = dict.fromkeys(sorted({e.user_id for e in events}))
    else:
        for event in sorted(events, key=lambda e: as_utc(e.ts)):  # stable: batch order breaks ties
            entries = updates.setdefault(event.user_id, [])
            assert entries is not None
            entries.append(history_entry_of(event.item_id, event.type, event.ts))
        updates = dict(sorted(updates.items()))
    cache.record_events(updates, history_len, history_seconds)


def load_events(
    sessions: sessionmaker[Session], events: Iterable[EventRecord], *, source: str, chunk_size: int = 5000
) -> tuple[int, int]:
    """Bulk-load records (importers, demo) in chunked transactions; returns (stored, duplicates).

    Events without an id get a deterministic one (`source:user:item:type:epoch`), so loading the same file twice
    stores it once.
    """
    stored = duplicates = 0
    chunk: list[NewEvent] = []

    def flush() -> None:
        nonlocal stored, duplicates
        inserted = run_transaction(sessions, lambda s: repository.insert_batch(s, chunk))
        stored += inserted
        duplicates += len(chunk) - inserted
        chunk.clear()

    for e in events:
        ts = e.timestamp if e.timestamp.tzinfo else e.timestamp.replace(tzinfo=UTC)
        event_id = e.event_id or f"{source}:{e.user_id}:{e.item_id}:{e.type}:{ts.timestamp():.0f}"
        chunk.append(NewEvent(event_id[:256], e.user_id, e.item_id, e.type, e.value, ts))
        if len(chunk) >= chunk_size:
            flush()
    if chunk:
        flush()
    return stored, duplicates


VACUUM_AFTER_FOLDING = 10_000  # delta rows folded in one pass that make the pass vacuum the rollup
ROLLUP_SETTLE = timedelta(minutes=2)  # deltas of minutes older than this are folded (late batches are rare)


def compact_rollup(sessions: sessionmaker[Session], now: datetime | None = None) -> int:
    """Fold the settled delta rows of the per-minute event rollup (a background pass of the API process)."""
    settled = (now or datetime.now(UTC)) - ROLLUP_SETTLE
    folded = run_transaction(sessions, lambda s: repository.compact_event_counts(s, settled))
    if folded >= VACUUM_AFTER_FOLDING:
        # A bulk import leaves up to batches x minutes x types delta rows; once folded they are dead tuples that
        # the index on bucket_start still walks (a day's chart read 700k dead entries after a 1M-event import)
        # until autovacuum comes round. Reclaim them now (PostgreSQL; VACUUM runs outside a transaction).
        engine = sessions.kw["bind"]
        if engine is not None and engine.dialect.name == "postgresql":
            with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                conn.execute(text("VACUUM (ANALYZE) event_counts"))
    return folded
