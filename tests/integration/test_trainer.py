"""The trainer on SQLite and PostgreSQL: queue, claims, leases, gate, privacy, schedule, retention."""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import list_versions
from app.catalog.service import erase_user
from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.tables import Event, TrainingJob, utcnow
from app.registry import jobs
from app.registry import repository as registry
from app.settings import Settings
from app.trainer.pipeline import read_training_data
from app.trainer.retention import clean_temp_dirs, prune_versions
from app.trainer.schedule import due_reason
from app.trainer.worker import Worker
from tests.e2e.support import enqueue, job_row, load_chain_world, tiny


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def run_one(settings: Settings, sessions: sessionmaker[Session], **extra: object) -> int:
    return Worker(tiny(settings, **extra), sessions).run(once=True)


def versions(sessions: sessionmaker[Session]) -> dict[str, str]:
    with sessions() as s:
        return {r.version: r.status for r in registry.list_versions(s)}


def test_job_trains_registers_and_activates_the_first_version(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    stored = load_chain_world(sessions)
    job_id = enqueue(sessions, "api")
    assert job_row(sessions, job_id)["status"] == "queued"

    assert run_one(settings, sessions) == 1

    job = job_row(sessions, job_id)
    assert job["status"] == "succeeded" and job["progress"] == 1.0 and job["attempts"] == 1
    assert job["metrics"]["gate"]["accepted"] is True
    version = job["model_version"]
    assert versions(sessions) == {version: "active"}
    assert list_versions(settings.artifact_dir) == [version]
    with sessions() as s:
        row = registry.get_version(s, version)
        assert row is not None and row.job_id == job_id
        assert row.data_stats["max_event_id"] == stored and row.data_stats["raw_interactions"] == stored
        assert row.metrics["valid_NDCG@10"] > 0.8  # the chains are learnt, not just "training ran"
        assert {"read_s", "train_s", "save_s"} <= set(row.timings)


def test_concurrent_enqueues_produce_one_job(sessions: sessionmaker[Session]) -> None:
    barrier = threading.Barrier(6)
    results: list[tuple[str, bool]] = []

    def request() -> None:
        barrier.wait()
        job, created = run_transaction(
            sessions, lambda s: jobs.enqueue(s, trigger="api", reason="race", max_event_id=0)
        )
        results.append((job.job_id, created))

    threads = [threading.Thread(target=request) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({job_id for job_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    with sessions() as s:
        assert len(s.scalars(select(TrainingJob)).all()) == 1


def test_two_workers_never_claim_the_same_job(sessions: sessionmaker[Session]) -> None:
    for round_ in range(4):
        job_id = enqueue(sessions)
        barrier = threading.Barrier(5)
        leases: list[jobs.Lease] = []

        def take(n: int, barrier: threading.Barrier = barrier, leases: list[jobs.Lease] = leases) -> None:
            barrier.wait()
            lease = run_transaction(sessions, lambda s: jobs.claim(s, f"w{n}"))
            if lease is not None:
                leases.append(lease)

        threads = [threading.Thread(target=take, args=(n,)) for n in range(5)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [lease.job_id for lease in leases] == [job_id], f"round {round_}"
        job = job_row(sessions, job_id)
        assert job["status"] == "running" and job["attempts"] == 1
        with sessions() as s, s.begin():
            assert jobs.finish(s, leases[0], model_version=None, metrics={})


def test_expired_lease_is_retried_then_failed_and_the_old_holder_is_locked_out(
    sessions: sessionmaker[Session],
) -> None:
    job_id = enqueue(sessions)
    first = run_transaction(sessions, lambda s: jobs.claim(s, "crashed-worker"))
    assert first is not None and first.attempt == 1
    # Within the lease nothing is taken back.
    assert (
        run_transaction(sessions, lambda s: jobs.recover_expired(s, lease_seconds=60, max_attempts=2)) == []
    )

    later = utcnow() + timedelta(seconds=61)
    recovered = run_transaction(
        sessions, lambda s: jobs.recover_expired(s, lease_seconds=60, max_attempts=2, now=later)
    )
    assert [(r.job_id, r.status) for r in recovered] == [(job_id, "queued")]
    assert "crashed-worker stopped heartbeating" in job_row(sessions, job_id)["error"]

    second = run_transaction(sessions, lambda s: jobs.claim(s, "new-worker"))
    assert second is not None and second.attempt == 2
    # The first holder wakes up: every write it tries is refused.
    assert not run_transaction(sessions, lambda s: jobs.heartbeat(s, first, 0.5))
    assert not run_transaction(sessions, lambda s: jobs.finish(s, first, model_version="x", metrics={}))
    assert run_transaction(sessions, lambda s: jobs.heartbeat(s, second, 0.5))

    much_later = utcnow() + timedelta(seconds=200)
    recovered = run_transaction(
        sessions, lambda s: jobs.recover_expired(s, lease_seconds=60, max_attempts=2, now=much_later)
    )
    assert [(r.job_id, r.status) for r in recovered] == [(job_id, "failed")]
    job = job_row(sessions, job_id)
    assert job["status"] == "failed" and "gave up after 2 attempt(s)" in job["error"]


def _shuffle_event_times(sessions: sessionmaker[Session], seed: int = 1) -> None:
    """Make the data worthless: every event gets another event's timestamp."""

    def work(s: Session) -> None:
        rows = s.execute(select(Event.id, Event.ts)).all()
        times = [r.ts for r in rows]
        random.Random(seed).shuffle(times)
        for r, ts in zip(rows, times, strict=True):
            s.execute(update(Event).where(Event.id == r.id).values(ts=ts))

    run_transaction(sessions, work)


def test_gate_rejects_a_model_trained_on_shuffled_events(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    enqueue(sessions)
    run_one(settings, sessions)
    (good,) = versions(sessions)

    _shuffle_event_times(sessions)
    job_id = enqueue(sessions)
    run_one(settings, sessions)

    job = job_row(sessions, job_id)
    assert job["status"] == "succeeded" and job["metrics"]["gate"]["accepted"] is False
    bad = job["model_version"]
    assert versions(sessions) == {good: "active", bad: "rejected"}
    with sessions() as s:
        rejected = registry.get_version(s, bad)
        active = registry.get_version(s, good)
        assert rejected is not None and active is not None
        assert rejected.metrics["valid_NDCG@10"] < 0.95 * active.metrics["valid_NDCG@10"]
        assert good in (rejected.reason or "") and "kept out of serving" in (rejected.reason or "")


def test_a_second_version_as_good_as_the_first_replaces_it(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    for _ in range(2):
        enqueue(sessions)
        run_one(settings, sessions, train_epochs=2)  # identical runs: quality aside
    first, second = sorted(versions(sessions))
    assert versions(sessions) == {first: "retired", second: "active"}


def test_erased_users_are_absent_from_later_training(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    with sessions() as s:
        before = read_training_data(s, settings.event_weights)
    assert "u7" in before.log.users
    assert run_transaction(sessions, lambda s: erase_user(s, "u7"))

    with sessions() as s:
        after = read_training_data(s, settings.event_weights)
    assert "u7" not in after.log.users
    assert len(after.log.users) == len(before.log.users) - 1
    assert len(after.log) == len(before.log) - 12

    job_id = enqueue(sessions)
    run_one(settings, sessions, train_epochs=1)
    with sessions() as s:
        row = registry.get_version(s, job_row(sessions, job_id)["model_version"])
        assert row is not None and row.data_stats["raw_interactions"] == len(after.log)


def test_event_types_with_zero_weight_are_left_out(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    with sessions() as s:
        data = read_training_data(s, {"view": 0.0})
    assert len(data.log) == 0 and data.skipped_types == {"view": 120 * 12}


def test_failure_is_recorded_with_its_reason(settings: Settings, sessions: sessionmaker[Session]) -> None:
    job_id = enqueue(sessions)
    run_one(settings, sessions)
    job = job_row(sessions, job_id)
    assert job["status"] == "failed"
    assert "empty" in job["error"]  # the model's own message: send events before training
    assert versions(sessions) == {}


def test_a_stopping_worker_gives_the_job_back(settings: Settings, sessions: sessionmaker[Session]) -> None:
    load_chain_world(sessions)
    job_id = enqueue(sessions)
    stop = threading.Event()
    stop.set()  # asked to stop: the first epoch report hands the job back
    worker = Worker(tiny(settings), sessions, stop=stop)
    lease = run_transaction(sessions, lambda s: jobs.claim(s, worker.worker_id))
    assert lease is not None
    assert worker.run_job(lease).status == "released"
    job = job_row(sessions, job_id)
    assert job["status"] == "queued" and job["attempts"] == 0
    assert versions(sessions) == {} and list_versions(settings.artifact_dir) == []


def test_schedule_queues_after_new_events_only(settings: Settings, sessions: sessionmaker[Session]) -> None:
    scheduled = tiny(settings, retrain_after_events=100, train_epochs=1)
    worker = Worker(scheduled, sessions)
    assert worker.tick() is None  # no events: nothing to do
    load_chain_world(sessions)
    result = worker.tick()
    assert result is not None and result.status == "succeeded"
    job = job_row(sessions, result.job_id)
    assert job["trigger"] == "schedule" and "1440 new events" in job["reason"]
    assert worker.tick() is None  # nothing new since
    with sessions() as s:
        assert len(s.scalars(select(TrainingJob)).all()) == 1


def test_due_reason_rules() -> None:
    now = utcnow()
    old = TrainingJob(max_event_id=100, created_at=now - timedelta(minutes=30))
    assert due_reason(None, 0, now, 10, 5) is None  # no events at all
    assert due_reason(None, 3, now, 10, None) is not None  # first model on a timer
    assert due_reason(old, 100, now, 10, 5) is None  # nothing new
    assert due_reason(old, 104, now, None, 5) is None  # below the event threshold
    assert "5 new events" in (due_reason(old, 105, now, None, 5) or "")
    assert "every 10 min" in (due_reason(old, 101, now, 10, None) or "")
    assert due_reason(old, 101, now, 60, None) is None  # too soon
    assert due_reason(old, 500, now, None, None) is None  # no schedule configured


def test_retention_keeps_the_newest_and_the_active(tmp_path: Path) -> None:
    for name in ("20260101-000000", "20260102-000000", "20260103-000000", "20260104-000000"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "manifest.json").write_text("{}")
    deleted = prune_versions(tmp_path, keep=2, protected={"20260101-000000"})
    assert deleted == ["20260102-000000"]
    assert list_versions(tmp_path) == ["20260101-000000", "20260103-000000", "20260104-000000"]


def test_partial_writes_are_invisible_and_cleaned(tmp_path: Path) -> None:
    stale = tmp_path / ".tmp-20260101-000000-deadbeef"
    stale.mkdir()
    (stale / "model.pt").write_bytes(b"half a file")
    fresh = tmp_path / ".tmp-20260102-000000-cafebabe"
    fresh.mkdir()
    long_ago = time.time() - 3600
    os.utime(stale, (long_ago, long_ago))
    assert list_versions(tmp_path) == []  # loaders never see temporary directories
    assert clean_temp_dirs(tmp_path, older_than_s=60) == [stale.name]
    assert fresh.exists() and not stale.exists()  # a write in progress elsewhere is left alone


def test_retention_runs_after_each_job_and_spares_the_active(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    quick = {"keep_versions": 2, "train_epochs": 1, "gate_tolerance": 1.0}  # quality is not the point here
    for _ in range(3):
        enqueue(sessions)
        run_one(settings, sessions, **quick)
    names = sorted(versions(sessions))
    assert list_versions(settings.artifact_dir) == names[1:]
    # Roll back to the older of the two kept versions; keeping only the newest must still spare it.
    run_transaction(sessions, lambda s: registry.activate(s, names[1]))
    worker = Worker(tiny(settings, keep_versions=1), sessions)
    assert worker.housekeeping() == []
    assert list_versions(settings.artifact_dir) == names[1:]
    run_transaction(sessions, lambda s: registry.activate(s, names[2]))
    assert worker.housekeeping() == [names[1]]
    assert list_versions(settings.artifact_dir) == [names[2]]


def test_a_worker_that_lost_its_lease_drops_its_result(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    job_id = enqueue(sessions)
    slow = Worker(tiny(settings), sessions)
    stale = run_transaction(sessions, lambda s: jobs.claim(s, slow.worker_id))
    assert stale is not None
    # The job is taken back and handed to another worker while the first one still thinks it holds it.
    later = utcnow() + timedelta(seconds=120)
    run_transaction(sessions, lambda s: jobs.recover_expired(s, lease_seconds=60, max_attempts=3, now=later))
    assert run_transaction(sessions, lambda s: jobs.claim(s, "other-worker")) is not None

    assert slow.run_job(stale).status == "lost"
    job = job_row(sessions, job_id)
    assert job["status"] == "running" and job["attempts"] == 2  # untouched: it belongs to the other worker
    assert versions(sessions) == {} and list_versions(settings.artifact_dir) == []


def add_late_users(sessions: sessionmaker[Session], n: int) -> None:
    """`n` new users walking the chains a day after the stored world's events."""
    from app.events.service import load_events
    from app.records import EventRecord
    from tests.e2e.support import chain_events

    later = [
        EventRecord(f"late-{e.user_id}", e.item_id, e.type, e.timestamp + timedelta(days=1))
        for e in chain_events(n_users=n, seed=9)
    ]
    load_events(sessions, later, source="late")


def test_second_job_warm_starts_from_the_active_version(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions, n_users=60)
    first = enqueue(sessions, "api")
    run_one(settings, sessions)
    assert job_row(sessions, first)["detail"]["mode"] == "full"
    add_late_users(sessions, 20)  # new users walk the chains after the first model
    second = enqueue(sessions, "api")
    run_one(settings, sessions)
    job = job_row(sessions, second)
    assert job["status"] == "succeeded", job["error"]
    assert job["detail"]["mode"] == "incremental" and job["detail"]["stage"] == "done"
    assert job["metrics"]["warm_started_from"] == job_row(sessions, first)["model_version"]
    assert job["metrics"]["users_with_new_events"] == 20
    assert job["metrics"]["valid_NDCG@10"] > 0.5
    with sessions() as s:
        assert registry.active_version(s) == job["model_version"]


def test_full_mode_asked_and_full_every(settings: Settings, sessions: sessionmaker[Session]) -> None:
    load_chain_world(sessions, n_users=60)
    enqueue(sessions, "api")
    run_one(settings, sessions)
    job, _ = run_transaction(
        sessions,
        lambda s: jobs.enqueue(s, trigger="api", reason="t", max_event_id=0, params={"mode": "full"}),
    )
    job_id = job.job_id
    run_one(settings, sessions)
    row = job_row(sessions, job_id)
    assert row["params"] == {"mode": "full"}
    assert row["detail"]["mode"] == "full" and row["detail"]["mode_reason"] == "asked for"
    # RECO_RETRAIN_FULL_EVERY=1: every retrain is full even though a compatible version is active.
    third = enqueue(sessions, "api")
    run_one(settings, sessions, retrain_full_every=1)
    assert job_row(sessions, third)["detail"]["mode_reason"] == "RECO_RETRAIN_FULL_EVERY=1"


def test_another_architecture_falls_back_to_a_full_retrain(
    settings: Settings, sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    load_chain_world(sessions, n_users=60)
    enqueue(sessions, "api")
    run_one(settings, sessions)
    add_late_users(sessions, 10)
    job_id = enqueue(sessions, "api")
    with caplog.at_level("WARNING", logger="app.trainer.worker"):
        run_one(settings, sessions, train_dim=8)  # the active version has d=16
    job = job_row(sessions, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["detail"]["mode"] == "full" and "warm start refused" in job["detail"]["mode_reason"]
    assert any("falling back to a full retrain" in r.getMessage() for r in caplog.records)


def test_time_budget_ends_the_run_and_activates_a_usable_model(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    job, _ = run_transaction(
        sessions,
        lambda s: jobs.enqueue(s, trigger="api", reason="t", max_event_id=0, params={"time_budget_s": 1.0}),
    )
    run_one(settings, sessions, train_epochs=10_000, train_patience=10_000)
    row = job_row(sessions, job.job_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["metrics"]["stopped_by"] == "time_budget" and row["detail"]["stopped_by"] == "time_budget"
    assert row["metrics"]["time_budget_s"] == 1.0
    assert row["metrics"]["valid_NDCG@10"] > 0.1  # usable, not random
    with sessions() as s:
        assert registry.active_version(s) == row["model_version"]
