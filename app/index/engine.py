"""Vector engines: where a model version's item index lives (FAISS in this process, or a Milvus collection).

`RECO_VECTOR_ENGINE` picks one: `faiss` (the default), `milvus://host:port[/db]` for a Milvus server, or
`milvus-lite:///path/to/file.db` (or a bare `*.db` path) for the embedded milvus-lite. Both engines hand back an
index with the same contract (`VectorIndex`): rows 0..N-1, inner-product top-k with exclusions and allowed
masks, padded with -inf / -1, `add` appending rows and `vectors` reading them back.

The registry builds one index per model version with `build`, swaps it in once it is complete, and hands the
old one to `retire` (FAISS: nothing to do; Milvus: its collection is dropped after a grace period that lets
requests holding the old snapshot finish).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol, runtime_checkable

import numpy as np

from app.index.config import IndexConfig, IndexKind
from app.index.item_index import ItemIndex


@runtime_checkable
class VectorIndex(Protocol):
    """What serving needs of an item index (ItemIndex and MilvusItemIndex both provide it)."""

    @property
    def ntotal(self) -> int: ...

    @property
    def dim(self) -> int: ...

    @property
    def kind(self) -> IndexKind: ...

    def __len__(self) -> int: ...

    def search(
        self,
        queries: np.ndarray,
        k: int,
        *,
        exclude: Collection[int] | np.ndarray | None = None,
        allowed: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]: ...

    def add(self, vectors: np.ndarray) -> np.ndarray: ...

    def vectors(self, rows: np.ndarray | Collection[int]) -> np.ndarray: ...


class VectorEngine(Protocol):
    """Builds the item index of a model version and releases it once no snapshot serves it."""

    name: str
    remote: bool  # searches wait on another server (callers on an event loop run them in a thread)

    def build(self, vectors: np.ndarray, config: IndexConfig, *, label: str) -> VectorIndex: ...

    def retire(self, index: VectorIndex) -> None: ...

    def close(self) -> None: ...


class FaissEngine:
    """The default: a FAISS index in this process's memory (the garbage collector frees a retired one)."""

    name = "faiss"
    remote = False

    def build(self, vectors: np.ndarray, config: IndexConfig, *, label: str) -> VectorIndex:
        """`ItemIndex.build(vectors, config)`; `label` (the version) is not needed."""
        del label
        return ItemIndex.build(vectors, config)

    def retire(self, index: VectorIndex) -> None:
        """Nothing to release: the index goes when the last snapshot holding it does."""

    def close(self) -> None:
        """Nothing to close."""


def is_milvus_spec(spec: str) -> bool:
    """Whether `spec` (a RECO_VECTOR_ENGINE value) names a Milvus engine rather than FAISS."""
    return spec.startswith(("milvus://", "milvus-lite://")) or spec.endswith(".db")


def open_engine(spec: str, *, timeout_s: float = 5.0) -> VectorEngine:
    """The engine `spec` names (see the module docstring); Milvus is connected on its first use."""
    if spec in ("", "faiss"):
        return FaissEngine()
    if is_milvus_spec(spec):
        from app.index.milvus import MilvusEngine  # pymilvus only where Milvus is configured

        return MilvusEngine(spec, timeout_s=timeout_s)
    raise ValueError(
        f"vector engine {spec!r}: use faiss, milvus://host:port, milvus-lite:///path/file.db or a *.db path"
    )
