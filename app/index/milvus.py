"""A Milvus-backed item index: the same contract as `ItemIndex`, its rows kept in a Milvus collection.

Meant for catalogs whose vectors outgrow one host's memory: the serving processes keep no copy of the vectors,
Milvus (a cluster, or milvus-lite embedded for tests and one-process setups) holds and searches them.

One collection per model version and process: `<prefix>_<host>_<pid>_<nonce>_<label>`, fields `row` (INT64
primary key: the index row) and `vec` (FLOAT_VECTOR [D]: the model's augmented item vector [v, bias], so a
query [u, 1] scores u.v + bias exactly as the FAISS index does), inner-product metric, strong consistency (an
`add` is visible to the next search). `MilvusEngine.build` inserts every row, flushes, builds the vector index
and loads the collection before it returns, so the registry swaps in a complete collection, never a half-loaded
one; `retire` drops the old collection after a grace period (requests that took the old snapshot just before
the swap finish on it). Collections left by a process that died on this host are dropped when the engine
first connects.

Exclusions and allowed masks become a filter expression on `row` (`row not in [...]`, or `row in [...]` when
the eligible rows are the fewer); approximate kinds (IVF_FLAT, HNSW) score small eligible sets exactly, and
redo a query that came back short with an exhaustive probe, as the FAISS index does.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import secrets
import socket
import threading
import time
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from app.index.config import IndexConfig, IndexKind
from app.index.engine import VectorIndex
from app.index.filters import Eligibility
from app.index.item_index import _as_matrix
from app.index.locking import ReadWriteLock

log = logging.getLogger(__name__)

_PAD_SCORE = np.float32(-np.inf)
MAX_TOPK = 16_384  # Milvus' largest `limit`
MAX_NPROBE = 65_536  # Milvus' largest nprobe: an IVF search probing every list (clamped to nlist)
MAX_EF = 32_768
INSERT_CHUNK = 20_000  # rows per insert call (a few MB per message, far below gRPC's 64 MB)
GET_CHUNK = 10_000  # ids per get call
BUILD_TIMEOUT_S = 1800.0  # index build and load of a large collection
DEFAULT_PREFIX = "reco"
_NAME_PART = re.compile(r"[^A-Za-z0-9]")


class VectorEngineError(RuntimeError):
    """The vector engine refused or failed a call (unreachable, timed out, a collection missing)."""


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """`milvus://[user:password@]host:port[/db]`, `milvus-lite://PATH.db` or `PATH.db` -> (uri, client kwargs)."""
    if spec.startswith("milvus-lite://") or (not spec.startswith("milvus://") and spec.endswith(".db")):
        path = spec.removeprefix("milvus-lite://")
        if not path.endswith(".db"):
            raise ValueError(f"vector engine {spec!r}: a milvus-lite path must end with .db")
        return path, {}
    if not spec.startswith("milvus://"):
        raise ValueError(f"vector engine {spec!r}: expected milvus://host:port or milvus-lite:///path.db")
    parts = urlsplit(spec)
    if not parts.hostname:
        raise ValueError(f"vector engine {spec!r}: no host")
    port = parts.port or 19530
    kwargs: dict[str, str] = {}
    if parts.username:
        kwargs["token"] = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    if parts.path.strip("/"):
        kwargs["db_name"] = parts.path.strip("/")
    return f"http://{parts.hostname}:{port}", kwargs


def _safe(text: str, limit: int) -> str:
    """`text` reduced to letters and digits (collection names allow letters, digits and '_')."""
    return _NAME_PART.sub("", text)[:limit] or "x"


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@dataclasses.dataclass
class _Collection:
    """One Milvus collection and what this process knows of it (shared by the views of one index)."""

    engine: MilvusEngine
    name: str
    dim: int
    kind: IndexKind
    nlist: int | None
    ntotal: int
    lock: ReadWriteLock = dataclasses.field(default_factory=ReadWriteLock)


class MilvusEngine:
    """A connection to one Milvus (server or milvus-lite) and the collections this process created in it."""

    name = "milvus"
    remote = True  # a server, or milvus-lite's gRPC server thread: every search is a round trip

    def __init__(
        self,
        spec: str,
        *,
        timeout_s: float = 5.0,
        retire_grace_s: float = 30.0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self.spec = spec
        self.uri, self._client_kwargs = parse_spec(spec)
        self.timeout_s = timeout_s
        self.retire_grace_s = retire_grace_s
        self.prefix = _safe(prefix, 16)
        self._host = _safe(socket.gethostname().lower(), 20)
        self._client: Any = None
        self._lock = threading.Lock()
        self._owned: set[str] = set()
        self._timers: dict[str, threading.Timer] = {}

    def __repr__(self) -> str:
        return f"MilvusEngine({self.uri!r})"

    # ---- connection ---------------------------------------------------------------------------------------

    @property
    def client(self) -> Any:
        """The pymilvus client, connected (and this host's dead processes' collections dropped) on first use."""
        with self._lock:
            if self._client is None:
                from pymilvus import MilvusClient

                with self._errors(f"connect to {self.uri}"):
                    self._client = MilvusClient(self.uri, timeout=self.timeout_s, **self._client_kwargs)
                self._drop_stale()
            return self._client

    @contextmanager
    def _errors(self, what: str) -> Iterator[None]:
        """Turn pymilvus' and gRPC's exceptions into VectorEngineError naming the call and the engine."""
        try:
            yield
        except VectorEngineError:
            raise
        except Exception as exc:
            first = str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__
            raise VectorEngineError(f"milvus {self.uri}: {what}: {first}") from exc

    def _drop_stale(self) -> None:
        """Drop collections of this prefix made on this host by processes that no longer run."""
        for name in self._client.list_collections(timeout=self.timeout_s):
            parts = name.split("_", 4)
            if len(parts) < 4 or parts[0] != self.prefix or parts[1] != self._host or not parts[2].isdigit():
                continue
            if not _pid_alive(int(parts[2])):
                log.info("dropping collection %s left by process %s (no longer running)", name, parts[2])
                with self._errors(f"drop stale collection {name}"):
                    self._client.drop_collection(name, timeout=self.timeout_s)

    def collections(self) -> list[str]:
        """Names of the collections this process owns and has not dropped yet."""
        with self._lock:
            return sorted(self._owned)

    # ---- build, retire, close -----------------------------------------------------------------------------

    def build(
        self, vectors: np.ndarray, config: IndexConfig = IndexConfig(), *, label: str
    ) -> MilvusItemIndex:
        """A new collection holding `vectors` [N, D] as rows 0..N-1, indexed and loaded before this returns."""
        from pymilvus import DataType, MilvusClient

        x = _as_matrix(vectors, "vectors")  # [N, D]
        n, dim = x.shape
        kind = config.resolve_kind(n)
        nlist = config.ivf_nlist(n) if kind == "ivf" else None
        client = self.client
        name = f"{self.prefix}_{self._host}_{os.getpid()}_{secrets.token_hex(4)}_{_safe(label, 80)}"
        schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field("row", DataType.INT64, is_primary=True)
        schema.add_field("vec", DataType.FLOAT_VECTOR, dim=dim)
        started = time.perf_counter()
        with self._errors(f"create collection {name}"):
            client.create_collection(name, schema=schema, consistency_level="Strong", timeout=self.timeout_s)
        with self._lock:
            self._owned.add(name)
        try:
            with self._errors(f"fill collection {name}"):
                _insert(client, name, x, 0, self.timeout_s)
                client.flush(name, timeout=BUILD_TIMEOUT_S)
                index_params = client.prepare_index_params()
                index_params.add_index(field_name="vec", metric_type="IP", **_index_spec(kind, config, nlist))
                # sync=False: `_wait_indexed` waits (bounded) on the index state itself
                client.create_index(name, index_params, timeout=BUILD_TIMEOUT_S, sync=False)
                self._wait_indexed(name, n)
                client.load_collection(name, timeout=BUILD_TIMEOUT_S)  # returns once every segment is loaded
                state = str(client.get_load_state(name, timeout=self.timeout_s).get("state"))
                stored = int(client.get_collection_stats(name, timeout=self.timeout_s)["row_count"])
            if "Loaded" not in state or stored != n:
                raise VectorEngineError(
                    f"milvus {self.uri}: collection {name} is {state} with {stored} rows after loading {n}"
                )
        except BaseException:
            self._drop(name)
            raise
        log.info(
            "milvus collection %s: %d rows, %s, built and loaded in %.1f s",
            name,
            n,
            kind,
            time.perf_counter() - started,
        )
        return MilvusItemIndex(_Collection(self, name, dim, kind, nlist, n), config)

    def _wait_indexed(self, name: str, n: int) -> None:
        """Wait (bounded) until the vector index covers all `n` rows."""
        deadline = time.monotonic() + BUILD_TIMEOUT_S
        while True:
            info = self._client.describe_index(name, "vec", timeout=self.timeout_s) or {}
            pending = int(info.get("pending_index_rows", 0) or 0)
            if info.get("state") in (None, "Finished") and pending == 0:
                return
            if info.get("state") == "Failed":
                raise VectorEngineError(f"milvus {self.uri}: index build of {name} failed: {info}")
            if time.monotonic() > deadline:
                raise VectorEngineError(
                    f"milvus {self.uri}: index of {name} not built after {BUILD_TIMEOUT_S:.0f} s ({info})"
                )
            time.sleep(0.2)

    def retire(self, index: VectorIndex) -> None:
        """Drop `index`'s collection after the grace period (requests already holding it finish first)."""
        if not isinstance(index, MilvusItemIndex) or index.engine is not self:
            return
        name = index.collection_name
        with self._lock:
            if name not in self._owned or name in self._timers:
                return
            timer = threading.Timer(self.retire_grace_s, self._drop, args=(name,))
            timer.daemon = True
            self._timers[name] = timer
        timer.start()

    def _drop(self, name: str) -> None:
        with self._lock:
            self._timers.pop(name, None)
            if name not in self._owned:
                return
            self._owned.discard(name)
            client = self._client
        if client is None:
            return
        try:
            client.drop_collection(name, timeout=self.timeout_s)
            log.info("milvus collection %s dropped", name)
        except Exception as exc:  # logged: the next start of this host's engine drops it (its pid is gone)
            log.warning("cannot drop milvus collection %s: %s", name, exc)

    def close(self) -> None:
        """Drop every collection this process owns now and close the connection."""
        with self._lock:
            timers = list(self._timers.values())
            self._timers.clear()
            owned = sorted(self._owned)
        for timer in timers:
            timer.cancel()
        for name in owned:
            self._drop(name)
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            try:
                client.close()
            except Exception as exc:
                log.warning("closing the milvus client: %s", exc)


