"""Background polling: the Poller thread, and the Pacer that keeps its bursts from starving the event loop."""

from __future__ import annotations

import math
import threading
import time

from app.serving.polling import Pacer, Poller


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_pacer_sleeps_as_long_as_it_worked_once_a_slice_is_used() -> None:
    pacer = Pacer(slice_s=0.002)
    seen = []
    for item in pacer.paced(range(5)):
        _busy(0.003)  # more than a slice per item: every tick pauses at least a slice
        seen.append(item)
    assert seen == [0, 1, 2, 3, 4]
    assert pacer.paused_s >= 5 * 0.002


def test_pacer_does_not_pause_short_work_or_when_unpaced() -> None:
    quick = Pacer(slice_s=10.0)
    assert list(quick.paced(range(1000))) == list(range(1000))
    assert quick.paused_s == 0.0
    unpaced = Pacer(math.inf)  # start-up backfills run unpaced
    for _ in unpaced.paced(range(3)):
        _busy(0.003)
    assert unpaced.paused_s == 0.0


def test_paced_background_work_leaves_a_waiting_thread_its_turn() -> None:
    """A thread doing ~60 ms of paced Python work: the main thread, taking the GIL back after every short
    sleep (as the event loop does after each numpy call or socket wait), still gets most of its steps done."""
    pacer = Pacer(slice_s=0.002)
    done = threading.Event()

    def burst() -> None:
        for _ in pacer.paced(range(30)):
            _busy(0.002)
        done.set()

    worker = threading.Thread(target=burst)
    worker.start()
    steps = 0
    while not done.is_set():
        time.sleep(0)  # gives up the GIL, then must win it back
        steps += 1
    worker.join()
    assert pacer.paused_s >= 0.03  # it paused about as long as it worked
    assert steps > 30  # the main thread got the GIL many times, not once per 5 ms switch interval only


def test_poller_runs_its_work_until_stopped_and_survives_failures() -> None:
    calls: list[int] = []

    def work() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("the first poll fails")

    poller = Poller("test-poll", 0.01, work)
    poller.start()
    deadline = time.monotonic() + 5
    while len(calls) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    poller.stop()
    assert len(calls) >= 3
    stopped_at = len(calls)
    time.sleep(0.05)
    assert len(calls) == stopped_at
