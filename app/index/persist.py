"""Index files: `faiss.write_index` plus a JSON sidecar (kind, shape, config, checksum), both written atomically."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss

FORMAT_VERSION = 1
_CHUNK = 1 << 20


class IndexFileError(ValueError):
    """An index file or its sidecar is missing a part, corrupt, or does not match its sidecar."""


@dataclass(frozen=True, slots=True)
class Sidecar:
    """What the JSON sidecar says about the FAISS file beside it."""

    kind: str
    dim: int
    ntotal: int
    size: int
    sha256: str
    config: dict[str, Any]


def sidecar_path(path: Path) -> Path:
    """The sidecar of index file `path`: `<path>.json`."""
    return path.with_name(path.name + ".json")


def write_index_files(index: faiss.Index, path: Path, kind: str, config: dict[str, Any]) -> None:
    """Write `index` to `path` and its sidecar, each through a temp file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_index = _temp_path(path)
    tmp_sidecar = _temp_path(sidecar_path(path))
    try:
        faiss.write_index(index, str(tmp_index))
        size, digest = _size_and_sha256(tmp_index)
        _fsync(tmp_index)
        meta = {
            "format": FORMAT_VERSION,
            "index_file": path.name,
            "kind": kind,
            "metric": "inner_product",
            "dim": int(index.d),
            "ntotal": int(index.ntotal),
            "size": size,
            "sha256": digest,
            "config": config,
        }
        tmp_sidecar.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        _fsync(tmp_sidecar)
        # A reader that sees the new index with the old sidecar gets a checksum error, never a wrong index.
        os.replace(tmp_index, path)
        os.replace(tmp_sidecar, sidecar_path(path))
    finally:
        tmp_index.unlink(missing_ok=True)
        tmp_sidecar.unlink(missing_ok=True)


def read_sidecar(path: Path) -> Sidecar:
    """Read and check the sidecar of index file `path` and the file's size and checksum against it."""
    if not path.is_file():
        raise FileNotFoundError(f"index file {path} does not exist")
    meta_path = sidecar_path(path)
    if not meta_path.is_file():
        raise IndexFileError(f"index file {path}: its sidecar {meta_path} does not exist")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        version = meta.get("format")
        sidecar = Sidecar(
            kind=str(meta["kind"]),
            dim=int(meta["dim"]),
            ntotal=int(meta["ntotal"]),
            size=int(meta["size"]),
            sha256=str(meta["sha256"]),
            config=dict(meta["config"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexFileError(f"{meta_path}: unreadable index sidecar ({exc!r})") from exc
    if version != FORMAT_VERSION:
        raise IndexFileError(f"{meta_path}: sidecar format {version!r}, expected {FORMAT_VERSION}")
    size, digest = _size_and_sha256(path)
    if size != sidecar.size or digest != sidecar.sha256:
        raise IndexFileError(
            f"index file {path}: {size} bytes with sha256 {digest[:12]}..., its sidecar says {sidecar.size} "
            f"bytes with sha256 {sidecar.sha256[:12]}... (corrupt or partially written)"
        )
    return sidecar


# Memory-map the vectors (flat codes, IVF lists) read-only instead of reading them: N processes mapping one file
# share one copy of its pages in the page cache, and opening a 1M-row index costs milliseconds. FAISS aborts the
# process (it does not raise) when such an index is asked to grow, so ItemIndex keeps later rows beside it.
MMAP_FLAGS = faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY


def read_index_file(path: Path, *, mmap: bool = False) -> faiss.Index:
    """`faiss.read_index` (memory-mapped read-only with `mmap`) with its errors naming the file."""
    try:
        # SWIG hands back the concrete class (IndexIVFFlat, ...)
        return faiss.read_index(str(path), MMAP_FLAGS) if mmap else faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexFileError(f"index file {path}: FAISS cannot read it ({str(exc).splitlines()[0]})") from exc


def _temp_path(path: Path) -> Path:
    """A fresh temp file next to `path` (same filesystem, so the rename is atomic)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


def _size_and_sha256(path: Path) -> tuple[int, str]:
    """Byte size and hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a written file to disk before it is renamed into place."""
    with path.open("rb") as f:
        os.fsync(f.fileno())
