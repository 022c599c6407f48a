"""The cache fence: an acknowledged change is reflected in the next answer, whatever the cache did meanwhile.

After a change commits (events, an erasure, a hidden item), the cache is told (a user's generation, the epoch).
When that write fails (Redis cut, hung, or the circuit breaker open), other processes could go on serving cached
answers stamped before the change. So the write that failed is made up for through the database:

1. the process whose write failed raises `cache_fence.value` (one UPDATE, committed after the change), then
   holds the acknowledgement until `lease_s` has passed since that commit;
2. every API process reads the fence at least every `lease_s / 4` in the background; a cached answer (or a
   cached latest-events list) is used only while the last successful read *started* less than `lease_s` ago,
   else the read is done first (inline, bounded by the database timeouts);
3. each cache lookup passes the fence value it knows; when the cache's copy is older, the same script bumps the
   epoch before reading (so no answer or list stamped before the miss is served) and stores the new value.

Any read served after the acknowledgement started after the fence commit (1 and 2), so it saw the raised value
and the lookup bumped the epoch (3). The costs: one tiny query per process every `lease_s / 4`, one GET inside
the lookup script, and `lease_s` added to acknowledgements only while the cache fails.

When the database cannot be read, nothing can be acknowledged either (events commit there first): cached answers
are then still served, marked degraded (`X-Reco-Degraded: database`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from contextvars import ContextVar
from datetime import UTC, datetime

from sqlalchemy import Engine, case, select, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.cache import Cache
from app.db.engine import read, run_transaction
from app.db.tables import CacheFence
from app.errors import Unavailable

log = logging.getLogger(__name__)

# Per request: the monotonic time before which its response may not be sent (set from any thread).
_ACK_AFTER: ContextVar[list[float] | None] = ContextVar("reco_ack_after", default=None)


def _raise(session: Session) -> int:
    """value := max(value + 1, now in ms): it never goes back, also after the table was emptied or restored."""
    now_ms = int(time.time() * 1000)
    bumped = CacheFence.value + 1
    done = session.execute(
        update(CacheFence)
        .where(CacheFence.id == 1)
        .values(value=case((bumped > now_ms, bumped), else_=now_ms), raised_at=datetime.now(UTC))
        .returning(CacheFence.value)
    ).scalar_one_or_none()
    if done is None:
        session.add(CacheFence(id=1, value=now_ms, raised_at=datetime.now(UTC)))
        session.flush()
        done = now_ms
    return int(done)


def read_fence(engine: Engine) -> int:
    """The fence value in the database (0 when never raised)."""
    value = read(
        engine, lambda conn: conn.execute(select(CacheFence.value).where(CacheFence.id == 1)).scalar()
    )
    return int(value or 0)


class Fence:
    """One process's view of the fence, and its side of a missed cache write."""

    def __init__(self, engine: Engine, sessions: sessionmaker[Session], cache: Cache, lease_s: float) -> None:
        self.engine = engine
        self.sessions = sessions
        self.cache = cache
        self.lease_s = lease_s
        self.value = 0
        self.db_up: Callable[[], bool] | None = (
            None  # the API's probe: a known-down database is not waited on
        )
        self.raised = 0  # missed writes made up for by this process
        self._checked = float("-inf")  # monotonic start of the latest successful read
        self._lock = threading.Lock()
        self._raise_lock = threading.Lock()
        self._last_raise = (float("-inf"), float("-inf"))  # (start, commit) of this process's latest raise
        cache.on_missed_write = self.missed

    # ---- readers --------------------------------------------------------------------------------------------

    def fresh(self) -> bool:
        """True while the cache may be trusted without reading the fence first."""
        return time.monotonic() - self._checked < self.lease_s

    def refresh(self) -> bool:
        """Read the fence (bounded by the database timeouts); False when the database cannot be read."""
        started = time.monotonic()
        try:
            value = read_fence(self.engine)
        except SQLAlchemyError as exc:
            log.debug("cache fence not read: %s", str(exc).splitlines()[0][:200] if str(exc) else exc)
            return False
        with self._lock:
            moved = value > self.value
            self.value = max(self.value, value)
            self._checked = max(self._checked, started)
            self.cache.fence = self.value
        if moved:
            self.cache.epoch()  # make the cache current now, not only at the next lookup
        return True

    async def ready(self) -> bool:
        """True: cached answers may be served as they are. False: the database is unreachable, so the cache
        is served as it stands (degraded; nothing could be acknowledged meanwhile)."""
        if self.fresh():
            return True
        if self.db_up is not None and not self.db_up():
            return (
                False  # known down (app/db/engine.DatabaseProbe): don't spend a connect timeout finding out
            )
        return await run_in_threadpool(self.refresh)

    # ---- writers --------------------------------------------------------------------------------------------

    def missed(self) -> None:
        """A cache write that a committed change needed failed: raise the fence, and hold the acknowledgement
        (of the request being served, else of the caller here) until every process has seen it.

        Raises `Unavailable` when the fence cannot be raised: the change is stored, but not acknowledged, and a
        retry (idempotent by event id) tells the cache again.
        """
        noticed = time.monotonic()
        with self._raise_lock:
            start, commit = self._last_raise
            if start <= noticed:  # no raise began after this write failed: one must
                start = time.monotonic()
                try:
                    value = run_transaction(self.sessions, _raise)
                except SQLAlchemyError as exc:
                    log.warning("cache write missed and the fence could not be raised: %s", exc)
                    raise Unavailable(
                        "stored, but the cache and the database are both failing: retry the request "
                        "(event ids make retries safe)",
                        details=[{"dependency": "cache"}, {"dependency": "database"}],
                    ) from None
                commit = time.monotonic()
                self._last_raise = (start, commit)
                self.raised += 1
                with self._lock:
                    self.value = max(self.value, value)
                    self.cache.fence = self.value
                log.warning(
                    "cache write missed: fence raised to %d; acknowledging in %.2f s", value, self.lease_s
                )
        ack_after = commit + self.lease_s
        holder = _ACK_AFTER.get()
        if holder is not None:
            holder[0] = max(holder[0], ack_after)
        elif not _on_event_loop():  # a read (nothing to acknowledge) must never block the loop
            time.sleep(max(0.0, ack_after - time.monotonic()))


def _on_event_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


class AckAfterFence:
    """Pure ASGI: holds a response whose request missed a cache write until the fence lease has passed."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD"):
            await self.app(scope, receive, send)  # reads acknowledge no change: nothing to hold
            return
        holder = [0.0]
        token = _ACK_AFTER.set(holder)

        async def held(message: Message) -> None:
            if message["type"] == "http.response.start":
                wait = holder[0] - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            await send(message)

        try:
            await self.app(scope, receive, held)
        finally:
            _ACK_AFTER.reset(token)
