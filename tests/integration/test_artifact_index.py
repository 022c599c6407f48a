"""The artifact is the whole hand-off: serving memory-maps the index the trainer wrote into the version.

A version saved with its index and loaded by a fresh registry serves the mapped index (not rebuilt: the
registry's counters, the index's flags and this process's memory maps say so) with the same top-K as an index
rebuilt from the vectors; an index file that is corrupt, half written, not the version's own or built with other
settings is refused (logged) and rebuilt, never served; a version written before indexes were saved still loads.
Serving imports no training code (a fresh interpreter is checked).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import load_version, save_version
from app.artifacts.store import INDEX_FILE, MANIFEST
from app.catalog.service import load_items
from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.migrate import upgrade
from app.db.tables import ModelVersion
from app.index import IndexConfig, ItemIndex
from app.registry.repository import activate
from app.serving.model import ServingModel
from app.serving.registry import ModelRegistry
from app.settings import Settings
from tests.serving_support import load_shop, trained, world

ROOT = Path(__file__).resolve().parents[2]
K = 10
CONFIGS = {
    "flat": IndexConfig(kind="flat"),
    "ivf": IndexConfig(kind="ivf", nlist=8, nprobe=2),  # approximate: 2 of 8 lists probed
    "hnsw": IndexConfig(kind="hnsw", M=8, ef_search=16),
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[sessionmaker[Session], Path]]:
    """A private SQLite store (migrated) and an artifact directory."""
    engine = make_engine(Settings(database_url=f"sqlite:///{tmp_path / 'reco.db'}"))
    upgrade(engine)
    yield make_sessionmaker(engine), tmp_path / "artifacts"
    engine.dispose()


def publish(sessions: sessionmaker[Session], artifact_dir: Path, version: str, **save: object) -> Path:
    """Save the tiny model as `version` (with its index unless told otherwise) and make it the active one."""
    path = save_version(trained(0), artifact_dir, version, **save)  # type: ignore[arg-type]

    def write(session: Session) -> None:
        session.add(ModelVersion(version=version, status="candidate", metrics={}, data_stats={}, timings={}))
        session.flush()
        activate(session, version)

    run_transaction(sessions, write)
    return path


def serve(sessions: sessionmaker[Session], artifact_dir: Path, config: IndexConfig) -> ModelRegistry:
    """A fresh registry (as a fresh API process has) that has loaded the active version."""
    registry = ModelRegistry(sessions, artifact_dir, config)
    registry.start(background=False)
    assert registry.current is not None, registry.last_error
    return registry


def queries(model: ServingModel) -> tuple[np.ndarray, list[np.ndarray]]:
    """The user tower's queries for the world's users [U, d+1], and each user's seen rows (excluded)."""
    log, _, _ = world(0)
    histories: dict[str, list[tuple[str, str]]] = {}
    for u, i, t in zip(
        log.user_codes.tolist(), log.item_codes.tolist(), log.type_codes.tolist(), strict=True
    ):
        histories.setdefault(log.users[u], []).append((log.items[i], log.types[t]))
    users = sorted(histories)[:40]
    q = np.stack([model.loaded.query_vector(histories[u]) for u in users])  # [U, d+1]
    seen = [model.rows(item for item, _ in histories[u]) for u in users]
    return q.astype(np.float32), seen


