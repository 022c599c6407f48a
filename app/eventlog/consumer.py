"""`reco consume`: a durable JetStream pull consumer that writes batches to the database.

Each of RECO_EVENT_LOG_WRITERS writers fetches up to RECO_EVENT_LOG_FETCH messages, stores all their events in
one transaction (COPY into a temporary table, then an insert that skips event ids already stored: app/eventlog/repository.py), their
impression reports, and the rollup of the rows actually stored; then tells the cache (as the direct path does)
and only then acknowledges the messages. A crash anywhere before the acknowledgement gets the messages delivered
again, and the event ids make the second write store nothing twice. While the database is unreachable the
batch is retried (with backoff, telling JetStream it is still in progress), never acknowledged.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from prometheus_client import CollectorRegistry, Counter, Gauge
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError, SQLAlchemyError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from app.cache import Cache
from app.db.engine import run_transaction
from app.errors import Unavailable
from app.eventlog import codec, repository
from app.eventlog.nats_client import NATS_ERRORS, connect_forever
from app.events import repository as events_repository
from app.events.repository import NewEvent
from app.events.service import history_entry_of
from app.records import as_utc
from app.settings import Settings

log = logging.getLogger(__name__)

CACHE_USERS_PER_CALL = 256  # users per cache call: a transaction of 30,000 events touches thousands of users,
# and one script call for all of them would outlast the cache's 0.25 s timeout


@dataclass(frozen=True, slots=True)
class Written:
    """What one transaction stored."""

    events: int  # events in the messages
    stored: int  # new rows (the others' ids were stored already)
    impressions: int  # impression reports that stored a row


def _transient(exc: BaseException) -> bool:
    """A database that is away (retry the same batch), not a batch the database refuses."""
    if isinstance(exc, (OperationalError, InterfaceError, PoolTimeout, Unavailable)):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


def record_in_cache(
    cache: Cache, events: list[NewEvent], stored: set[str] | None, *, history_len: int, history_seconds: int
) -> None:
    """As app/events/service.after_commit, knowing which rows were new: the events of a user all of whose
    events were stored go on their latest-events list; a user with any event already stored (a redelivery
    after a crash between commit and acknowledgement) has the list dropped (the next read refills it from the
    store); every user's cached answers are invalidated either way."""
    if not events:
        return
    if stored is None:
        again = {e.user_id for e in events}
    else:
        again = {e.user_id for e in events if e.event_id not in stored}
    updates: dict[str, list[bytes] | None] = dict.fromkeys(again)
    seen: set[str | None] = set()
    for event in sorted(events, key=lambda e: as_utc(e.ts)):  # stable: batch order breaks ties
        if event.user_id in again or event.event_id in seen:
            continue
        seen.add(event.event_id)
        entries = updates.setdefault(event.user_id, [])
        assert entries is not None
        entries.append(history_entry_of(event.item_id, event.type, event.ts))
    ordered = sorted(updates.items())
    for start in range(0, len(ordered), CACHE_USERS_PER_CALL):  # one call per user stays atomic
        cache.record_events(dict(ordered[start : start + CACHE_USERS_PER_CALL]), history_len, history_seconds)


@dataclass(frozen=True, slots=True)
class Committed:
    """A committed transaction, before the cache was told and the messages acknowledged."""

    events: list[NewEvent]
    stored: set[str] | None  # ids stored now (None: which is unknown, SQLite)
    written: Written


def store_batches(sessions: sessionmaker[Session], batches: list[codec.Decoded]) -> Committed:
    """Store the batches' events and impressions in one transaction (raises on failure: nothing to ack)."""
    events = [e for b in batches for e in b.events]
    impressions = [i for b in batches for i in b.impressions]

    def work(session: Session) -> tuple[set[str] | None, int]:
        stored = repository.copy_events(session, events)
        shown, _repeated = events_repository.insert_impressions(session, impressions)
        return stored, shown

    stored, shown = run_transaction(sessions, work)
    n_stored = len(stored) if stored is not None else len({e.event_id for e in events})
    return Committed(events, stored, Written(len(events), n_stored, shown))


