"""The API side: publish an accepted batch and wait (bounded) for JetStream's acknowledgement."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext

from app.errors import Unavailable
from app.eventlog.nats_client import NATS_ERRORS, connect_forever, ensure_stream
from app.settings import Settings

log = logging.getLogger(__name__)


def _unavailable() -> Unavailable:
    return Unavailable(
        "event log is unavailable; retry the request (event ids make retries safe)",
        details=[{"dependency": "event_log"}],
    )


class EventLog:
    """One API process's connection to the stream (made in the background: the API starts without NATS)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self.published = 0  # messages JetStream acknowledged
        self.deduplicated = 0  # of them, publishes JetStream had already stored (same Nats-Msg-Id)

    async def start(self, wait_s: float = 0.0) -> None:
        """Connect in the background; wait up to `wait_s` for the first connection."""
        self._task = asyncio.create_task(self._connect(), name="reco-event-log-connect")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._ready.wait()), wait_s)

    async def _connect(self) -> None:
        self._nc, self._js = await connect_forever(self.settings, "reco-api")
        self._ready.set()
        log.info("event log: publishing to stream %s", self.settings.event_log_stream)

    @property
    def connected(self) -> bool:
        """Connected to a NATS server now."""
        return self._nc is not None and self._nc.is_connected

    @property
    def max_payload(self) -> int:
        """The largest message the server takes (1 MiB by default), less room for the headers."""
        return (self._nc.max_payload if self._nc is not None else 1024 * 1024) - 1024

    async def publish(self, parts: list[bytes], batch_id: str) -> None:
        """Publish every part (Nats-Msg-Id `batch_id`, `batch_id.k` for parts of a split batch) and return once
        JetStream acknowledged each; retried within RECO_EVENT_LOG_TIMEOUT_S (the same id: JetStream stores a
        retried publish once), then `Unavailable` (503)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.event_log_timeout_s
        if self._js is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._ready.wait()), self.settings.event_log_timeout_s)
            if self._js is None:
                raise _unavailable()
        js = self._js
        for k, body in enumerate(parts):
            msg_id = batch_id if len(parts) == 1 else f"{batch_id}.{k}"
            while True:
                left = deadline - loop.time()
                if left <= 0:
                    raise _unavailable()
                try:
                    ack = await js.publish(
                        self.settings.event_log_subject,
                        body,
                        timeout=left,
                        stream=self.settings.event_log_stream,
                        headers={"Nats-Msg-Id": msg_id},
                    )
                except (TimeoutError, nats.errors.TimeoutError):
                    raise _unavailable() from None
                except nats.js.errors.NoStreamResponseError:  # disconnected, or a server without the stream
                    await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                    with contextlib.suppress(*NATS_ERRORS):
                        if self.connected:
                            await asyncio.wait_for(
                                ensure_stream(js, self.settings), max(0.01, deadline - loop.time())
                            )
                    continue
                except NATS_ERRORS as exc:
                    log.warning("event log publish failed: %s", type(exc).__name__)
                    await asyncio.sleep(min(0.05, max(0.0, deadline - loop.time())))
                    continue
                self.published += 1
                self.deduplicated += int(bool(ack.duplicate))
                break

    async def close(self) -> None:
        """Stop connecting; flush and close the connection."""
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        if self._nc is not None:
            with contextlib.suppress(*NATS_ERRORS):
                await self._nc.close()