class MilvusItemIndex:
    """Rows 0..N-1 in a Milvus collection; built by `MilvusEngine.build`, never constructed directly."""

    def __init__(self, collection: _Collection, config: IndexConfig) -> None:
        self._col = collection
        self._config = config

    # ---- properties ---------------------------------------------------------------------------------------

    @property
    def engine(self) -> MilvusEngine:
        """The engine holding the collection."""
        return self._col.engine

    @property
    def collection_name(self) -> str:
        """The Milvus collection."""
        return self._col.name

    @property
    def ntotal(self) -> int:
        """Number of rows."""
        return self._col.ntotal

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return self._col.dim

    @property
    def kind(self) -> IndexKind:
        """flat, ivf or hnsw (Milvus FLAT, IVF_FLAT, HNSW)."""
        return self._col.kind

    @property
    def config(self) -> IndexConfig:
        """The settings this index was built with (search settings as of `with_search_params`)."""
        return self._config

    @property
    def nlist(self) -> int | None:
        """IVF lists asked for (None for other kinds); milvus-lite chooses its own."""
        return self._col.nlist

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        return (
            f"MilvusItemIndex({self._col.name!r}, kind={self.kind!r}, ntotal={self.ntotal}, dim={self.dim})"
        )

    def with_search_params(self, **changes: Any) -> MilvusItemIndex:
        """A view of the same collection searching with other settings, e.g. `nprobe=32`."""
        allowed = {"nprobe", "ef_search", "filter_exact_max", "search_threads"}
        if unknown := set(changes) - allowed:
            raise ValueError(
                f"with_search_params: {sorted(unknown)} cannot change after build ({sorted(allowed)})"
            )
        return MilvusItemIndex(self._col, dataclasses.replace(self._config, **changes))

    # ---- mutation and reads -------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append rows (items embedded after training); returns their row ids int64 [n]."""
        x = _as_matrix(vectors, "vectors")  # [n, D]
        self._check_dim(x, "vectors")
        col = self._col
        with col.lock.write():
            start = col.ntotal
            if x.shape[0]:
                with col.engine._errors(f"insert into {col.name}"):
                    _insert(col.engine.client, col.name, x, start, col.engine.timeout_s)
                col.ntotal = start + x.shape[0]
        return np.arange(start, start + x.shape[0], dtype=np.int64)

    def vectors(self, rows: np.ndarray | Collection[int]) -> np.ndarray:
        """The stored vectors of `rows`: float32 [n, D], read from the collection."""
        ids = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64).ravel()
        with self._col.lock.read():
            if ids.size and (ids.min() < 0 or ids.max() >= self.ntotal):
                bad = ids[(ids < 0) | (ids >= self.ntotal)][0]
                raise ValueError(f"rows: {bad} is not a row of this index (0..{self.ntotal - 1})")
            return self._get(ids)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Collection[int] | np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product: (scores float32 [Q, k], rows int64 [Q, k]), padded with -inf / -1.

        `exclude`: rows never returned. `allowed`: bool mask over the rows (a shorter mask leaves the newer rows
        out). k rows come back whenever k rows are eligible (ItemIndex.search's contract).
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"k: {k!r} must be a non-negative integer")
        q = _as_matrix(queries, "queries")  # [Q, D]
        self._check_dim(q, "queries")
        n_queries = q.shape[0]
        scores = np.full((n_queries, k), _PAD_SCORE, dtype=np.float32)  # [Q, k]
        rows = np.full((n_queries, k), -1, dtype=np.int64)  # [Q, k]
        with self._col.lock.read():
            eligible = Eligibility.of(self.ntotal, exclude, allowed)
            k_eff = min(int(k), eligible.n_eligible)
            if k_eff == 0 or n_queries == 0:
                return scores, rows
            if (
                self.kind != "flat"
                and eligible.restricted
                and eligible.n_eligible <= self._config.filter_exact_max
            ):
                found_s, found_r = self._search_subset(q, k_eff, eligible.rows())
                scores[:, :k_eff], rows[:, :k_eff] = found_s, found_r
                return scores, rows
            if k_eff > MAX_TOPK:
                raise ValueError(f"k: {k} is more than Milvus returns in one search ({MAX_TOPK})")
            expr = _filter_expr(eligible)
            self._search_milvus(q, k_eff, expr, scores, rows, exact=False)
            short = np.flatnonzero((rows[:, :k_eff] < 0).any(axis=1))  # [S] queries left short
            if short.size and self.kind != "flat":
                sub_s, sub_r = scores[short], rows[short]
                self._search_milvus(q[short], k_eff, expr, sub_s, sub_r, exact=True)
                scores[short], rows[short] = sub_s, sub_r
        return scores, rows

    # ---- internals ----------------------------------------------------------------------------------------

    def _check_dim(self, x: np.ndarray, name: str) -> None:
        if x.shape[1] != self.dim:
            raise ValueError(f"{name}: dimension {x.shape[1]} does not match the index dimension {self.dim}")

    def _search_params(self, k: int, *, exact: bool) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.kind == "ivf":
            params["nprobe"] = MAX_NPROBE if exact else self._config.nprobe
        elif self.kind == "hnsw":
            params["ef"] = MAX_EF if exact else max(self._config.ef_search, k)
        return {"metric_type": "IP", "params": params}

    def _search_milvus(
        self, q: np.ndarray, k: int, expr: str, scores: np.ndarray, rows: np.ndarray, *, exact: bool
    ) -> None:
        """Search the collection; fill scores [Q, >=k] and rows [Q, >=k] in place, best first."""
        col = self._col
        with col.engine._errors(f"search {col.name}"):
            result = col.engine.client.search(
                col.name,
                data=q,
                limit=k,
                filter=expr,
                output_fields=["row"],
                search_params=self._search_params(k, exact=exact),
                anns_field="vec",
                timeout=col.engine.timeout_s,
            )
        for i, hits in enumerate(result):
            ids = np.asarray(hits.ids, dtype=np.int64)[:k]  # [<=k]
            dist = np.asarray(hits.distances, dtype=np.float32)[:k]  # [<=k]
            order = np.argsort(-dist, kind="stable")  # Milvus answers best first; kept so when it does not
            rows[i, : ids.size], scores[i, : ids.size] = ids[order], dist[order]

    def _search_subset(self, q: np.ndarray, k: int, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over a small set of eligible rows, their vectors read from the collection."""
        vecs = self._get(subset)  # [E, D]
        sims = q @ vecs.T  # [Q, E]
        if k < subset.size:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # [Q, k] unordered
        else:
            top = np.broadcast_to(np.arange(subset.size), sims.shape)  # [Q, k] with k == E
        top_scores = np.take_along_axis(sims, top, axis=1)  # [Q, k]
        order = np.argsort(-top_scores, axis=1, kind="stable")  # [Q, k]
        return np.take_along_axis(top_scores, order, axis=1), subset[np.take_along_axis(top, order, axis=1)]

    def _get(self, ids: np.ndarray) -> np.ndarray:
        """Vectors of in-range rows `ids` [n] in that order: float32 [n, D]."""
        if ids.size == 0:
            return np.empty((0, self.dim), np.float32)
        col = self._col
        unique = np.unique(ids)  # [U]
        found = np.empty((unique.size, self.dim), np.float32)  # [U, D]
        seen = 0
        with col.engine._errors(f"get from {col.name}"):
            for start in range(0, unique.size, GET_CHUNK):
                chunk = unique[start : start + GET_CHUNK]
                got = col.engine.client.get(
                    col.name, ids=chunk.tolist(), output_fields=["vec"], timeout=col.engine.timeout_s
                )
                for entity in got:
                    found[np.searchsorted(unique, int(entity["row"]))] = entity["vec"]
                seen += len(got)
        if seen != unique.size:
            raise VectorEngineError(f"milvus collection {col.name}: {unique.size - seen} rows missing")
        return found[np.searchsorted(unique, ids)]


def _insert(client: Any, name: str, x: np.ndarray, first_row: int, timeout_s: float) -> None:
    """Insert rows x [n, D] as rows first_row.. in chunks."""
    for start in range(0, x.shape[0], INSERT_CHUNK):
        block = x[start : start + INSERT_CHUNK]  # [c, D]
        data = [{"row": first_row + start + i, "vec": vec} for i, vec in enumerate(block)]
        client.insert(name, data, timeout=max(timeout_s, 60.0))


def _index_spec(kind: IndexKind, config: IndexConfig, nlist: int | None) -> dict[str, Any]:
    """Milvus index type and build parameters for `kind`."""
    if kind == "flat":
        return {"index_type": "FLAT", "params": {}}
    if kind == "ivf":
        return {"index_type": "IVF_FLAT", "params": {"nlist": int(nlist or 1)}}
    return {"index_type": "HNSW", "params": {"M": config.M, "efConstruction": config.ef_construction}}


def _filter_expr(eligible: Eligibility) -> str:
    """A Milvus boolean expression on `row` accepting exactly the eligible rows ('' when all are)."""
    if not eligible.restricted:
        return ""
    if eligible.mask is None:
        return f"row not in [{_ints(eligible.excluded)}]"
    n_ineligible = eligible.n_total - eligible.n_eligible
    if eligible.n_eligible <= n_ineligible:
        return f"row in [{_ints(np.flatnonzero(eligible.mask))}]"
    return f"row not in [{_ints(np.flatnonzero(~eligible.mask))}]"


def _ints(values: np.ndarray) -> str:
    return ",".join(map(str, values.tolist()))
