"""Index configuration: which FAISS structure to build and how hard approximate searches work."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from app.settings import Settings

IndexKind = Literal["flat", "ivf", "hnsw"]
ConfigKind = Literal["auto", "flat", "ivf", "hnsw"]

# The approximate kind "auto" uses above `exact_max_items`, chosen by measurement (scripts/bench_index.py,
# docs/BENCHMARKS.md "Index"): on clustered vectors with multi-interest queries IVF (nlist ~ sqrt(N), nprobe 16)
# keeps recall@10 >= 0.998 on plain, seen-excluded and category-filtered searches at p50 0.06 ms (100k) and
# 0.19 ms (1M), builds 1M items in seconds, and adds rows by assigning them to trained lists. HNSW32 over inner
# product stays below 0.9 recall even at efSearch 128 on those queries, takes ~1 minute to build 1M items, and
# its graph walk loses recall under filters (it scans nodes it may not return). nprobe 8 also clears 0.95;
# 16 buys margin for real embeddings, less clustered than these, for ~0.1 ms at 1M.
AUTO_APPROXIMATE_KIND: IndexKind = "ivf"


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """How to build and search an item index; every field has a measured default."""

    kind: ConfigKind = "auto"
    # "auto": exact (flat) up to this many rows, AUTO_APPROXIMATE_KIND above.
    exact_max_items: int = 200_000
    # IVF: number of lists (None: about sqrt(N), see `ivf_nlist`) and lists probed per query.
    nlist: int | None = None
    nprobe: int = 16
    # IVF k-means trains on at most this many sampled rows per list (FAISS' own cap is 256).
    train_points_per_list: int = 64
    # HNSW: links per node, candidate list size at search and at construction.
    M: int = 32
    ef_search: int = 64
    ef_construction: int = 40
    # Approximate kinds score the eligible rows exactly when a filter leaves at most this many.
    filter_exact_max: int = 4096
    # OpenMP threads per search call: 1 in a web process (one query per request, many requests in parallel).
    search_threads: int = 1
    # OpenMP threads for build and add (0: every CPU this process may use).
    build_threads: int = 0
    seed: int = 1234

    def __post_init__(self) -> None:
        """Reject values FAISS would misuse silently."""
        if self.kind not in ("auto", "flat", "ivf", "hnsw"):
            raise ValueError(f"kind: {self.kind!r} is not one of auto, flat, ivf, hnsw")
        for name in ("exact_max_items", "filter_exact_max", "build_threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name}: {getattr(self, name)} must be >= 0")
        for name in (
            "nprobe",
            "train_points_per_list",
            "M",
            "ef_search",
            "ef_construction",
            "search_threads",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} must be >= 1")
        if self.nlist is not None and self.nlist < 1:
            raise ValueError(f"nlist: {self.nlist} must be >= 1")

    def resolve_kind(self, n_items: int) -> IndexKind:
        """The concrete kind to build for `n_items` rows."""
        if self.kind != "auto":
            return self.kind
        return "flat" if n_items <= self.exact_max_items else AUTO_APPROXIMATE_KIND

    def ivf_nlist(self, n_items: int) -> int:
        """Number of IVF lists for `n_items` rows: the configured one, else about sqrt(N), at most N."""
        nlist = self.nlist if self.nlist is not None else max(1, round(math.sqrt(n_items)))
        return max(1, min(nlist, n_items))

    def build_differences(self, built: IndexConfig, n_items: int) -> list[str]:
        """How an index built with `built` over `n_items` rows differs in structure from one this config builds
        (kind, IVF lists and k-means sampling, HNSW links); [] when they are the same. Search settings (nprobe,
        efSearch, threads) are not structure: they apply to either."""
        mine, theirs = self.resolve_kind(n_items), built.resolve_kind(n_items)
        if mine != theirs:
            return [f"kind {theirs}, wanted {mine}"]
        if mine == "ivf":
            fields = {
                "nlist": (built.ivf_nlist(n_items), self.ivf_nlist(n_items)),
                "train_points_per_list": (built.train_points_per_list, self.train_points_per_list),
                "seed": (built.seed, self.seed),
            }
        elif mine == "hnsw":
            fields = {
                "M": (built.M, self.M),
                "ef_construction": (built.ef_construction, self.ef_construction),
            }
        else:
            fields = {}
        return [f"{name} {got}, wanted {want}" for name, (got, want) in fields.items() if got != want]


def service_index_config(settings: Settings) -> IndexConfig:
    """The index the service searches with, and so the one the trainer builds into each version (RECO_INDEX_*)."""
    return IndexConfig(
        exact_max_items=settings.index_exact_max_items, nprobe=settings.index_nprobe, search_threads=1
    )
