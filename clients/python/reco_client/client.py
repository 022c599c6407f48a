"""`Reco`: the synchronous client, with a background event batcher."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from types import TracebackType
from typing import Any

import httpx

from reco_client import _calls as c
from reco_client import models as m
from reco_client.errors import BadRequest, RecoConnectionError, RecoError, error_for

log = logging.getLogger("reco_client")
USER_AGENT = "reco-client-python/0.1.0"


def _headers(key: str | None, user_token: str | None) -> dict[str, str]:
    headers = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    if user_token:
        headers["X-Reco-User-Token"] = user_token
    return headers


def _answer(call: c.Call, response: httpx.Response) -> Any:
    if response.status_code >= 400:
        try:
            body: Any = response.json()
        except ValueError:
            body = response.text
        raise error_for(response.status_code, body, c.retry_after(response.headers.get("Retry-After")))
    if call.read is None or response.status_code == 204 or not response.content:
        return None
    return call.read(response.json())


def _outcome(
    call: c.Call, response: httpx.Response | None, exc: httpx.TransportError | None
) -> tuple[bool, Any]:
    """One attempt's result: (True, the answer), or (False, the RecoError to retry on). Raises what is final."""
    if response is None:  # connection refused or reset, timeouts
        return False, RecoConnectionError(f"{call.method} {call.path}: {exc!r}")
    if response.status_code not in c.RETRY_STATUSES:
        return True, _answer(call, response)
    try:
        _answer(call, response)
    except RecoError as error:
        return False, error
    return True, None  # pragma: no cover - a retry status always raises in _answer


