"""`reco worker --nproc 2`: a job trained by two DDP ranks is registered, activated and served like any other.

SQLite and the in-memory cache only: the store is touched by the job's own process exactly as in a
single-process job (the ranks never open it or the cache), and tests/integration/test_trainer.py covers
PostgreSQL for that path.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import list_versions, load_version
from app.cli import build_parser
from app.cli.train import with_overrides
from app.db.engine import make_engine, make_sessionmaker
from app.registry import repository as registry
from app.settings import Settings
from app.trainer.pipeline import artifact_path
from app.trainer.worker import Worker
from tests.e2e.support import enqueue, job_row, load_chain_world, tiny


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("cache_url", ["memory"], indirect=True)
def test_a_job_on_two_ddp_processes_registers_a_served_version(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    load_chain_world(sessions)
    job_id = enqueue(sessions, "cli")
    ddp = tiny(settings, train_nproc=2)

    assert Worker(ddp, sessions).run(once=True) == 1

    job = job_row(sessions, job_id)
    assert job["status"] == "succeeded", job["error"]
    assert job["progress"] == 1.0 and job["metrics"]["nproc"] == 2
    version = job["model_version"]
    assert list_versions(settings.artifact_dir) == [version]  # one artifact: rank 0's model, written once
    with sessions() as s:
        row = registry.get_version(s, version)
        assert row is not None and row.status == "active"
        assert row.metrics["valid_NDCG@10"] > 0.8  # the chains are learnt, as by one process
        assert row.metrics["sequences_per_s"] > 0
    loaded = load_version(artifact_path(settings, version))
    assert loaded.query_vector([("i3", "view"), ("i4", "view")]) is not None


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@pytest.mark.parametrize("cache_url", ["memory"], indirect=True)
def test_nproc_options_override_the_setting(settings: Settings) -> None:
    parser = build_parser()
    for argv in (["train", "--nproc", "2"], ["worker", "--nproc", "2", "--once"]):
        args = parser.parse_args(argv)
        assert args.nproc == 2
    assert with_overrides(settings, parser.parse_args(["train", "--nproc", "3"])).train_nproc == 3
    assert with_overrides(settings, parser.parse_args(["train"])).train_nproc == settings.train_nproc == 1
