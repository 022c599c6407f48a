"""ItemIndex: inner-product top-k over item vectors (flat, IVF or HNSW), with exclusions and allowed masks.

Rows are 0..N-1 in the order vectors were given to `build` then `add`; mapping rows to external item ids is the
caller's (the artifact keeps that table beside the index file).

Thread safety: any number of threads may call `search` at once (FAISS releases the GIL while it searches), and
one thread may `add` meanwhile: a readers-writer lock lets searches share the index and gives `add` (and `save`)
exclusive use of it, so a search sees the rows either before or after an add, never half of one.

Threads inside a search: OpenMP's thread count is a per-thread setting, so every call sets it for its own
calling thread (`IndexConfig.search_threads`, 1 by default: a web process answers one user per request and
gets its parallelism from concurrent requests, and a single query gains nothing from an OpenMP team anyway).
`build` uses `IndexConfig.build_threads` (0: every CPU) the same way and restores the caller's setting after.

Memory-mapped indexes (`load(path, mmap=True)`, what serving opens from a model version): FAISS maps the file's
vectors read-only, so N processes on a host share one copy of its pages, and such an index cannot grow (FAISS
aborts the process). Rows added to it (items created after training) go to an in-memory tail instead, scored
exactly in numpy and merged with the mapped rows' results: the row numbering and every search contract stay
the same.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from app.index.config import IndexConfig, IndexKind
from app.index.filters import Eligibility, excluded_rows
from app.index.locking import ReadWriteLock
from app.index.persist import IndexFileError, read_index_file, read_sidecar, write_index_files

_PAD_SCORE = np.float32(-np.inf)
# Searches excluding at most this many rows over-fetch and filter instead of passing FAISS a selector.
OVERFETCH_MAX_EXCLUDED = 512


class _Tail:
    """Rows appended to a memory-mapped index: float32 vectors in memory, grown by doubling under the write lock."""

    __slots__ = ("n", "vectors")

    def __init__(self, dim: int) -> None:
        self.vectors = np.empty((0, dim), dtype=np.float32)  # [capacity, D]
        self.n = 0

    def view(self) -> np.ndarray:
        """The rows held: [n, D]."""
        return self.vectors[: self.n]

    def append(self, x: np.ndarray) -> None:
        """Append rows [m, D]."""
        need = self.n + x.shape[0]
        if need > self.vectors.shape[0]:
            grown = np.empty((max(need, 2 * self.vectors.shape[0], 64), x.shape[1]), dtype=np.float32)
            grown[: self.n] = self.vectors[: self.n]
            self.vectors = grown  # readers hold the read lock, so none sees the swap half done
        self.vectors[self.n : need] = x
        self.n = need


class ItemIndex:
    """A FAISS inner-product index over item vectors; build or load it, never construct it directly."""

    def __init__(
        self,
        index: faiss.Index,
        kind: IndexKind,
        config: IndexConfig,
        lock: ReadWriteLock,
        *,
        mapped: bool = False,
        tail: _Tail | None = None,
    ) -> None:
        self._index = index
        self._kind: IndexKind = kind
        self._config = config
        self._lock = lock
        self._mapped = mapped
        self._tail = tail if tail is not None else _Tail(int(index.d))

    # ---- construction -------------------------------------------------------------------------------------

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig = IndexConfig()) -> ItemIndex:
        """Index `vectors` [N, D] (row i is item row i); the kind comes from `config.resolve_kind(N)`."""
        x = _as_matrix(vectors, "vectors")  # [N, D]
        n, dim = x.shape
        kind = config.resolve_kind(n)
        with _omp_threads(config.build_threads or _cpu_count()):
            if kind == "flat":
                index: faiss.Index = faiss.IndexFlatIP(dim)
            elif kind == "hnsw":
                index = faiss.IndexHNSWFlat(dim, config.M, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efConstruction = config.ef_construction
            else:
                index = _trained_ivf(x, config)
            if n:
                index.add(x)
        return cls(index, kind, config, ReadWriteLock())

    @classmethod
    def load(cls, path: Path, config: IndexConfig | None = None, *, mmap: bool = False) -> ItemIndex:
        """Read an index written by `save`, checked against its sidecar (size, sha256, kind, shape): a corrupt or
        partly written file raises IndexFileError. `config` (optional) replaces the saved search settings.
        `mmap`: map the file's vectors read-only instead of reading them (see the module docstring)."""
        path = Path(path)
        sidecar = read_sidecar(path)
        index = read_index_file(path, mmap=mmap)
        expected = {"flat": faiss.IndexFlat, "ivf": faiss.IndexIVFFlat, "hnsw": faiss.IndexHNSWFlat}
        if sidecar.kind not in expected or not isinstance(index, expected[sidecar.kind]):
            raise IndexFileError(
                f"index file {path}: holds {type(index).__name__}, sidecar says {sidecar.kind!r}"
            )
        if index.metric_type != faiss.METRIC_INNER_PRODUCT:
            raise IndexFileError(f"index file {path}: metric {index.metric_type} is not inner product")
        if (index.d, index.ntotal) != (sidecar.dim, sidecar.ntotal):
            raise IndexFileError(
                f"index file {path}: holds {index.ntotal} rows of dimension {index.d}, "
                f"sidecar says {sidecar.ntotal} of dimension {sidecar.dim}"
            )
        if isinstance(index, faiss.IndexIVF) and index.direct_map.no():
            index.make_direct_map()
        if config is None:
            config = _config_from_dict(sidecar.config, path)
        return cls(index, sidecar.kind, config, ReadWriteLock(), mapped=mmap)  # type: ignore[arg-type]

    @staticmethod
    def saved_config(path: Path) -> IndexConfig:
        """The build settings recorded in the sidecar of index file `path` (checks the sidecar only)."""
        path = Path(path)
        meta_path = path.with_name(path.name + ".json")
        try:
            raw = json.loads(meta_path.read_text(encoding="utf-8"))["config"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise IndexFileError(f"{meta_path}: unreadable index sidecar ({exc!r})") from exc
        return _config_from_dict(dict(raw), path)

    def save(self, path: Path) -> None:
        """Write the index to `path` and its sidecar `<path>.json`, each atomically (temp file, then rename)."""
        with self._lock.read():  # a concurrent add would be torn; concurrent searches are harmless
            index = self._index
            if self._tail.n:  # a mapped index with rows beside it: write one owned copy holding them all
                index = faiss.deserialize_index(faiss.serialize_index(self._index))
                index.add(self._tail.view())
            write_index_files(index, Path(path), self._kind, dataclasses.asdict(self._config))

    def with_search_params(self, **changes: Any) -> ItemIndex:
        """A view of the same index (rows, lock) searching with other settings, e.g. `nprobe=32`."""
        allowed = {"nprobe", "ef_search", "filter_exact_max", "search_threads"}
        if unknown := set(changes) - allowed:
            raise ValueError(
                f"with_search_params: {sorted(unknown)} cannot change after build ({sorted(allowed)})"
            )
        return ItemIndex(
            self._index,
            self._kind,
            dataclasses.replace(self._config, **changes),
            self._lock,
            mapped=self._mapped,
            tail=self._tail,
        )

    # ---- properties ---------------------------------------------------------------------------------------

    @property
    def ntotal(self) -> int:
        """Number of rows."""
        return int(self._index.ntotal) + self._tail.n

    @property
    def mapped(self) -> bool:
        """Whether the FAISS structure is memory-mapped read-only from its file (`load(..., mmap=True)`)."""
        return self._mapped

    @property
    def tail_rows(self) -> int:
        """Rows added to a mapped index, held in memory beside it."""
        return self._tail.n

    @property
    def dim(self) -> int:
        """Vector dimension D."""
        return int(self._index.d)

    @property
    def kind(self) -> IndexKind:
        """The concrete kind built: flat, ivf or hnsw."""
        return self._kind

    @property
    def config(self) -> IndexConfig:
        """The settings this index was built with (search settings as of `with_search_params`)."""
        return self._config

    @property
    def nlist(self) -> int | None:
        """Number of IVF lists (None for other kinds)."""
        return int(self._index.nlist) if isinstance(self._index, faiss.IndexIVF) else None

    def __len__(self) -> int:
        return self.ntotal

    def __repr__(self) -> str:
        mapped = ", mapped" if self._mapped else ""
        return f"ItemIndex(kind={self._kind!r}, ntotal={self.ntotal}, dim={self.dim}{mapped})"

    # ---- mutation and reads -------------------------------------------------------------------------------

    def add(self, vectors: np.ndarray) -> np.ndarray:
        """Append rows (items embedded after training); returns their row ids int64 [n]."""
        x = _as_matrix(vectors, "vectors")  # [n, D]
        self._check_dim(x, "vectors")
        with self._lock.write(), _omp_threads(self._config.build_threads or _cpu_count()):
            start = self.ntotal
            if x.shape[0] and self._mapped:
                self._tail.append(x)  # a mapped index cannot grow: FAISS would abort the process
            elif x.shape[0]:
                self._index.add(x)  # IVF: assigned to the trained lists; the direct map follows
        return np.arange(start, start + x.shape[0], dtype=np.int64)

    def vectors(self, rows: np.ndarray | Collection[int]) -> np.ndarray:
        """The stored vectors of `rows`: float32 [n, D] (e.g. the query of a similar-items search)."""
        ids = np.asarray(list(rows) if not isinstance(rows, np.ndarray) else rows, dtype=np.int64).ravel()
        with self._lock.read():
            if ids.size and (ids.min() < 0 or ids.max() >= self.ntotal):
                bad = ids[(ids < 0) | (ids >= self.ntotal)][0]
                raise ValueError(f"rows: {bad} is not a row of this index (0..{self.ntotal - 1})")
            return self._vectors_of(ids) if ids.size else np.empty((0, self.dim), np.float32)

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Collection[int] | np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k rows by inner product: (scores float32 [Q, k], rows int64 [Q, k]), padded with -inf / -1.

        `exclude`: rows never returned (seen, hidden, deleted, an exclude list). `allowed`: bool mask over the
        rows; only rows set in it may come back. k rows come back whenever k rows are eligible.
        """
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 0:
            raise ValueError(f"k: {k!r} must be a non-negative integer")
        q = _as_matrix(queries, "queries")  # [Q, D]
        self._check_dim(q, "queries")
        n_queries = q.shape[0]
        scores = np.full((n_queries, k), _PAD_SCORE, dtype=np.float32)  # [Q, k]
        rows = np.full((n_queries, k), -1, dtype=np.int64)  # [Q, k]
        with self._lock.read(), _omp_threads(self._config.search_threads):
            if allowed is None and n_queries:
                found = self._search_overfetch(q, int(k), exclude)
                if found is not None:
                    return found
            eligible = Eligibility.of(self.ntotal, exclude, allowed)
            k_eff = min(int(k), eligible.n_eligible)
            if k_eff == 0 or n_queries == 0:
                return scores, rows
            if (
                self._kind != "flat"
                and eligible.restricted
                and eligible.n_eligible <= self._config.filter_exact_max
            ):
                found_s, found_r = self._search_subset(q, k_eff, eligible.rows())
            else:
                found_s, found_r = self._search_faiss(q, k_eff, eligible)
        scores[:, :k_eff] = found_s
        rows[:, :k_eff] = found_r
        return scores, rows

    # ---- internals ----------------------------------------------------------------------------------------

    def _check_dim(self, x: np.ndarray, name: str) -> None:
        """Raise ValueError when `x` [n, D'] does not match the index dimension D."""
        if x.shape[1] != self.dim:
            raise ValueError(f"{name}: dimension {x.shape[1]} does not match the index dimension {self.dim}")

    def _search_overfetch(
        self, q: np.ndarray, k: int, exclude: Collection[int] | np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """A few exclusions (a user's seen items): fetch k + their number with no selector and drop them.

        The probed lists (or the whole table) are scanned exactly as with a selector, so the survivors are the
        same top-k; without FAISS' per-candidate selector call and its SWIG objects this is about twice as
        fast. None (use the selector path) when the exclusions are many or a query kept fewer than k rows.
        """
        excluded = excluded_rows(exclude, self.ntotal)  # sorted unique [E]
        if excluded.size > OVERFETCH_MAX_EXCLUDED:
            return None
        k_eff = min(k, self.ntotal - excluded.size)
        n_queries = q.shape[0]
        scores = np.full((n_queries, k), _PAD_SCORE, dtype=np.float32)  # [Q, k]
        rows = np.full((n_queries, k), -1, dtype=np.int64)  # [Q, k]
        if k_eff <= 0:
            return scores, rows
        fetched = min(k_eff + excluded.size, self.ntotal)
        if self._tail.n:  # the mapped rows' best and the tail's best, merged: [Q, F], [Q, F]
            base_n = int(self._index.ntotal)
            found_s, found_r = _merge(
                *self._search_base_plain(q, min(fetched, base_n)), *self._tail_top(q, fetched, None), fetched
            )
        else:
            found_s, found_r = self._index.search(q, fetched, params=self._params(None))  # [Q, F], [Q, F]
        keep = found_r >= 0  # [Q, F]
        if excluded.size:  # membership by binary search in the sorted exclusions (np.isin costs ~20 us)
            at = np.minimum(np.searchsorted(excluded, found_r), excluded.size - 1)  # [Q, F]
            keep &= excluded[at] != found_r
        for i in range(n_queries):
            kept = np.flatnonzero(keep[i])[:k_eff]  # [<= k_eff]
            if kept.size < k_eff:
                return None  # the probed lists held too few eligible rows: the selector path rescans
            scores[i, :k_eff] = found_s[i, kept]
            rows[i, :k_eff] = found_r[i, kept]
        return scores, rows

    def _search_faiss(self, q: np.ndarray, k: int, eligible: Eligibility) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search under the eligibility selector; queries an approximate pass left short are redone exactly.

        With a tail (rows added to a mapped index): the mapped rows' top-k and the tail's exact top-k, merged."""
        if not self._tail.n:
            return self._search_selected(q, k, eligible)
        base_n = int(self._index.ntotal)
        head = eligible.head(base_n)
        k_head = min(k, head.n_eligible)
        if k_head:
            base_s, base_r = self._search_selected(q, k_head, head)  # [Q, k_head]
        else:
            base_s, base_r = _empty_found(q.shape[0])
        return _merge(base_s, base_r, *self._tail_top(q, k, eligible.tail_mask(base_n)), k)

    def _search_base_plain(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The FAISS structure's own top-k, no selector: [Q, k] each (k may be 0)."""
        if k <= 0:
            return _empty_found(q.shape[0])
        return self._index.search(q, k, params=self._params(None))

    def _tail_top(self, q: np.ndarray, k: int, keep: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k of the tail rows set in `keep` (bool [tail], None: all): scores, global rows [Q, <=k]."""
        tail = self._tail.view()  # [m, D]
        sims = q @ tail.T  # [Q, m]
        n_keep = tail.shape[0]
        if keep is not None:
            sims[:, ~keep] = _PAD_SCORE
            n_keep = int(np.count_nonzero(keep))
        k = min(k, n_keep)
        if k <= 0:
            return _empty_found(q.shape[0])
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k] if k < sims.shape[1] else np.argsort(-sims, axis=1)
        top_s = np.take_along_axis(sims, top, axis=1)  # [Q, k]
        order = np.argsort(-top_s, axis=1, kind="stable")  # [Q, k]
        rows = np.take_along_axis(top, order, axis=1)[:, :k].astype(np.int64) + int(self._index.ntotal)
        return np.take_along_axis(top_s, order, axis=1)[:, :k], rows

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        """Stored vectors of in-range rows `ids` [n] (mapped rows from FAISS, tail rows from memory): [n, D]."""
        if not self._tail.n:
            return self._index.reconstruct_batch(ids)
        base_n = int(self._index.ntotal)
        out = np.empty((ids.size, self.dim), dtype=np.float32)  # [n, D]
        in_base = ids < base_n
        if in_base.any():
            out[in_base] = self._index.reconstruct_batch(ids[in_base])
        out[~in_base] = self._tail.vectors[ids[~in_base] - base_n]
        return out

    def _search_selected(self, q: np.ndarray, k: int, eligible: Eligibility) -> tuple[np.ndarray, np.ndarray]:
        """FAISS search of its own rows under the eligibility selector (short queries redone exactly)."""
        selector, keep_alive = eligible.selector()
        scores, rows = self._index.search(q, k, params=self._params(selector))  # [Q, k], [Q, k]
        short = np.flatnonzero((rows < 0).any(axis=1))  # [S] queries with fewer than k eligible rows found
        if short.size and self._kind != "flat":
            # The graph walk or the probed lists held too few eligible rows: rescan those queries exhaustively.
            exact_s, exact_r = self._exact_index().search(
                q[short], k, params=self._params(selector, exact=True)
            )
            scores[short], rows[short] = exact_s, exact_r
        del keep_alive  # the selector's buffers must outlive the searches above
        scores[rows < 0] = _PAD_SCORE  # FAISS pads with -FLT_MAX; one padding value for callers
        return scores, rows

    def _search_subset(self, q: np.ndarray, k: int, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k over a small set of eligible rows, scored in numpy."""
        vecs = self._vectors_of(subset)  # [E, D]
        sims = q @ vecs.T  # [Q, E]
        if k < subset.size:
            top = np.argpartition(-sims, k - 1, axis=1)[:, :k]  # [Q, k] unordered
        else:
            top = np.broadcast_to(np.arange(subset.size), sims.shape)  # [Q, k] with k == E
        top_scores = np.take_along_axis(sims, top, axis=1)  # [Q, k]
        order = np.argsort(-top_scores, axis=1, kind="stable")  # [Q, k]
        return np.take_along_axis(top_scores, order, axis=1), subset[np.take_along_axis(top, order, axis=1)]

    def _params(self, selector: faiss.IDSelector | None, *, exact: bool = False) -> faiss.SearchParameters:
        """Per-call search parameters (nothing mutates the shared index, so concurrent calls cannot interfere)."""
        params: faiss.SearchParameters
        if isinstance(self._index, faiss.IndexIVF):
            params = faiss.SearchParametersIVF()
            params.nprobe = (
                int(self._index.nlist) if exact else min(self._config.nprobe, int(self._index.nlist))
            )
        elif isinstance(self._index, faiss.IndexHNSW) and not exact:
            hnsw_params = faiss.SearchParametersHNSW()  # type: ignore[attr-defined]  # missing from the stubs
            hnsw_params.efSearch = self._config.ef_search
            params = hnsw_params
        else:
            params = faiss.SearchParameters()
        params.sel = selector
        return params

    def _exact_index(self) -> faiss.Index:
        """An index answering exactly over the same rows: HNSW's flat storage, IVF itself (probing all lists)."""
        if isinstance(self._index, faiss.IndexHNSW):
            return faiss.downcast_index(self._index.storage)
        return self._index


def _empty_found(n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    """No hits: scores float32 [Q, 0], rows int64 [Q, 0]."""
    return np.empty((n_queries, 0), dtype=np.float32), np.empty((n_queries, 0), dtype=np.int64)


def _merge(
    s1: np.ndarray, r1: np.ndarray, s2: np.ndarray, r2: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """Best k of two result sets (scores [Q, a], [Q, b]; rows, -1 for none), best first; ties keep the first."""
    scores = np.concatenate([s1, s2], axis=1)  # [Q, a+b]
    rows = np.concatenate([r1, r2], axis=1)  # [Q, a+b]
    scores = np.where(rows < 0, _PAD_SCORE, scores)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]  # [Q, k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(rows, order, axis=1)


def _trained_ivf(x: np.ndarray, config: IndexConfig) -> faiss.IndexIVFFlat:
    """An IVF-Flat inner-product index whose lists are trained by k-means on (a sample of) `x` [N, D]."""
    n, dim = x.shape
    if n == 0:
        raise ValueError("vectors: an IVF index needs at least one vector to train its lists, got 0 rows")
    nlist = config.ivf_nlist(n)
    quantizer = faiss.IndexFlatIP(dim)  # the IVF wrapper keeps a Python reference to it
    index = faiss.IndexIVFFlat(quantizer, dim, nlist, faiss.METRIC_INNER_PRODUCT)
    index.cp.seed = config.seed
    sample_size = nlist * config.train_points_per_list
    if n > sample_size:
        sample = np.random.default_rng(config.seed).choice(n, size=sample_size, replace=False)  # [S]
        train = x[np.sort(sample)]  # [S, D]
    else:
        train = x
    index.train(train)
    index.make_direct_map()  # row -> (list, offset): `vectors()` and exact scoring of small filtered sets
    return index


def _as_matrix(x: np.ndarray, name: str) -> np.ndarray:
    """`x` as a C-contiguous float32 [n, D] array of finite values, or ValueError naming `name`."""
    arr = np.asarray(x)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D array [n, D], got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name}: dimension must be at least 1, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
        raise ValueError(f"{name}: expected numbers, got dtype {arr.dtype}")
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        raise ValueError(f"{name}[{bad}]: contains NaN or infinity")
    return arr


@contextmanager
def _omp_threads(n: int) -> Iterator[None]:
    """Run the block with `n` OpenMP threads in this thread, then restore this thread's setting."""
    before = faiss.omp_get_max_threads()
    if before != n:
        faiss.omp_set_num_threads(n)
    try:
        yield
    finally:
        if before != n:
            faiss.omp_set_num_threads(before)


def _cpu_count() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _config_from_dict(raw: dict[str, Any], path: Path) -> IndexConfig:
    """The IndexConfig saved in a sidecar; fields unknown to this version are ignored."""
    known = {f.name for f in dataclasses.fields(IndexConfig)}
    try:
        return IndexConfig(**{key: value for key, value in raw.items() if key in known})
    except (TypeError, ValueError) as exc:
        raise IndexFileError(f"index file {path}: sidecar config is invalid ({exc})") from exc
