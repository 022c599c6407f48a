"""`AsyncReco`: the asyncio client (same operations as `Reco`; events batched by a background task)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from types import TracebackType
from typing import Any

import httpx

from reco_client import _calls as c
from reco_client import models as m
from reco_client.client import _ClientCore, _outcome
from reco_client.errors import BadRequest, RecoError

log = logging.getLogger("reco_client")


class AsyncReco(_ClientCore):
    """Like `Reco`, for asyncio code: `await client.recommend("u1", k=10)`. Create it inside a running event
    loop; `await client.aclose()` (or `async with AsyncReco(...) as client`) flushes queued events."""

    def _open(self, headers: dict[str, str], timeout: httpx.Timeout, transport: Any) -> None:
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self._wake = asyncio.Event()
        self._send_lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    async def _do(self, call: c.Call) -> Any:
        for attempt in range(self.retry.attempts + 1):
            try:
                response = await self._http.request(
                    call.method, call.path, params=call.params, json=call.body
                )
                done, got = _outcome(call, response, None)
            except httpx.TransportError as exc:
                done, got = _outcome(call, None, exc)
            if done:
                return got
            if attempt < self.retry.attempts:
                await asyncio.sleep(self.retry.delay(attempt, got.retry_after))
        raise got

    async def __aenter__(self) -> AsyncReco:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # ---- events ---------------------------------------------------------------------------------------
    async def send_events(self, events: Iterable[Mapping[str, Any]]) -> list[str]:
        if self._closed:
            raise RuntimeError("this client is closed")
        prepared = c.prepare_events(events)
        if not self._queue:
            self._oldest = time.monotonic()
        self._queue.extend(prepared)
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="reco-client-flush")
        if len(self._queue) >= self.batch_size:
            self._wake.set()
        if len(self._queue) > self.max_queued:
            await self._drain(force=True)
        return [e["event_id"] for e in prepared]

    async def send_event(self, user_id: str, type: str, item_id: str | None = None, **fields: Any) -> str:
        return (await self.send_events([{"user_id": user_id, "type": type, "item_id": item_id, **fields}]))[0]

    async def impression(
        self, user_id: str, recommendation: m.Recommendations | m.Similar | m.Popular
    ) -> str:
        """Report the items of an answer as shown to `user_id` (stored once per answer and item)."""
        return await self.send_event(
            user_id,
            "impression",
            recommendation_id=recommendation.recommendation_id,
            items=[i.item_id for i in recommendation.items],
        )

    async def click(
        self, user_id: str, item_id: str, recommendation_id: str | None = None, type: str = "click"
    ) -> str:
        extra = {"recommendation_id": recommendation_id} if recommendation_id else {}
        return await self.send_event(user_id, type, item_id, **extra)

    async def post_events(self, events: Iterable[Mapping[str, Any]]) -> m.IngestResult:
        prepared = c.prepare_events(events)
        if len(prepared) > c.MAX_BATCH:
            raise ValueError(
                f"events: at most {c.MAX_BATCH} in one request (got {len(prepared)}); use send_events"
            )
        result: m.IngestResult = await self._do(c.events(prepared))
        return result

    @property
    def queued(self) -> int:
        return len(self._queue)

    async def flush(self) -> None:
        await self._drain(force=True)

    async def aclose(self) -> None:
        if self._closed:
            return
        try:
            await self.flush()
        finally:
            self._closed = True
            if self._task is not None:
                self._task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._task
            await self._http.aclose()

    close = aclose

    def _due(self) -> bool:
        return bool(self._queue) and (
            len(self._queue) >= self.batch_size
            or (self._oldest is not None and time.monotonic() - self._oldest >= self.flush_interval)
        )

    async def _drain(self, force: bool) -> None:
        async with self._send_lock:
            while self._queue and (force or self._due()):
                batch = self._queue[: self.batch_size]
                del self._queue[: len(batch)]
                since = self._oldest
                try:
                    result: m.IngestResult = await self._do(c.events(batch))
                except BadRequest:
                    self._oldest = time.monotonic() if self._queue else None
                    raise
                except BaseException:
                    self._queue[:0] = batch
                    self._oldest = since
                    raise
                self.stats.add(result)
                self._oldest = time.monotonic() if self._queue else None

    async def _run(self) -> None:
        while not self._closed:
            wait = self.flush_interval
            if self._queue and self._oldest is not None:
                wait = max(0.0, self.flush_interval - (time.monotonic() - self._oldest))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=wait)
            self._wake.clear()
            if not self._due():
                continue
            try:
                await self._drain(force=False)
                self.last_error = None
            except RecoError as exc:
                self.last_error = exc
                log.warning("reco-client: a batch of events could not be sent (kept for later): %s", exc)
                await asyncio.sleep(min(self.flush_interval, 1.0))

    # ---- the rest -------------------------------------------------------------------------------------
    async def recommend(self, user_id: str, k: int = 10, **params: Any) -> m.Recommendations:
        result: m.Recommendations = await self._do(c.recommend(user_id, k, **params))
        return result

    async def recommend_session(
        self, recent_items: Iterable[str], k: int = 10, **fields: Any
    ) -> m.Recommendations:
        result: m.Recommendations = await self._do(c.recommend_session(recent_items, k, **fields))
        return result

    async def similar(self, item_id: str, k: int = 10, **params: Any) -> m.Similar:
        result: m.Similar = await self._do(c.similar(item_id, k, **params))
        return result

    async def popular(self, k: int = 10, **params: Any) -> m.Popular:
        result: m.Popular = await self._do(c.popular(k, **params))
        return result

    async def put_item(self, item_id: str, **fields: Any) -> m.Item:
        result: m.Item = await self._do(c.put_item(item_id, fields))
        return result

    async def upsert_items(self, items: list[Mapping[str, Any]]) -> m.IngestResult:
        total = m.IngestResult(0, 0, [])
        for start in range(0, len(items), c.MAX_BATCH):
            part: m.IngestResult = await self._do(c.upsert_items(items[start : start + c.MAX_BATCH]))
            total = m.IngestResult(
                total.accepted + part.accepted,
                total.duplicates + part.duplicates,
                [*total.rejected, *part.rejected],
            )
        return total

    async def get_item(self, item_id: str) -> m.Item:
        result: m.Item = await self._do(c.get_item(item_id))
        return result

    async def items(
        self, *, category: str | None = None, available: bool | None = None, page_size: int = 100
    ) -> AsyncIterator[m.Item]:
        cursor = None
        while True:
            page: m.ItemPage = await self._do(
                c.list_items(category=category, available=available, limit=page_size, cursor=cursor)
            )
            for item in page.items:
                yield item
            if not page.next_cursor:
                return
            cursor = page.next_cursor

    async def delete_item(self, item_id: str) -> None:
        await self._do(c.delete_item(item_id))

    async def put_user(self, user_id: str, attributes: Mapping[str, Any] | None = None) -> m.User:
        result: m.User = await self._do(c.put_user(user_id, attributes))
        return result

    async def get_user(self, user_id: str) -> m.User:
        result: m.User = await self._do(c.get_user(user_id))
        return result

    async def delete_user(self, user_id: str) -> None:
        await self._do(c.delete_user(user_id))

    async def retrain(
        self, reason: str | None = None, *, mode: str | None = None, time_budget_s: float | None = None
    ) -> m.Job:
        result: m.Job = await self._do(c.retrain(reason, mode, time_budget_s))
        return result

    async def job(self, job_id: str) -> m.Job:
        result: m.Job = await self._do(c.job(job_id))
        return result

    async def models(self) -> m.ModelList:
        result: m.ModelList = await self._do(c.list_models())
        return result

    async def activate(self, version: str) -> m.Activated:
        result: m.Activated = await self._do(c.activate(version))
        return result
