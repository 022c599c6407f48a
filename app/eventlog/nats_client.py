"""The NATS connection both sides share: connect with retries in the background, make sure the stream exists."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

from app.settings import Settings

log = logging.getLogger(__name__)

NATS_ERRORS: tuple[type[BaseException], ...] = (nats.errors.Error, TimeoutError, OSError)


def stream_config(settings: Settings) -> StreamConfig:
    """The stream: work-queue retention (a batch is deleted once the consumer acknowledged it, so the disk
    holds the backlog only), file storage by default, `event_log_replicas` copies."""
    return StreamConfig(
        name=settings.event_log_stream,
        subjects=[settings.event_log_subject],
        retention=RetentionPolicy.WORK_QUEUE,
        storage=StorageType(settings.event_log_storage),
        num_replicas=settings.event_log_replicas,
        duplicate_window=settings.event_log_duplicate_window_s,
        max_age=settings.event_log_max_age_s or None,
    )


async def ensure_stream(js: JetStreamContext, settings: Settings) -> None:
    """Create the stream when missing (an existing one is kept as it is configured)."""
    try:
        await js.stream_info(settings.event_log_stream)
        return
    except nats.js.errors.NotFoundError:
        pass
    try:
        await js.add_stream(stream_config(settings))
        log.info("event log: created stream %s", settings.event_log_stream)
    except nats.js.errors.BadRequestError:  # another process created it meanwhile
        await js.stream_info(settings.event_log_stream)


async def connect(settings: Settings, name: str, **callbacks: Any) -> tuple[Client, JetStreamContext]:
    """One attempt: a connection that reconnects by itself from then on, and the stream in place."""
    assert settings.event_log_url is not None
    timeout = settings.event_log_timeout_s
    nc = await nats.connect(
        servers=[s.strip() for s in settings.event_log_url.split(",")],
        name=name,
        connect_timeout=max(1, round(timeout)),
        allow_reconnect=True,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        ping_interval=5,
        max_outstanding_pings=2,
        **callbacks,
    )
    try:
        js = nc.jetstream(timeout=timeout)
        await ensure_stream(js, settings)
    except BaseException:
        await nc.close()
        raise
    return nc, js


async def _quiet(exc: Exception) -> None:
    log.debug("nats: %s", exc)


async def connect_forever(settings: Settings, name: str) -> tuple[Client, JetStreamContext]:
    """Retry `connect` (0.2 s doubling to 5 s between tries) until it succeeds."""
    delay = 0.2
    while True:
        try:
            return await connect(settings, name, error_cb=_quiet)
        except NATS_ERRORS as exc:
            log.warning("event log unreachable (%s): retrying in %.1f s", type(exc).__name__, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)
