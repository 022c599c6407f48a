"""Model versions on disk: a directory per version, written to a temporary directory and renamed atomically.

Layout: `manifest.json` (version, config, data statistics, metrics, file checksums), `model.pt` (state_dict,
read with `weights_only=True`), `item_vectors.npy` ([N, d+1] float32: (v, b), read with
`allow_pickle=False`), `item_ids.json` (row i of the vectors) and `item_index.faiss` with its sidecar
`item_index.faiss.json` (the FAISS index over the vectors, built by the trainer; its checksum is in the manifest
and in the sidecar). Nothing is pickled.

The artifact is the whole hand-off: serving memory-maps the index, the vectors and the weights (`load_version`,
`load_index`) instead of rebuilding anything, so a 1M-item version opens in seconds and the API processes of a
host share one copy of those pages. A version written before the index joined the artifact, or whose index is
corrupt or was built with other structural settings, is still served: the registry rebuilds its index (logged).

torch and the training stack are imported only inside the functions that need them (a version is written or
loaded), so that `import app.api.app` stays light: a `--workers N` server's workers must answer uvicorn's
health check while they start, on a busy machine too.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from app.index import IndexConfig, IndexFileError, ItemIndex
from app.records import ItemRecord

if TYPE_CHECKING:
    from torch import Tensor

    from app.ml.model import RecModel
    from app.ml.result import FitResult

FORMAT = 1
MANIFEST = "manifest.json"
MODEL_FILE = "model.pt"
VECTORS_FILE = "item_vectors.npy"
IDS_FILE = "item_ids.json"
INDEX_FILE = "item_index.faiss"
DATA_FILES = (MODEL_FILE, VECTORS_FILE, IDS_FILE)


class ArtifactError(ValueError):
    """A model version directory is missing, incomplete or corrupt; the message names the file."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def list_versions(artifact_dir: Path) -> list[str]:
    """Names of the complete version directories, oldest first (names sort by time)."""
    if not artifact_dir.is_dir():
        return []
    return sorted(p.name for p in artifact_dir.iterdir() if p.is_dir() and not p.name.startswith("."))


def _new_version(artifact_dir: Path) -> str:
    version = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    existing = list_versions(artifact_dir)
    suffix = 0
    candidate = version
    # Versions must sort after every existing one (serving loads only newer versions).
    while candidate in existing or (existing and candidate <= existing[-1]):
        suffix += 1
        candidate = f"{max(version, existing[-1].split('.')[0])}.{suffix:03d}"
    return candidate


def item_table(model: RecModel) -> np.ndarray:
    """The (v, b) rows of the whole catalog as served ([N, d+1] float32)."""
    import torch

    model.eval()
    with torch.inference_mode():
        return model.item_vectors(None).float().cpu().numpy().astype(np.float32)


