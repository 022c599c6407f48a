"""ModelRegistry: the active model version of this process, loaded in the background and swapped atomically.

Requests read `registry.current` once at their start and use that snapshot to the end, so no answer mixes two
versions. Writers (the model loader, the catalog sync) build a new snapshot and publish it with one reference
assignment under `_write_lock`; readers never take a lock.

A version's FAISS index is memory-mapped from the version directory (the trainer built it there); only a version
without one (older), or whose index file is refused (missing, partly written, corrupt, not the version's own,
built with other structural settings), has its index rebuilt here from the verified vectors: logged, and
counted in `index_sources`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from app.artifacts import ArtifactError, LoadedModel, load_version
from app.artifacts.store import load_index
from app.index import IndexConfig, IndexFileError, ItemIndex
from app.index.engine import FaissEngine, VectorEngine
from app.records import as_utc
from app.registry.repository import active_version
from app.serving.catalog import OVERLAP, CatalogView, changed_items, latest_change
from app.serving.model import ServingModel
from app.serving.polling import Pacer, Poller, freeze_heap

log = logging.getLogger(__name__)

RETRY_FAILED_SECONDS = 60.0


class ModelRegistry:
    """Holds one ServingModel (or None before the first model) and the catalog view serving filters with."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        artifact_dir: Path,
        index_config: IndexConfig = IndexConfig(),
        *,
        model_poll_seconds: float = 2.0,
        catalog_poll_seconds: float = 2.0,
        engine: VectorEngine | None = None,
    ) -> None:
        self.sessions = sessions
        self.artifact_dir = Path(artifact_dir)
        self.index_config = index_config
        # Where item indexes live (FAISS in memory by default; RECO_VECTOR_ENGINE may name Milvus).
        self.engine: VectorEngine = engine if engine is not None else FaissEngine()
        self.catalog = CatalogView()
        self.current: ServingModel | None = None
        self.last_error: str | None = None
        self._model_poll = model_poll_seconds
        self._catalog_poll = catalog_poll_seconds
        self._write_lock = threading.RLock()
        self._load_lock = threading.Lock()
        self._failed: dict[str, float] = {}
        self._synced_epoch = 0
        self._pollers: list[Poller] = []
        # Versions an experiment's variants pin, served beside the active one (kept current with the catalog).
        self.pinned: dict[str, ServingModel] = {}
        self.wanted_pinned: set[str] = set()
        # How each loaded version's index came to be: "mapped" from its file, or "rebuilt" from its vectors.
        self.index_sources: dict[str, int] = {"mapped": 0, "rebuilt": 0}

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def start(self, *, background: bool = True) -> None:
        """Read the catalog and load the active version now, then keep both current in background threads."""
        try:
            self.sync_catalog()
            self.refresh_now()
        except SQLAlchemyError as exc:  # start anyway: /readyz says 503 and the pollers catch up later
            self.last_error = f"database unavailable at start: {str(exc).splitlines()[0][:200]}"
            log.warning("%s; serving fallbacks until it is back", self.last_error)
        if background:
            self._pollers = [
                Poller("reco-model-poll", self._model_poll, self.refresh_now),
                Poller("reco-catalog-poll", self._catalog_poll, self.sync_catalog),
            ]
            for poller in self._pollers:
                poller.start()

    def stop(self) -> None:
        """Stop the background threads (waits for a running load to finish) and release the vector engine."""
        for poller in self._pollers:
            poller.stop()
        self._pollers = []
        self.engine.close()  # Milvus: this process's collections are dropped

    def release(self, model: ServingModel) -> None:
        """Hand back a snapshot from `load_detached` once used (its index is retired unless it is served)."""
        served = self.current
        if (served is None or served.index is not model.index) and all(
            pinned.index is not model.index for pinned in self.pinned.values()
        ):
            self.engine.retire(model.index)

    # ---- model versions -----------------------------------------------------------------------------------

    @property
    def version(self) -> str | None:
        """The version being served, or None."""
        current = self.current
        return current.version if current else None

    def model_for(self, version: str | None) -> ServingModel | None:
        """The snapshot serving `version` (None: the active one); None when that version is not loaded."""
        current = self.current
        if version is None or (current is not None and current.version == version):
            return current
        return self.pinned.get(version)

    def load_detached(self, version: str) -> ServingModel:
        """A snapshot of `version` with the catalog applied, not served (an offline replay's candidate)."""
        found = self.model_for(version)
        if found is not None:
            return found
        model = self._build(version)
        try:
            with self._write_lock:
                with self.sessions() as session:
                    records = list(changed_items(session, None))
                return model.with_items([(record, ()) for record in records], self.catalog.row_of)
        except BaseException:
            self.engine.retire(model.index)
            raise

    def set_pinned(self, versions: set[str]) -> None:
        """Versions to keep loaded beside the active one (the model poller loads them, or drops them)."""
        self.wanted_pinned = set(versions)

    def _refresh_pinned(self) -> None:
        for version in list(self.pinned):
            if version not in self.wanted_pinned:
                with self._write_lock:
                    dropped = self.pinned.pop(version, None)
                if dropped is not None:
                    self.engine.retire(dropped.index)
        for version in sorted(self.wanted_pinned - set(self.pinned)):
            if version == self.version:
                continue
            failed_at = self._failed.get(version)
            if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_SECONDS:
                continue
            try:
                model = self._build(version)
                try:
                    with self._write_lock:
                        with self.sessions() as session:
                            records = list(changed_items(session, None))
                        self.pinned[version] = model.with_items(
                            [(record, ()) for record in records], self.catalog.row_of
                        )
                except BaseException:
                    self.engine.retire(model.index)
                    raise
                log.info(
                    "serving pinned version %s beside %s (an experiment's variant)", version, self.version
                )
            except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
                self._failed[version] = time.monotonic()
                log.error("cannot load pinned model version %s: %s", version, exc)

    def refresh_now(self) -> str | None:
        """Load the active version if it is not the one served (newer, or activated for a rollback), and the
        versions experiments pin."""
        with self._load_lock:
            with self.sessions() as session:
                wanted = active_version(session)
            if self.wanted_pinned or self.pinned:
                self._refresh_pinned()
            if wanted is None or wanted == self.version:
                return self.version
            failed_at = self._failed.get(wanted)
            if failed_at is not None and time.monotonic() - failed_at < RETRY_FAILED_SECONDS:
                return self.version
            try:
                self._load(wanted)
            except (ArtifactError, OSError, ValueError, RuntimeError) as exc:
                self._failed[wanted] = time.monotonic()
                self.last_error = f"version {wanted}: {exc}"
                log.error("cannot load model version %s, still serving %s: %s", wanted, self.version, exc)
            return self.version

    def _build(self, version: str) -> ServingModel:
        import torch  # here, not at import: a worker process starts (and answers health checks) without it

        torch.set_num_threads(1)  # one request = one small forward pass: parallelism comes from requests
        loaded = load_version(self.artifact_dir / version)
        if loaded.version != version:
            raise ArtifactError(f"{self.artifact_dir / version}: manifest says version {loaded.version}")
        if isinstance(self.engine, FaissEngine):  # in process: the version's own index file, memory-mapped
            return ServingModel.create(loaded, self._open_index(loaded))
        # Complete before it is returned (Milvus: every row inserted, indexed and loaded): a swap never serves
        # a half-built index.
        index = self.engine.build(loaded.item_vectors, self.index_config, label=version)  # [N, d+1]
        try:
            return ServingModel.create(loaded, index)
        except BaseException:
            self.engine.retire(index)
            raise

    def _open_index(self, loaded: LoadedModel) -> ItemIndex:
        """The version's own index memory-mapped; else (none, or refused) one built from its vectors, logged."""
        started = time.perf_counter()
        try:
            index = load_index(loaded, self.index_config)
        except (IndexFileError, OSError, ValueError) as exc:
            if "index" in loaded.manifest:
                log.warning(
                    "version %s: its index file is refused (%s); rebuilding the index", loaded.version, exc
                )
            else:
                log.info(
                    "version %s has no index file (an older version); building the index", loaded.version
                )
            index = ItemIndex.build(loaded.item_vectors, self.index_config)  # [N, d+1]
            self.index_sources["rebuilt"] += 1
            log.info(
                "version %s: %s index of %d rows built in %.2f s",
                loaded.version,
                index.kind,
                index.ntotal,
                time.perf_counter() - started,
            )
            return index
        self.index_sources["mapped"] += 1
        log.info(
            "version %s: %s index of %d rows memory-mapped from its file in %.3f s",
            loaded.version,
            index.kind,
            index.ntotal,
            time.perf_counter() - started,
        )
        return index

    def _load(self, version: str) -> None:
        started = time.perf_counter()
        model = self._build(version)
        index = model.index
        try:
            with (
                self._write_lock
            ):  # no catalog sync in between: the snapshot sees every change up to its swap
                with self.sessions() as session:
                    records = list(changed_items(session, None))
                self.catalog.apply(records)  # the view and the new snapshot now agree on every item
                model = model.with_items([(record, ()) for record in records], self.catalog.row_of)
                before, self.current = self.current, model
        except BaseException:
            self.engine.retire(index)
            raise
        if before is not None and before.index is not index:
            # Requests that read `current` before the swap finish on the old index: Milvus drops its
            # collection only after a grace period.
            self.engine.retire(before.index)
        self._failed.pop(version, None)
        self.last_error = None
        del before
        freeze_heap()  # the new version's objects are long-lived: out of the collector's walks
        log.info(
            "serving model version %s (%d items, %s index) after %.1f s",
            version,
            model.n_rows,
            index.kind,
            time.perf_counter() - started,
        )

    # ---- catalog ------------------------------------------------------------------------------------------

    def sync_catalog(self) -> int:
        """Apply items changed since the last sync to the view and the served snapshot; returns how many."""
        with self._write_lock:
            started = datetime.now(UTC)
            with self.sessions() as session:
                newest = latest_change(session)
                since = self.catalog.watermark
                # Paced once serving: a burst of new rows is parsed without starving the event loop of the GIL.
                pacer = Pacer() if self.catalog.loaded else Pacer(math.inf)
                records = list(pacer.paced(changed_items(session, since))) if newest is not None else []
            changes = self.catalog.apply(records)
            current = self.current
            if current is not None and changes:
                self.current = current.with_items(changes, self.catalog.row_of)
            for version, pinned in list(self.pinned.items()):
                if changes:
                    self.pinned[version] = pinned.with_items(changes, self.catalog.row_of)
            if newest is not None:
                # Rows stamped up to OVERLAP before this read may still be committing (or come from a process
                # whose clock is a little behind): they are read again next time. Older ones are settled, so a
                # bulk import is read once, not on every poll.
                self.catalog.watermark = min(as_utc(newest), started - OVERLAP)
            self.catalog.loaded = True
            return len(changes)

    def ensure_epoch(self, epoch: int) -> None:
        """Sync the catalog when the cache epoch moved since the last sync (an item was hidden meanwhile)."""
        if epoch == self._synced_epoch:  # != rather than >: a flushed Redis starts counting again
            return
        with self._write_lock:
            if epoch == self._synced_epoch:
                return
            self.sync_catalog()
            self._synced_epoch = epoch