class _ClientCore:
    """What `Reco` and `AsyncReco` share: their options, checked once, and the batcher's state; each opens its
    own HTTP client and locks in `_open`."""

    def __init__(
        self,
        base_url: str,
        key: str | None = None,
        *,
        timeout: float = 10.0,
        retry: c.Retry | None = None,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        max_queued: int = 100_000,
        user_token: str | None = None,
        transport: httpx.BaseTransport | httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not 1 <= batch_size <= c.MAX_BATCH:
            raise ValueError(f"batch_size: from 1 to {c.MAX_BATCH} (got {batch_size})")
        if flush_interval <= 0:
            raise ValueError(f"flush_interval: must be > 0 seconds (got {flush_interval})")
        self.base_url = base_url.rstrip("/")
        self.retry = retry or c.Retry()
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.max_queued = max_queued
        self.stats = EventStats()
        self._queue: list[dict[str, Any]] = []
        self._oldest: float | None = None  # monotonic time the oldest queued event was queued
        self._closed = False
        self.last_error: RecoError | None = None  # the background flusher's last failure
        self._open(_headers(key, user_token), httpx.Timeout(timeout, connect=min(timeout, 5.0)), transport)

    def _open(self, headers: dict[str, str], timeout: httpx.Timeout, transport: Any) -> None:
        raise NotImplementedError


class EventStats:
    """What the batcher sent so far (the server's counts, summed over batches)."""

    def __init__(self) -> None:
        self.batches = 0
        self.accepted = 0
        self.duplicates = 0
        self.rejected: list[m.Rejection] = []  # the most recent 1,000, with their batch's index

    def add(self, result: m.IngestResult) -> None:
        self.batches += 1
        self.accepted += result.accepted
        self.duplicates += result.duplicates
        self.rejected = (self.rejected + list(result.rejected))[-1000:]


class Reco(_ClientCore):
    """A Reco service at `base_url`, called with `key` (a server or publishable key).

    `recommend`, `similar`, `popular`, catalog, user and admin calls go out at once. Events are batched:
    `send_events` queues them and a background thread posts a batch when `batch_size` are queued or
    `flush_interval` seconds after the oldest was queued; `flush()` sends what is queued now and `close()`
    flushes and stops. Failed batches stay queued (in order) and are resent with the same `event_id`s, so a
    retry never stores an event twice. Calls are retried on 429/503/connection errors with exponential
    backoff and jitter (`retry`); errors arrive as `RecoError` subclasses carrying the server's code.
    """

    def _open(self, headers: dict[str, str], timeout: httpx.Timeout, transport: Any) -> None:
        self._http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._cond = threading.Condition()
        self._send_lock = threading.Lock()  # one batch in flight at a time: order is kept
        self._thread: threading.Thread | None = None

    # ---- plumbing -------------------------------------------------------------------------------------
    def _do(self, call: c.Call) -> Any:
        for attempt in range(self.retry.attempts + 1):
            try:
                done, got = _outcome(
                    call, self._http.request(call.method, call.path, params=call.params, json=call.body), None
                )
            except httpx.TransportError as exc:
                done, got = _outcome(call, None, exc)
            if done:
                return got
            if attempt < self.retry.attempts:
                time.sleep(self.retry.delay(attempt, got.retry_after))
        raise got

    def __enter__(self) -> Reco:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---- events ---------------------------------------------------------------------------------------
    def send_events(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        """Queue events for the next batch; returns their `event_id`s (assigned here where missing)."""
        if self._closed:
            raise RuntimeError("this client is closed")
        prepared = c.prepare_events(events)
        with self._cond:
            if not self._queue:
                self._oldest = time.monotonic()
            self._queue.extend(prepared)
            full = len(self._queue) >= self.batch_size
            over = len(self._queue) > self.max_queued
            if full:
                self._cond.notify_all()
        self._start()
        if over:  # back-pressure: the caller sends what is queued itself (and sees any error)
            self._drain(force=True)
        return [e["event_id"] for e in prepared]

    def send_event(self, user_id: str, type: str, item_id: str | None = None, **fields: Any) -> str:
        """Queue one event; returns its `event_id`."""
        return self.send_events([{"user_id": user_id, "type": type, "item_id": item_id, **fields}])[0]

    def impression(self, user_id: str, recommendation: m.Recommendations | m.Similar | m.Popular) -> str:
        """Report the items of an answer as shown to `user_id` (stored once per answer and item)."""
        return self.send_event(
            user_id,
            "impression",
            recommendation_id=recommendation.recommendation_id,
            items=[i.item_id for i in recommendation.items],
        )

    def click(
        self, user_id: str, item_id: str, recommendation_id: str | None = None, type: str = "click"
    ) -> str:
        """Report that `user_id` clicked `item_id` of the answer `recommendation_id` (attribution)."""
        extra = {"recommendation_id": recommendation_id} if recommendation_id else {}
        return self.send_event(user_id, type, item_id, **extra)

    def post_events(self, events: Iterable[Mapping[str, Any]]) -> m.IngestResult:
        """Send events now, in one request (at most 5,000), without the batcher."""
        prepared = c.prepare_events(events)
        if len(prepared) > c.MAX_BATCH:
            raise ValueError(
                f"events: at most {c.MAX_BATCH} in one request (got {len(prepared)}); use send_events"
            )
        result: m.IngestResult = self._do(c.events(prepared))
        return result

    @property
    def queued(self) -> int:
        """Events queued and not yet acknowledged by the server."""
        with self._cond:
            return len(self._queue)

    def flush(self) -> None:
        """Send every queued event now; raises the error if a batch cannot be sent (it stays queued)."""
        self._drain(force=True)

    def close(self) -> None:
        """Flush, stop the background flusher and close the connections."""
        if self._closed:
            return
        try:
            self.flush()
        finally:
            self._closed = True
            with self._cond:
                self._cond.notify_all()
            if self._thread is not None:
                self._thread.join(timeout=self.retry.cap_s * 2)
            self._http.close()

    def _start(self) -> None:
        if self._thread is None:
            with self._cond:
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name="reco-client-flush", daemon=True)
                    self._thread.start()

    def _due(self) -> bool:
        return bool(self._queue) and (
            len(self._queue) >= self.batch_size
            or (self._oldest is not None and time.monotonic() - self._oldest >= self.flush_interval)
        )

    def _drain(self, force: bool) -> None:
        with self._send_lock:
            while True:
                with self._cond:
                    if not self._queue or (not force and not self._due()):
                        return
                    batch = self._queue[: self.batch_size]
                    del self._queue[: len(batch)]
                    rest_since = self._oldest
                try:
                    result: m.IngestResult = self._do(c.events(batch))
                except BadRequest:
                    # the whole batch is malformed: resending cannot help; drop it and say so
                    with self._cond:
                        self._oldest = time.monotonic() if self._queue else None
                    raise
                except BaseException:
                    with self._cond:
                        self._queue[:0] = batch
                        self._oldest = rest_since
                    raise
                self.stats.add(result)
                with self._cond:
                    self._oldest = time.monotonic() if self._queue else None

    def _run(self) -> None:
        while not self._closed:
            with self._cond:
                if not self._due():
                    wait = self.flush_interval
                    if self._queue and self._oldest is not None:
                        wait = max(0.0, self.flush_interval - (time.monotonic() - self._oldest))
                    self._cond.wait(timeout=wait)
                if self._closed or not self._due():
                    continue
            try:
                self._drain(force=False)
                self.last_error = None
            except RecoError as exc:
                self.last_error = exc
                log.warning("reco-client: a batch of events could not be sent (kept for later): %s", exc)
                time.sleep(min(self.flush_interval, 1.0))
            except Exception as exc:  # pragma: no cover - never let the thread die silently
                log.exception("reco-client: the background flusher failed: %r", exc)
                time.sleep(min(self.flush_interval, 1.0))

    # ---- recommendations ------------------------------------------------------------------------------
    def recommend(self, user_id: str, k: int = 10, **params: Any) -> m.Recommendations:
        """`GET /v1/users/{user_id}/recommendations`: params `category`, `exclude` (a list), `include_seen`,
        `explain`, `placement`, `filter`, `rules`."""
        result: m.Recommendations = self._do(c.recommend(user_id, k, **params))
        return result

    def recommend_session(self, recent_items: Iterable[str], k: int = 10, **fields: Any) -> m.Recommendations:
        """`POST /v1/recommendations` for an anonymous session's recent items."""
        result: m.Recommendations = self._do(c.recommend_session(recent_items, k, **fields))
        return result

    def similar(self, item_id: str, k: int = 10, **params: Any) -> m.Similar:
        result: m.Similar = self._do(c.similar(item_id, k, **params))
        return result

    def popular(self, k: int = 10, **params: Any) -> m.Popular:
        result: m.Popular = self._do(c.popular(k, **params))
        return result

    # ---- catalog and users ----------------------------------------------------------------------------
    def put_item(self, item_id: str, **fields: Any) -> m.Item:
        result: m.Item = self._do(c.put_item(item_id, fields))
        return result

    def upsert_items(self, items: list[Mapping[str, Any]]) -> m.IngestResult:
        total = m.IngestResult(0, 0, [])
        for start in range(0, len(items), c.MAX_BATCH):
            part: m.IngestResult = self._do(c.upsert_items(items[start : start + c.MAX_BATCH]))
            total = m.IngestResult(
                total.accepted + part.accepted,
                total.duplicates + part.duplicates,
                [*total.rejected, *part.rejected],
            )
        return total

    def get_item(self, item_id: str) -> m.Item:
        result: m.Item = self._do(c.get_item(item_id))
        return result

    def items(
        self, *, category: str | None = None, available: bool | None = None, page_size: int = 100
    ) -> Iterator[m.Item]:
        """Every item (following the cursor)."""
        cursor = None
        while True:
            page: m.ItemPage = self._do(
                c.list_items(category=category, available=available, limit=page_size, cursor=cursor)
            )
            yield from page.items
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    def delete_item(self, item_id: str) -> None:
        self._do(c.delete_item(item_id))

    def put_user(self, user_id: str, attributes: Mapping[str, Any] | None = None) -> m.User:
        result: m.User = self._do(c.put_user(user_id, attributes))
        return result

    def get_user(self, user_id: str) -> m.User:
        result: m.User = self._do(c.get_user(user_id))
        return result

    def delete_user(self, user_id: str) -> None:
        """Erase the user, its events and cached answers (admin)."""
        self._do(c.delete_user(user_id))

    # ---- admin ----------------------------------------------------------------------------------------
    def retrain(
        self, reason: str | None = None, *, mode: str | None = None, time_budget_s: float | None = None
    ) -> m.Job:
        result: m.Job = self._do(c.retrain(reason, mode, time_budget_s))
        return result

    def job(self, job_id: str) -> m.Job:
        result: m.Job = self._do(c.job(job_id))
        return result

    def wait_for_job(self, job_id: str, timeout: float = 600.0, poll: float = 0.5) -> m.Job:
        """Poll until the job has succeeded or failed (or `timeout` seconds passed: TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            current = self.job(job_id)
            if current.status in ("succeeded", "failed"):
                return current
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {current.status} after {timeout} s")
            time.sleep(poll)

    def models(self) -> m.ModelList:
        result: m.ModelList = self._do(c.list_models())
        return result

    def activate(self, version: str) -> m.Activated:
        result: m.Activated = self._do(c.activate(version))
        return result