def save_version(
    result: FitResult,
    artifact_dir: Path,
    version: str | None = None,
    *,
    index_config: IndexConfig | None = None,
    with_index: bool = True,
) -> Path:
    """Write a model version atomically under `artifact_dir` and return its directory.

    With `with_index` the FAISS index over the item vectors is built here (by `index_config`, default
    IndexConfig(); the trainer passes the one serving searches with, `service_index_config(settings)`) and
    written into the version, so that serving maps it instead of building it.
    """
    import torch

    from app.ml.result import describe

    artifact_dir = Path(artifact_dir)
    artifact_dir.mkdir(parents=True, exist_ok=True)
    version = version or _new_version(artifact_dir)
    if "/" in version or version.startswith(".") or not version:
        raise ArtifactError(f"version: {version!r} is not a valid directory name")
    final = artifact_dir / version
    if final.exists():
        raise ArtifactError(f"{final}: version {version} already exists")
    tmp = artifact_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        model = result.model.cpu().eval()
        torch.save(model.state_dict(), tmp / MODEL_FILE)
        table = item_table(model)  # [N, d+1]
        np.save(tmp / VECTORS_FILE, table, allow_pickle=False)
        (tmp / IDS_FILE).write_text(json.dumps(result.item_ids), encoding="utf-8")
        index_info = _write_index(table, tmp, index_config or IndexConfig()) if with_index else None
        summary = describe(result)
        manifest: dict[str, Any] = {
            "format": FORMAT,
            "version": version,
            "created_at": datetime.now(UTC).isoformat(),
            "config": result.config.to_dict(),
            "data": result.data_stats,
            "metrics": result.metrics,
            "timings": result.timings,
            "type_names": result.type_names,
            "items": len(result.item_ids),
            "dim": model.dim,
            "parameters": summary["parameters"],
            "files": {name: _sha256(tmp / name) for name in DATA_FILES},
        }
        if index_info is not None:
            manifest["index"] = index_info
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True), encoding="utf-8")
        for name in (*DATA_FILES, MANIFEST):
            with (tmp / name).open("rb") as f:
                os.fsync(f.fileno())
        os.rename(tmp, final)
        _fsync_dir(artifact_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file():
        raise ArtifactError(f"{file}: missing")
    try:
        manifest = json.loads(file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{file}: not valid JSON ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ArtifactError(f"{file}: not a format-{FORMAT} model manifest")
    for key in ("version", "config", "files", "type_names"):
        if key not in manifest:
            raise ArtifactError(f"{file}: the key {key!r} is missing")
    return manifest


def _write_index(table: np.ndarray, directory: Path, config: IndexConfig) -> dict[str, Any]:
    """Build the index over `table` [N, d+1], write it with its sidecar into `directory`; the manifest entry."""
    import time

    started = time.perf_counter()
    index = ItemIndex.build(table, config)
    index.save(directory / INDEX_FILE)
    meta = json.loads((directory / f"{INDEX_FILE}.json").read_text(encoding="utf-8"))
    return {
        "file": INDEX_FILE,
        "kind": index.kind,
        "rows": index.ntotal,
        "size": meta["size"],
        "sha256": meta["sha256"],
        "build_s": round(time.perf_counter() - started, 3),
    }


def load_index(loaded: LoadedModel, config: IndexConfig) -> ItemIndex:
    """The version's own index, memory-mapped read-only, searching with `config`'s settings.

    Raises IndexFileError naming the reason when the version has no index (written before indexes joined the
    artifact), when the file is missing, partly written or corrupt (its size and sha256 must match both its
    sidecar and the manifest), or when it was built with other structural settings than `config` would use
    (kind, IVF lists, HNSW links): the caller then builds the index from the vectors instead.
    """
    info = loaded.manifest.get("index")
    if loaded.path is None:
        raise IndexFileError(f"version {loaded.version}: not read from a version directory")
    if not isinstance(info, dict):
        raise IndexFileError(
            f"{loaded.path}: the version has no index file (written before indexes were saved)"
        )
    name = info.get("file")
    if not isinstance(name, str) or name != Path(name).name or name.startswith("."):
        raise IndexFileError(
            f"{loaded.path / MANIFEST}: index file name {name!r} is not a file of the version"
        )
    path = loaded.path / name
    if not path.is_file():
        raise IndexFileError(f"{path}: missing (the manifest names it)")
    saved = ItemIndex.saved_config(path)
    n_items = len(loaded.item_ids)
    if differences := config.build_differences(saved, n_items):
        raise IndexFileError(f"{path}: built with {', '.join(differences)}")
    meta = json.loads((path.parent / f"{name}.json").read_text(encoding="utf-8"))
    if (meta.get("sha256"), meta.get("size")) != (info.get("sha256"), info.get("size")):
        raise IndexFileError(
            f"{path}: its sidecar's checksum differs from the manifest's (not this version's)"
        )
    index = ItemIndex.load(path, config, mmap=True)  # checks the file's size and sha256 against the sidecar
    dim = int(loaded.item_vectors.shape[1])
    if (index.ntotal, index.dim) != (n_items, dim):
        raise IndexFileError(
            f"{path}: holds {index.ntotal} rows of {index.dim}, the version {n_items} of {dim}"
        )
    return index


def load_version(path: Path, *, mmap: bool = True) -> LoadedModel:
    """Load a version directory, refusing missing or corrupt files with an error naming the file.

    `mmap`: the item vectors and the weights are memory-mapped (copy-on-write for the weights) rather than
    read into this process, after their checksums are verified: processes serving one version share the pages.
    """
    import torch

    from app.ml.config import TrainConfig
    from app.ml.model import RecModel

    path = Path(path)
    if not path.is_dir():
        raise ArtifactError(f"{path}: no such model version directory")
    manifest = _read_manifest(path)
    for name in DATA_FILES:
        file = path / name
        if not file.is_file():
            raise ArtifactError(f"{file}: missing")
        if _sha256(file) != manifest["files"].get(name):
            raise ArtifactError(f"{file}: checksum differs from the manifest (corrupt or modified)")
    try:
        config = TrainConfig.from_dict(manifest["config"])
    except (TypeError, ValueError) as exc:
        raise ArtifactError(f"{path / MANIFEST}: bad config ({exc})") from exc
    try:
        state = torch.load(path / MODEL_FILE, map_location="cpu", weights_only=True, mmap=mmap)
        vectors = np.load(path / VECTORS_FILE, allow_pickle=False, mmap_mode="r" if mmap else None)
        item_ids = json.loads((path / IDS_FILE).read_text(encoding="utf-8"))
    except Exception as exc:  # any decoding failure is a corrupt file
        raise ArtifactError(f"{path}: cannot read the model files ({exc})") from exc
    dim = config.model.members * config.model.d + 1
    if vectors.ndim != 2 or vectors.shape != (len(item_ids), dim):
        raise ArtifactError(
            f"{path / VECTORS_FILE}: shape {vectors.shape} does not match {len(item_ids)} items x {dim}"
        )
    features = state.get("members.0.items.features")
    if not isinstance(features, torch.Tensor):
        raise ArtifactError(f"{path / MODEL_FILE}: the state_dict lacks items.features")
    # Built on the meta device (no memory, no random init of an [N, d+1] table: ~1 s at 1M items), then the
    # loaded tensors are assigned in place of the parameters instead of being copied into them.
    with torch.device("meta"), _skip_meta_init():
        model = RecModel(len(item_ids), len(manifest["type_names"]), features, config.model)
    try:
        model.load_state_dict(state, assign=True)
    except RuntimeError as exc:
        raise ArtifactError(f"{path / MODEL_FILE}: state_dict does not fit the manifest ({exc})") from exc
    if any(t.is_meta for t in (*model.parameters(), *model.buffers())):
        raise ArtifactError(f"{path / MODEL_FILE}: the state_dict leaves some weights of the model unset")
    return LoadedModel(manifest, model, item_ids, vectors.astype(np.float32, copy=False), path)


_INIT_OPS = frozenset(
    {
        "normal_", "uniform_", "zero_", "fill_", "constant_", "zeros_", "ones_", "trunc_normal_",
        "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_", "orthogonal_",
    }
)  # fmt: skip


def _skip_meta_init() -> Any:
    """A torch function mode (this thread only) skipping the weight initialisers on meta tensors.

    Initialising a meta tensor computes nothing, but torch routes it through its Python reference kernels,
    whose first use imports torch._dynamo: ~2 s of every process's first version load. The loaded weights
    replace every initialised tensor anyway (`load_state_dict(assign=True)`).
    """
    import torch
    from torch.overrides import TorchFunctionMode

    class SkipMetaInit(TorchFunctionMode):
        def __torch_function__(
            self, func: Any, types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
        ) -> Any:
            kwargs = kwargs or {}
            target = args[0] if args else kwargs.get("tensor")
            if (
                getattr(func, "__name__", "") in _INIT_OPS
                and isinstance(target, torch.Tensor)
                and target.is_meta
            ):
                return target
            return func(*args, **kwargs)

    return SkipMetaInit()


class LoadedModel:
    """A served model version: item vectors for the index, and the user tower for real-time queries."""

    def __init__(
        self,
        manifest: dict[str, Any],
        model: RecModel,
        item_ids: list[str],
        item_vectors: np.ndarray,
        path: Path | None = None,
    ) -> None:
        import warnings

        import torch

        from app.ml.fast_user import NumpyUserEncoder

        self.path = Path(path) if path is not None else None  # the version directory it was read from
        self.manifest = manifest
        self.version: str = manifest["version"]
        self.model = model.eval()
        self.item_ids = item_ids
        self.item_vectors = item_vectors  # [N, d+1] float32
        self.row_of = {item: row for row, item in enumerate(item_ids)}
        self.type_names: list[str] = list(manifest["type_names"])
        self._type_of = {name: code for code, name in enumerate(self.type_names)}
        with warnings.catch_warnings():  # a read-only memory map: the table is only ever read
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self._table = torch.from_numpy(item_vectors)  # [N, d+1]
        self.max_len = model.cfg.max_len
        self.dim = model.dim
        self._fast = NumpyUserEncoder.from_model(model)  # query_vector's numpy user tower

    def _rows(self, recent: Sequence[tuple[str, str]]) -> tuple[list[int], list[int]]:
        rows, types = [], []
        unknown = len(self.type_names)
        for item_id, event_type in recent:
            row = self.row_of.get(item_id)
            if row is not None:
                rows.append(row)
                types.append(self._type_of.get(event_type, unknown))
        return rows[-self.max_len :], types[-self.max_len :]

    def _encode(self, rows: Tensor, types: Tensor, valid: Tensor | None) -> Tensor:
        from app.ml.model import RecModel

        states = self.model.encode(self._table[rows.clamp(min=0)], types, valid)  # [B, L, d]
        return RecModel.query(states[:, -1])  # [B, D+1]

    def query_vector(self, recent: Sequence[tuple[str, str]]) -> np.ndarray | None:
        """(u, 1) for [(item_id, event_type)] oldest..newest ([d+1] float32); None when no item is known."""
        rows, types = self._rows(recent)
        if not rows:
            return None
        # The numpy path: the same numbers as `self._encode` without torch's per-op overhead.
        return self._fast.encode_last(self.item_vectors[rows], np.asarray(types, dtype=np.int64))  # [d+1]

    def query_vectors(self, batch: Sequence[Sequence[tuple[str, str]]]) -> np.ndarray:
        """Batched `query_vector` ([B, d+1]); a history with no known item gets (0, 1): rank by item bias."""
        import torch

        encoded = [self._rows(recent) for recent in batch]
        out = np.zeros((len(batch), self.dim), dtype=np.float32)  # [B, d+1]
        out[:, -1] = 1.0
        present = [i for i, (rows, _) in enumerate(encoded) if rows]
        if not present:
            return out
        length = max(len(encoded[i][0]) for i in present)
        rows = torch.full((len(present), length), -1, dtype=torch.long)  # [B', L]
        types = torch.full((len(present), length), len(self.type_names), dtype=torch.long)  # [B', L]
        for j, i in enumerate(present):
            r, t = encoded[i]
            rows[j, length - len(r) :] = torch.tensor(r)
            types[j, length - len(t) :] = torch.tensor(t)
        with torch.inference_mode():
            queries = self._encode(rows, types, rows >= 0)  # [B', d+1]
        out[present] = queries.numpy()
        return out

    def embed_items(self, items: Sequence[ItemRecord]) -> np.ndarray:
        """(v, b) of items unseen in training, from their features alone ([n, d+1] float32)."""
        import torch

        from app.ml.features import feature_row

        cfg = self.model.cfg
        features = np.stack([feature_row(item, cfg.feature_buckets, cfg.max_features) for item in items])
        with torch.inference_mode():
            return self.model.embed_features(torch.from_numpy(features)).numpy().astype(np.float32)

    def explain(
        self, recent: Sequence[tuple[str, str]], item_rows: Sequence[int], top: int = 2
    ) -> list[list[str]]:
        """For each candidate row, the history items whose removal lowers its score most (leave-one-out)."""
        rows, types = self._rows(recent)
        if not rows or not item_rows:
            return [[] for _ in item_rows]
        if len(rows) == 1:
            return [[self.item_ids[rows[0]]] for _ in item_rows]
        import torch

        n = len(rows)
        history = torch.tensor(rows)  # [n]
        history_types = torch.tensor(types)  # [n]
        keep = ~torch.eye(n, dtype=torch.bool)  # [n, n]: row j drops position j
        ablated = history.expand(n, n)[keep].view(n, n - 1)  # [n, n-1]
        ablated_types = history_types.expand(n, n)[keep].view(n, n - 1)  # [n, n-1]
        candidates = self._table[torch.as_tensor(list(item_rows))]  # [C, d+1]
        with torch.inference_mode():
            full = self._encode(history[None], history_types[None], None)  # [1, d+1]
            dropped = self._encode(ablated, ablated_types, None)  # [n, d+1]
            drop = (full @ candidates.T) - (dropped @ candidates.T)  # [n, C]
        order = torch.argsort(drop, dim=0, descending=True)  # [n, C]
        out = []
        for c in range(len(item_rows)):
            names: list[str] = []
            for j in order[:, c].tolist():
                name = self.item_ids[rows[j]]
                if name not in names:
                    names.append(name)
                if len(names) == top:
                    break
            out.append(names)
        return out