class ConsumerMetrics:
    """The consumer's Prometheus metrics (its own registry: `reco consume --metrics-port`)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.events = Counter(
            "reco_event_log_events",
            "Events read from the event log, by outcome (stored, duplicate: id already stored)",
            ["outcome"],
            registry=self.registry,
        )
        self.messages = Counter(
            "reco_event_log_messages", "Messages acknowledged after their commit", registry=self.registry
        )
        self.failures = Counter(
            "reco_event_log_write_failures", "Transactions that failed (retried)", registry=self.registry
        )
        self.pending = Gauge(
            "reco_event_log_pending",
            "Lag: batches in the stream not yet delivered to the consumer",
            registry=self.registry,
        )
        self.ack_pending = Gauge(
            "reco_event_log_ack_pending",
            "Batches delivered but not yet written and acknowledged",
            registry=self.registry,
        )


class Consumer:
    """The durable pull consumer loop."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        cache: Cache,
        metrics: ConsumerMetrics | None = None,
        *,
        log_every_s: float = 10.0,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self.cache = cache
        self.metrics = metrics or ConsumerMetrics()
        self.log_every_s = log_every_s
        self.totals = [0, 0]  # events stored, duplicates (ids already stored)
        self.lag: tuple[int, int] | None = None  # (pending, ack pending), read every second

    def consumer_config(self) -> ConsumerConfig:
        s = self.settings
        return ConsumerConfig(
            durable_name=s.event_log_durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.ALL,
            ack_wait=s.event_log_ack_wait_s,
            max_ack_pending=max(1000, 4 * s.event_log_fetch),
            filter_subject=s.event_log_subject,
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Consume with RECO_EVENT_LOG_WRITERS concurrent writers until `stop` is set; messages taken and not
        written are given back (nak)."""
        s = self.settings
        nc, js = await _until(stop, connect_forever(s, "reco-consume"))
        if nc is None or js is None:
            return
        writers: list[asyncio.Task[None]] = []
        try:
            subs = [await _subscribe(js, s, self.consumer_config()) for _ in range(s.event_log_writers)]
            log.info(
                "consuming stream %s as %s (%d writers)", s.event_log_stream, s.event_log_durable, len(subs)
            )
            writers = [asyncio.create_task(self._writer(sub, stop)) for sub in subs]
            last_log = time.monotonic()
            while not stop.is_set():
                await self._read_lag(subs[0])
                if time.monotonic() - last_log >= self.log_every_s:
                    last_log = time.monotonic()
                    pending = self.lag[0] if self.lag else "?"
                    log.info(
                        "event log: %d events stored, %d duplicates; lag %s batches", *self.totals, pending
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), min(1.0, self.log_every_s))
                for task in writers:
                    if task.done():
                        task.result()  # a writer that died takes the process down (loudly)
        finally:
            stop.set()
            await asyncio.gather(*writers, return_exceptions=True)
            with contextlib.suppress(*NATS_ERRORS):
                await nc.close()

    async def _writer(self, sub: JetStreamContext.PullSubscription, stop: asyncio.Event) -> None:
        """One writer: fetch, store, tell the cache, acknowledge; again. Writers overlap one another's database
        round trips (PostgreSQL works on one transaction per connection)."""
        s = self.settings
        while not stop.is_set():
            try:
                msgs = await sub.fetch(batch=s.event_log_fetch, timeout=1.0)
            except nats.errors.TimeoutError:
                continue  # nothing to consume
            except NATS_ERRORS as exc:  # disconnected: the client reconnects by itself
                log.debug("event log fetch failed: %s", type(exc).__name__)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.5)
                continue
            written = await self._handle(msgs, stop)
            if written is not None:
                self.totals[0] += written.stored
                self.totals[1] += written.events - written.stored

    async def _read_lag(self, sub: JetStreamContext.PullSubscription) -> None:
        try:
            info = await sub.consumer_info()
        except NATS_ERRORS:
            return
        self.lag = (int(info.num_pending or 0), int(info.num_ack_pending or 0))
        self.metrics.pending.set(self.lag[0])
        self.metrics.ack_pending.set(self.lag[1])

    async def _handle(self, msgs: list[Msg], stop: asyncio.Event) -> Written | None:
        batches: list[codec.Decoded] = []
        good: list[Msg] = []
        for msg in msgs:
            try:
                batches.append(codec.decode(msg.data))
                good.append(msg)
            except (ValueError, KeyError, TypeError) as exc:  # not ours: kept out of the way, loudly
                log.error("event log: message %s is not a batch (%s): terminated", _seq(msg), exc)
                with contextlib.suppress(*NATS_ERRORS):
                    await msg.term()
        if not good:
            return None
        return await self._write(good, batches, stop)

    async def _write(
        self, good: list[Msg], batches: list[codec.Decoded], stop: asyncio.Event
    ) -> Written | None:
        s = self.settings
        delay = min(0.2, s.event_log_ack_wait_s / 2)
        while True:
            try:
                committed = await asyncio.to_thread(store_batches, self.sessions, batches)
                break
            except (SQLAlchemyError, Unavailable) as exc:
                self.metrics.failures.inc()
                if not _transient(exc):
                    if len(good) > 1:  # find the one batch the database refuses; write the others
                        return await self._one_by_one(good, batches, stop)
                    log.error(
                        "event log: batch %s refused by the database (%s); delivered again in 30 s",
                        _seq(good[0]),
                        str(exc).splitlines()[0][:300],
                    )
                    with contextlib.suppress(*NATS_ERRORS):
                        await good[0].nak(delay=30)
                    return None
                log.warning(
                    "event log: database unavailable (%s); retrying %d batches in %.1f s",
                    str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__,
                    len(good),
                    delay,
                )
                for msg in good:  # keep them ours while the database is away
                    with contextlib.suppress(*NATS_ERRORS):
                        await msg.in_progress()
                if stop.is_set():
                    for msg in good:
                        with contextlib.suppress(*NATS_ERRORS):
                            await msg.nak()
                    return None
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
                # the next in_progress() goes out before the ack wait ends
                delay = min(delay * 2, 5.0, s.event_log_ack_wait_s / 2)
        await self._finish(good, committed)
        return committed.written

    async def _finish(self, good: list[Msg], committed: Committed) -> None:
        """Tell the cache (as the direct path does), then acknowledge: a crash before this gets the messages
        delivered again, and their second write, storing nothing, drops the users' lists instead."""
        s = self.settings
        try:
            await asyncio.to_thread(
                record_in_cache,
                self.cache,
                committed.events,
                committed.stored,
                history_len=s.history_len,
                history_seconds=s.history_cache_seconds,
            )
        except (SQLAlchemyError, Unavailable) as exc:  # the fence could not be raised: not acknowledged
            log.warning("event log: cache not told and fence not raised (%s): batches delivered again", exc)
            return
        for msg in good:
            with contextlib.suppress(*NATS_ERRORS):
                await msg.ack()
        written = committed.written
        self.metrics.messages.inc(len(good))
        self.metrics.events.labels("stored").inc(written.stored)
        self.metrics.events.labels("duplicate").inc(written.events - written.stored)

    async def _one_by_one(
        self, msgs: list[Msg], batches: list[codec.Decoded], stop: asyncio.Event
    ) -> Written | None:
        events = stored = shown = 0
        for msg, batch in zip(msgs, batches, strict=True):
            done = await self._write([msg], [batch], stop)
            if done is not None:
                events, stored, shown = events + done.events, stored + done.stored, shown + done.impressions
        return Written(events, stored, shown)


def _seq(msg: Msg) -> str:
    with contextlib.suppress(Exception):
        return str(msg.metadata.sequence.stream)
    return "?"


async def _subscribe(
    js: JetStreamContext, settings: Settings, config: ConsumerConfig
) -> JetStreamContext.PullSubscription:
    return await js.pull_subscribe(
        settings.event_log_subject,
        durable=settings.event_log_durable,
        stream=settings.event_log_stream,
        config=config,
    )


async def _until(
    stop: asyncio.Event, work: Coroutine[Any, Any, tuple[Client, JetStreamContext]]
) -> tuple[Client | None, JetStreamContext | None]:
    """Await `work` unless `stop` is set first ((None, None) then)."""
    task = asyncio.ensure_future(work)
    stopper = asyncio.ensure_future(stop.wait())
    done, _ = await asyncio.wait({task, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        stopper.cancel()
        return task.result()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await task
    return (None, None)
