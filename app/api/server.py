"""How `reco serve` runs uvicorn: worker start-up bound, slow-client timeouts, connection cap.

uvicorn closes idle keep-alive connections but has no bound on a client that sends its headers or its body
slowly (one byte now and then keeps a connection, and a slot, forever). `HeaderTimeoutProtocol` adds both:

- header timeout: the request line and headers must be complete `header_timeout_s` after the connection
  opened or after its previous response was sent; otherwise the connection is closed;
- body timeout: once headers are in, a request whose body stops arriving for `body_timeout_s` (no byte at all)
  is closed.

SIGTERM drains before it stops (`RecoServer`): with `drain_s` > 0 the process first keeps serving for that long
while `/readyz` answers 503 `draining` (a load balancer's health check takes it out of rotation, and requests
already routed to it are answered), then uvicorn's own graceful shutdown runs: the listening socket closes, idle
keep-alive connections close, requests in progress get `shutdown_timeout_s` to finish. A second signal during
the drain stops at once (the graceful shutdown still runs).

This module is light on purpose (uvicorn and settings only): with `--workers N` it is the main module the
spawned workers re-import, and a worker must answer the supervisor's health check while it starts.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol  # uvicorn[standard] ships httptools
from uvicorn.server import Server, ServerState
from uvicorn.supervisors import Multiprocess
from uvicorn.supervisors import multiprocess as uvicorn_multiprocess

from app.settings import Settings

APP = "app.api.app:create_app_from_env"
DRAINING = threading.Event()  # set in this process at the first SIGTERM with a drain: /readyz answers 503
log = logging.getLogger("uvicorn.error")


class RecoConfig(uvicorn.Config):
    """uvicorn's Config plus the two read timeouts and the drain (pickled whole to each worker with `--workers N`)."""

    def __init__(
        self,
        *args: Any,
        header_timeout_s: float = 10.0,
        body_timeout_s: float = 30.0,
        drain_s: float = 0.0,
        **kwargs: Any,
    ):
        super().__init__(*args, **kwargs)
        self.header_timeout_s = header_timeout_s
        self.body_timeout_s = body_timeout_s
        self.drain_s = drain_s


class RecoServer(Server):
    """uvicorn's Server whose first SIGTERM/SIGINT drains for `config.drain_s` before the graceful shutdown."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        drain_s = float(getattr(self.config, "drain_s", 0.0))
        if drain_s <= 0 or self.should_exit or DRAINING.is_set():
            super().handle_exit(sig, frame)
            return
        DRAINING.set()
        self._captured_signals.append(sig)  # re-raised once the server has stopped, as uvicorn does
        log.info("draining for %.1f s: /readyz answers 503, requests are still served", drain_s)
        timer = threading.Timer(drain_s, self._drained)
        timer.daemon = True
        timer.start()

    def _drained(self) -> None:
        self.should_exit = True  # the main loop sees it within 0.1 s and starts the graceful shutdown


class RecoProcess(uvicorn_multiprocess.Process):
    """A `--workers N` worker that runs a `RecoServer`."""

    @property
    def server(self) -> Server:
        if self._server is None:
            self._server = RecoServer(config=self.config)
        return self._server


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """httptools' protocol with a header timeout and a body (idle) timeout; see the module docstring."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        self.header_timeout_s: float = getattr(config, "header_timeout_s", 10.0)
        self.body_timeout_s: float = getattr(config, "body_timeout_s", 30.0)
        self._read_timer: asyncio.TimerHandle | None = None
        self._reading_body = False

    # ---- the one timer: waiting for headers, or for more body -------------------------------------------

    def _arm(self, seconds: float) -> None:
        self._disarm()
        self._read_timer = self.loop.call_later(seconds, self._read_timed_out)

    def _disarm(self) -> None:
        if self._read_timer is not None:
            self._read_timer.cancel()
            self._read_timer = None

    def _read_timed_out(self) -> None:
        self._read_timer = None
        if self._reading_body and self.flow.read_paused:  # the app is behind, not the client: wait for it
            self._arm(self.body_timeout_s)
            return
        if not self.transport.is_closing():
            what = "body" if self._reading_body else "headers"
            self.logger.debug("closing a connection from %s: request %s too slow", self.client, what)
            self.transport.close()

    # ---- uvicorn hooks ----------------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout_s)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        # httptools calls this at a request's first byte; after a response, uvicorn's keep-alive timer
        # bounds the wait for that byte.
        super().on_message_begin()
        self._reading_body = False
        if self._read_timer is None:  # a keep-alive or pipelined request: its headers are due from now
            self._arm(self.header_timeout_s)

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()
        self._reading_body = True
        self._arm(self.body_timeout_s)

    def on_body(self, body: bytes) -> None:
        if self._reading_body:
            self._arm(self.body_timeout_s)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._reading_body = False
        self._disarm()
        super().on_message_complete()


def server_config(settings: Settings, host: str, port: int, workers: int) -> RecoConfig:
    """The uvicorn configuration `reco serve` runs with (every option from `settings`)."""
    return RecoConfig(
        APP,
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_level=settings.log_level.lower(),
        access_log=False,
        http=HeaderTimeoutProtocol,
        timeout_worker_healthcheck=settings.worker_startup_timeout_s,
        timeout_keep_alive=settings.keep_alive_timeout_s,
        limit_concurrency=settings.max_connections,
        header_timeout_s=settings.header_timeout_s,
        body_timeout_s=settings.body_timeout_s,
        drain_s=settings.drain_s,
        timeout_graceful_shutdown=settings.shutdown_timeout_s,
    )


@contextmanager
def _light_main() -> Iterator[None]:
    """Make this module `__main__` while workers are spawned, so that they re-import it, not the CLI; and have
    the supervisor start `RecoProcess` workers (they drain on SIGTERM).

    multiprocessing's spawn re-runs the parent's main module in each child: under the `reco` console script
    that is `app.cli`, which imports the training stack (torch) for `reco train`, seconds a worker spends
    before it can serve, or answer a health check, on a busy machine.
    """
    saved = sys.modules["__main__"]
    saved_process = uvicorn_multiprocess.Process
    sys.modules["__main__"] = sys.modules[__name__]
    uvicorn_multiprocess.Process = RecoProcess  # type: ignore[misc]  # every worker the supervisor starts
    try:
        yield
    finally:
        sys.modules["__main__"] = saved
        uvicorn_multiprocess.Process = saved_process  # type: ignore[misc]


def serve(config: RecoConfig) -> None:
    """Run uvicorn as `uvicorn.run` does (one process, or a supervisor of `config.workers`)."""
    server = RecoServer(config=config)
    try:
        if config.workers > 1:
            sock = config.bind_socket()
            with _light_main():
                Multiprocess(config, sockets=[sock]).run()
        else:
            server.run()
    except KeyboardInterrupt:  # pragma: no cover
        pass
    if config.workers == 1 and not server.started:
        sys.exit(STARTUP_FAILURE)