def top_k(model: ServingModel, q: np.ndarray, seen: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Each user's top-K with their seen items excluded, and the plain top-K of all queries."""
    per_user = np.vstack(
        [model.search(q[j : j + 1], K, exclude=s, category=None)[1] for j, s in enumerate(seen)]
    )
    return per_user, model.search(q, K, exclude=np.empty(0, np.int64), category=None)[1]


def mapped_files() -> set[str]:
    """Paths of the files this process has memory-mapped."""
    with open("/proc/self/maps", encoding="utf-8") as f:
        return {line.split(maxsplit=5)[5].strip() for line in f if len(line.split(maxsplit=5)) == 6}


@pytest.mark.parametrize("kind", sorted(CONFIGS))
def test_a_saved_version_serves_its_mapped_index_with_the_rebuilt_top_k(store, kind: str, caplog) -> None:
    sessions, artifact_dir = store
    config = CONFIGS[kind]
    path = publish(sessions, artifact_dir, "v1", index_config=config)
    manifest = json.loads((path / MANIFEST).read_text())
    assert manifest["index"]["file"] == INDEX_FILE and manifest["index"]["kind"] == kind
    assert manifest["index"]["rows"] == len(trained(0).item_ids)
    with caplog.at_level(logging.INFO, logger="app.serving.registry"):
        registry = serve(sessions, artifact_dir, config)
    served = registry.current
    assert served is not None
    # Not rebuilt: the counters, the log, the index's own flag, and the file really is mapped in this process.
    assert registry.index_sources == {"mapped": 1, "rebuilt": 0}
    assert (
        f"{kind} index of {served.n_rows} rows memory-mapped" in caplog.text and "built in" not in caplog.text
    )
    assert served.index.mapped and served.index.kind == kind
    assert str(path / INDEX_FILE) in mapped_files()
    # The same answers as the index rebuilt from the version's vectors, as before the index was saved.
    loaded = load_version(path)
    rebuilt = ServingModel.create(loaded, ItemIndex.build(loaded.item_vectors, config))
    assert not rebuilt.index.mapped
    q, seen = queries(served)
    for got, want in zip(top_k(served, q, seen), top_k(rebuilt, q, seen), strict=True):
        assert (got >= 0).all()
        np.testing.assert_array_equal(got, want)


def test_items_added_after_training_are_served_beside_the_mapped_index(store) -> None:
    """Items created after training join the snapshot: kept beside the read-only mapped rows, same answers."""
    sessions, artifact_dir = store
    load_shop(sessions, with_events=False)
    path = publish(sessions, artifact_dir, "v1", index_config=CONFIGS["flat"])
    _, catalog, _ = world(0)
    new_items = [
        replace(
            record, item_id=f"new-{j}", title=f"fresh gadget {j}", tags=(f"fresh{j}",), categories=("fresh",)
        )
        for j, record in enumerate(list(catalog.values())[:12])
    ]
    load_items(sessions, new_items)
    registry = serve(sessions, artifact_dir, CONFIGS["flat"])
    served = registry.current
    assert served is not None and served.index.mapped
    n_trained = len(trained(0).item_ids)
    assert served.n_rows == n_trained + len(new_items) and served.index.tail_rows == len(new_items)
    (path / INDEX_FILE).unlink()  # the same version with its index rebuilt (and the new items added into it)
    rebuilt = serve(sessions, artifact_dir, CONFIGS["flat"])
    assert rebuilt.index_sources == {"mapped": 0, "rebuilt": 1} and rebuilt.current is not None
    assert not rebuilt.current.index.mapped and rebuilt.current.n_rows == served.n_rows
    q, seen = queries(served)
    new_rows = np.arange(n_trained, served.n_rows)
    every = served.index.vectors(np.arange(served.n_rows))  # [N', d+1]
    probes = every[new_rows] * 10.0  # queries pointing at the new items: exact top-1 over all rows
    found = served.search(probes, 1, exclude=np.empty(0, np.int64), category=None)[1][:, 0]
    np.testing.assert_array_equal(found, np.argmax(probes @ every.T, axis=1))
    for got, want in zip(top_k(served, q, seen), top_k(rebuilt.current, q, seen), strict=True):
        np.testing.assert_array_equal(got, want)
    got = served.search(q, K, exclude=np.empty(0, np.int64), category="fresh")[1]  # only new items in it
    np.testing.assert_array_equal(
        got, rebuilt.current.search(q, K, exclude=np.empty(0, np.int64), category="fresh")[1]
    )
    assert np.isin(got, new_rows).all()


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate_half(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _drop_sidecar(path: Path) -> None:
    path.with_name(path.name + ".json").unlink()


def _index_of_another_version(path: Path) -> None:
    """A valid index with a valid sidecar, of other vectors: only the manifest's checksum tells."""
    other = np.random.default_rng(0).standard_normal((len(trained(0).item_ids), 17)).astype(np.float32)
    ItemIndex.build(other, CONFIGS["ivf"]).save(path)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (_flip_middle_byte, "corrupt or partially written"),
        (_truncate_half, "corrupt or partially written"),
        (_drop_sidecar, "sidecar"),
        (_index_of_another_version, "differs from the manifest"),
    ],
)
def test_a_damaged_index_file_is_refused_and_rebuilt_never_served(store, caplog, damage, reason: str) -> None:
    sessions, artifact_dir = store
    path = publish(sessions, artifact_dir, "v1", index_config=CONFIGS["ivf"])
    damage(path / INDEX_FILE)
    with caplog.at_level(logging.INFO, logger="app.serving.registry"):
        registry = serve(sessions, artifact_dir, CONFIGS["ivf"])
    # The fault was seen: refused, logged with the reason, counted as a rebuild...
    refused = [r for r in caplog.records if r.levelno == logging.WARNING and "refused" in r.getMessage()]
    assert refused and reason in refused[0].getMessage() and INDEX_FILE in refused[0].getMessage()
    assert registry.index_sources == {"mapped": 0, "rebuilt": 1}
    # ...and what is served is the index rebuilt from the (verified) vectors, answering as a fresh build does.
    served = registry.current
    assert served is not None and not served.index.mapped and str(path / INDEX_FILE) not in mapped_files()
    loaded = load_version(path)
    rebuilt = ServingModel.create(loaded, ItemIndex.build(loaded.item_vectors, CONFIGS["ivf"]))
    q, seen = queries(served)
    for got, want in zip(top_k(served, q, seen), top_k(rebuilt, q, seen), strict=True):
        np.testing.assert_array_equal(got, want)


def test_an_older_version_without_an_index_still_loads_by_rebuilding(store, caplog) -> None:
    sessions, artifact_dir = store
    path = publish(sessions, artifact_dir, "v1", with_index=False)
    assert not (path / INDEX_FILE).exists() and "index" not in json.loads((path / MANIFEST).read_text())
    with caplog.at_level(logging.INFO, logger="app.serving.registry"):
        registry = serve(sessions, artifact_dir, CONFIGS["flat"])
    assert registry.index_sources == {"mapped": 0, "rebuilt": 1}
    assert "has no index file (an older version); building the index" in caplog.text
    assert registry.current is not None and not registry.current.index.mapped


