"""A daemon thread that runs one job every few seconds until stopped, and what keeps background work from
stalling the requests served beside it (the GIL pacer, the frozen heap)."""

from __future__ import annotations

import gc
import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class Poller:
    """Runs `work` every `interval` seconds in a daemon thread; a failure is logged and retried next time."""

    def __init__(self, name: str, interval: float, work: Callable[[], object]) -> None:
        self.name = name
        self.interval = interval
        self._work = work
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start polling (a zero interval never starts)."""
        if self.interval > 0 and self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Ask the thread to stop and wait for the running job to finish."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=timeout)
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._work()
            except Exception:  # a poll must never kill its thread; the next one retries
                log.exception("%s: poll failed", self.name)


class Pacer:
    """Lets a background thread's long Python work leave the event loop its turn at the GIL.

    CPython hands the GIL between busy threads only every switch interval (5 ms), and the serving loop gives it
    up at every numpy call or socket wait: against a busy background thread each of those can wait a whole
    interval (the convoy effect). Applying a burst of 5,000 new catalog rows (~300 ms of Python) stretched
    requests of that moment to ~250 ms. `tick()` after each unit of work sleeps, once the thread has worked
    `slice_s`, as long as it worked: the loop runs freely at least half of the time while a burst is applied.
    """

    def __init__(self, slice_s: float = 0.002) -> None:
        self.slice_s = slice_s
        self.paused_s = 0.0
        self._since = time.perf_counter()

    def tick(self) -> None:
        """Call between units of work (a row, a chunk)."""
        worked = time.perf_counter() - self._since
        if worked >= self.slice_s:
            pause = min(worked, 4 * self.slice_s)
            time.sleep(pause)
            self.paused_s += pause
            self._since = time.perf_counter()

    def paced(self, items: Iterable[T]) -> Iterator[T]:
        """`items`, ticking after each one."""
        for item in items:
            yield item
            self.tick()


def freeze_heap() -> int:
    """Move every object alive now out of the garbage collector's sight (`gc.freeze`); the number frozen.

    A full (generation 2) collection walks every tracked object while holding the GIL, so it stalls every
    request in flight: with the serving process's long-lived heap (modules, the model version's item ids and
    maps, the catalog view) one took ~300 ms on the 2-core machine, and the dashboard's 24 h series (7,000 rows
    a request) triggered one every ~40 requests: its p99 was those pauses (docs/BENCHMARKS.md, "Dashboard data
    requests"). Frozen objects are still freed by reference counting; only cycles among them are no longer
    collected, which long-lived state does not have. Called once the app has started and after each model
    swap. Only the young generations are collected first: a full collection here would be the very stall this
    avoids (and costs every start of the app). `unfreeze_heap` at shutdown gives them back.
    """
    gc.collect(1)
    gc.freeze()
    return gc.get_freeze_count()


def unfreeze_heap() -> None:
    """Give the frozen objects back to the collector (at shutdown: a process that starts several apps, as the
    tests do, then still collects the cycles of the ones it stopped)."""
    gc.unfreeze()
