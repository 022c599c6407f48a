"""Background polling: the Poller thread, the Pacer that keeps its bursts from starving the event loop, and the
frozen heap that keeps full garbage collections from walking long-lived state."""

from __future__ import annotations

import gc
import math
import threading
import time
from pathlib import Path

from app.serving.polling import Pacer, Poller, freeze_heap


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


def test_freeze_heap_takes_live_objects_out_of_full_collections() -> None:
    long_lived = [[n] for n in range(20_000)]  # tracked containers, as a model version's state is
    gc.collect()
    assert any(o is long_lived for o in gc.get_objects(2))  # walked by every full collection
    try:
        frozen = freeze_heap()
        assert frozen >= 20_000  # (other threads may add objects right after: no equality)
        assert not any(o is long_lived for o in gc.get_objects(2))  # now in the permanent generation
        # still freed by reference counting, and new garbage cycles are still collected
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()


def test_the_app_freezes_its_start_up_heap_and_gives_it_back_at_shutdown(tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from app.api.app import create_app
    from app.settings import Settings

    gc.unfreeze()
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/reco.db", embedded_worker=False, artifact_dir=tmp_path
    )
    try:
        with TestClient(create_app(settings)) as client:
            assert client.get("/healthz").status_code == 200
            assert gc.get_freeze_count() > 10_000  # modules, the app, its state: out of gen-2 walks
        assert gc.get_freeze_count() == 0  # given back at shutdown
    finally:
        gc.unfreeze()