def test_an_index_built_with_other_settings_is_rebuilt_with_the_served_ones(store, caplog) -> None:
    sessions, artifact_dir = store
    publish(sessions, artifact_dir, "v1", index_config=CONFIGS["ivf"])
    with caplog.at_level(logging.INFO, logger="app.serving.registry"):
        registry = serve(sessions, artifact_dir, IndexConfig(kind="flat"))
    assert registry.index_sources == {"mapped": 0, "rebuilt": 1}
    assert "built with kind ivf, wanted flat" in caplog.text
    assert registry.current is not None and registry.current.index.kind == "flat"
    # Search settings are not structure: another nprobe still maps the saved IVF index.
    other = serve(sessions, artifact_dir, IndexConfig(kind="ivf", nlist=8, nprobe=8))
    assert other.index_sources == {"mapped": 1, "rebuilt": 0} and other.current is not None
    assert other.current.index.config.nprobe == 8


TRAINING_MODULES = ("app.ml.train", "app.ml.trainer", "app.trainer")


def test_the_serving_path_imports_no_training_code(store, tmp_path: Path) -> None:
    """A fresh interpreter creates the app, loads a version (mapped) and answers: no training module loaded."""
    sessions, artifact_dir = store
    publish(sessions, artifact_dir, "v1", index_config=CONFIGS["flat"])
    database = sessions.kw["bind"].url.render_as_string(hide_password=False)
    script = textwrap.dedent(
        f"""
        import importlib, json, pkgutil, sys
        from fastapi.testclient import TestClient
        import app.serving
        from app.api.app import create_app
        from app.settings import Settings

        for module in pkgutil.iter_modules(app.serving.__path__):
            importlib.import_module("app.serving." + module.name)
        settings = Settings(
            database_url={database!r}, artifact_dir={str(artifact_dir)!r}, embedded_worker=False,
            api_keys=["k-read-0000000000000000:read"], model_poll_seconds=0, catalog_poll_seconds=0,
        )
        with TestClient(create_app(settings)) as client:
            state = client.app.state.reco
            state.registry.refresh_now()
            model = state.registry.current
            answer = client.get(
                "/v1/users/nobody/recommendations", headers={{"Authorization": "Bearer k-read-0000000000000000"}}
            )
            loaded = sorted(m for m in sys.modules if m.startswith({TRAINING_MODULES!r}))
            print(json.dumps({{
                "version": model.version if model else None,
                "mapped": bool(model and model.index.mapped),
                "status": answer.status_code,
                "training_modules": loaded,
            }}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env = {k: v for k, v in env.items() if not k.startswith("RECO_")}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["version"] == "v1" and report["mapped"] and report["status"] == 200, report
    assert report["training_modules"] == [], report


def test_mapped_and_read_versions_hold_the_same_model(store) -> None:
    """`load_version` maps the vectors and weights read-only by default; `mmap=False` (warm starts) owns them."""
    sessions, artifact_dir = store
    path = publish(sessions, artifact_dir, "v1")
    mapped, read = load_version(path), load_version(path, mmap=False)
    assert isinstance(mapped.item_vectors, np.memmap) and not mapped.item_vectors.flags.writeable
    assert not isinstance(read.item_vectors, np.memmap) and read.item_vectors.flags.writeable
    np.testing.assert_array_equal(mapped.item_vectors, read.item_vectors)
    for (name, a), (_, b) in zip(
        mapped.model.state_dict().items(), read.model.state_dict().items(), strict=True
    ):
        assert not a.is_meta and torch.equal(a, b), name
    history = [(item, "view") for item in trained(0).item_ids[:6]]
    np.testing.assert_allclose(mapped.query_vector(history), read.query_vector(history), rtol=1e-6)


def test_skipping_initialisers_for_a_load_leaves_other_threads_alone() -> None:
    """The meta-device build of a load skips weight initialisers in its own thread only: a model built
    meanwhile by another thread (the embedded trainer) is initialised as usual."""
    from app.artifacts.store import _skip_meta_init
    from app.ml.config import ModelConfig
    from app.ml.model import RecModel

    entered, built = threading.Event(), threading.Event()
    models: list[RecModel] = []

    def other_thread() -> None:
        entered.wait(10)
        models.append(
            RecModel(50, 4, torch.zeros((50, 2), dtype=torch.long), ModelConfig(d=8, max_features=2))
        )
        built.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    with torch.device("meta"), _skip_meta_init():
        meta = RecModel(50, 4, torch.zeros((50, 2), dtype=torch.long), ModelConfig(d=8, max_features=2))
        entered.set()
        assert built.wait(30)
    thread.join(10)
    assert all(p.is_meta for p in meta.parameters())
    weights = models[0].towers[0].items.id_table.weight
    assert not weights.is_meta and float(weights.detach()[:, :-1].std()) > 0.1
