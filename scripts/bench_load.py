"""Version load benchmark: how long a fresh API process takes to serve a model version, and its memory.

For each catalog size a synthetic model version (the default model shape: d = 64, so [N, 65] item vectors and
32 feature slots per item) is written by `save_version` with the index the service searches with
(`service_index_config` of the default settings: flat up to 50k items, IVF above), and a hard-linked copy of
it whose manifest names no index: a version as written before the index joined the artifact. Then, each in a
fresh interpreter (page cache warm: the files were just written), the registry's own load path runs
(`load_version` + `ModelRegistry._open_index` + `ServingModel.create`):

  - `rebuilt`: the copy without an index: the registry builds the FAISS index from the vectors (what every API
    process did before issue 14);
  - `mapped`: the version itself: the registry memory-maps the index file the trainer wrote.

Each process then answers 300 queries twice (a user-tower query from a random 20-item history, seen items
excluded; the first pass also faults in the mapped pages it reads, the second is warm) and reports its resident memory (RSS, split into private anonymous and file-backed pages, and PSS, which
charges a shared page 1/n to each of the n processes mapping it). Two processes of each mode then load the
version at the same time and report their memory while both are alive: mapped pages are one copy in the page
cache, shared. Both modes must give the same top-10 (checked on the 300 queries).

    PYTHONPATH=. .venv/bin/python scripts/bench_load.py --sizes 10000 100000 1000000 --update-docs
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from benchdocs import update_section  # noqa: E402

SECTION = "## Version load: rebuilt vs memory-mapped index (issue 14)"
TYPES = ["view", "click", "add_to_cart", "purchase"]
QUERIES = 300
HISTORY = 20
K = 10


# ---- the version ------------------------------------------------------------------------------------------


def write_version(n_items: int, artifact_dir: Path, seed: int = 0) -> tuple[Path, Path, dict[str, Any]]:
    """A version of `n_items` clustered random item vectors with its index, and a copy without the index."""
    import numpy as np
    import torch

    from app.artifacts import save_version
    from app.index import service_index_config
    from app.ml.config import ModelConfig, TrainConfig
    from app.ml.model import RecModel
    from app.ml.result import FitResult
    from app.settings import Settings

    cfg = ModelConfig()  # the served model's shape: d = 64, 32 feature slots per item
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    features = torch.from_numpy(rng.integers(1, cfg.feature_buckets, size=(n_items, cfg.max_features)))
    model = RecModel(n_items, len(TYPES), features, cfg)
    n_clusters = max(16, int(np.sqrt(n_items)))
    centers = rng.normal(size=(n_clusters, cfg.d + 1)).astype(np.float32)  # [C, d+1]
    assign = rng.integers(n_clusters, size=n_items)  # [N]
    vectors = centers[assign] + 0.5 * rng.normal(size=(n_items, cfg.d + 1)).astype(np.float32)  # [N, d+1]
    with torch.no_grad():
        for tower in model.towers:
            tower.items.id_table.weight.copy_(torch.from_numpy(0.2 * vectors))
            tower.items.feature_table.weight.zero_()  # the served vectors are exactly the id rows
    result = FitResult(
        model=model.eval(),
        config=TrainConfig(model=cfg, device="cpu"),
        item_ids=[f"i{j}" for j in range(n_items)],
        type_names=list(TYPES),
        metrics={},
        data_stats={"items": n_items, "synthetic": True},
        timings={},
    )
    started = time.perf_counter()
    path = save_version(
        result, artifact_dir, f"v{n_items}", index_config=service_index_config(Settings(_env_file=None))
    )
    save_s = time.perf_counter() - started
    manifest = json.loads((path / "manifest.json").read_text())
    old = artifact_dir / f"v{n_items}-noindex"  # the same files, hard-linked; the manifest names no index
    old.mkdir()
    for name in ("model.pt", "item_vectors.npy", "item_ids.json"):
        os.link(path / name, old / name)
    (old / "manifest.json").write_text(
        json.dumps({**{k: v for k, v in manifest.items() if k != "index"}, "version": old.name}),
        encoding="utf-8",
    )
    sizes = {p.name: p.stat().st_size for p in path.iterdir()}
    return path, old, {"save_s": save_s, "index": manifest["index"], "file_bytes": sizes}


# ---- one serving process ----------------------------------------------------------------------------------


def memory() -> dict[str, float]:
    """This process's resident memory in MB: RSS (anonymous, file-backed) and PSS."""
    out: dict[str, float] = {}
    with open("/proc/self/status", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                out[key] = int(value.split()[0]) / 1024
    with open("/proc/self/smaps_rollup", encoding="utf-8") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Pss":
                out["Pss"] = int(value.split()[0]) / 1024
    return out


def child(path: Path, mode: str, hold: bool) -> None:
    """Load the version as the registry does, answer queries, report (and with `hold`, wait to be measured)."""
    started = time.perf_counter()
    import numpy as np
    import torch

    from app.artifacts import load_version
    from app.index import service_index_config
    from app.serving.model import ServingModel
    from app.serving.registry import ModelRegistry
    from app.settings import Settings

    torch.set_num_threads(1)
    imported = time.perf_counter()
    registry = ModelRegistry(None, path.parent, service_index_config(Settings(_env_file=None)))  # type: ignore[arg-type]
    loaded = load_version(path)
    read = time.perf_counter()
    index = registry._open_index(loaded)
    opened = time.perf_counter()
    model = ServingModel.create(loaded, index)
    ready = time.perf_counter()
    expected = "mapped" if mode == "mapped" else "rebuilt"
    assert registry.index_sources[expected] == 1, registry.index_sources
    rng = np.random.default_rng(7)
    histories = [rng.integers(model.n_rows, size=HISTORY) for _ in range(QUERIES)]
    digest = hashlib.sha256()
    passes: list[list[float]] = [[], []]
    for query_s in passes:  # the first pass also faults the mapped pages it reads in; the second is warm
        for rows in histories:
            history = [(model.item_ids[r], TYPES[r % len(TYPES)]) for r in rows.tolist()]
            t = time.perf_counter()
            q = loaded.query_vector(history)
            _, found = model.search(q[None, :], K, exclude=np.unique(rows), category=None)
            query_s.append(time.perf_counter() - t)
            if query_s is passes[0]:
                digest.update(found.tobytes())
    report = {
        "mode": mode,
        "kind": index.kind,
        "mapped": index.mapped,
        "import_s": imported - started,
        "load_version_s": read - imported,
        "index_s": opened - read,
        "create_s": ready - opened,
        "ready_s": ready - imported,
        "first_query_p50_ms": float(np.median(passes[0]) * 1000),
        "query_p50_ms": float(np.median(passes[1]) * 1000),
        "topk_sha": digest.hexdigest()[:16],
        "memory": memory(),
    }
    print(json.dumps(report), flush=True)
    if hold:
        sys.stdin.readline()  # the parent asks once every process is loaded
        print(json.dumps({"memory_together": memory()}), flush=True)
        sys.stdin.readline()


def spawn(path: Path, mode: str, hold: bool) -> subprocess.Popen[str]:
    cmd = [sys.executable, __file__, "--child", str(path), mode] + (["--hold"] if hold else [])
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)


def read_json(proc: subprocess.Popen[str], timeout_s: float = 900) -> dict[str, Any]:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise RuntimeError(f"child {proc.args} ended (rc {proc.wait()}) without a report")
        if line.startswith("{"):
            return dict(json.loads(line))
    raise TimeoutError(f"child {proc.args}: no report in {timeout_s} s")


def one(path: Path, mode: str) -> dict[str, Any]:
    proc = spawn(path, mode, hold=False)
    report = read_json(proc)
    proc.wait(timeout=120)
    return report


def two(path: Path, mode: str) -> list[dict[str, Any]]:
    """Two processes loading the version at once; their memory measured while both are alive."""
    procs = [spawn(path, mode, hold=True) for _ in range(2)]
    reports = [read_json(p) for p in procs]
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("measure\n")
        p.stdin.flush()
    for report, p in zip(reports, procs, strict=True):
        report.update(read_json(p))
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("exit\n")
        p.stdin.flush()
        p.wait(timeout=120)
    return reports


# ---- the run ----------------------------------------------------------------------------------------------


def bench_size(n: int, workdir: Path, repeats: int) -> dict[str, Any]:
    artifact_dir = workdir / f"n{n}"
    path, old, written = write_version(n, artifact_dir)
    runs: dict[str, list[dict[str, Any]]] = {"rebuilt": [], "mapped": []}
    for _ in range(repeats):  # interleaved, so both modes see the same machine load
        runs["rebuilt"].append(one(old, "rebuilt"))
        runs["mapped"].append(one(path, "mapped"))
    pairs = {"rebuilt": two(old, "rebuilt"), "mapped": two(path, "mapped")}
    shas = {r["topk_sha"] for rs in runs.values() for r in rs} | {
        r["topk_sha"] for rs in pairs.values() for r in rs
    }
    shutil.rmtree(artifact_dir)
    return {"items": n, **written, "runs": runs, "pairs": pairs, "same_topk": len(shas) == 1}


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def render(results: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{meta['command']}`  ",
        f"Date {meta['date']}, {meta['machine']}, faiss {meta['faiss']}, {meta['repeats']} fresh process(es) "
        "per mode and size (median shown), page cache warm. Synthetic versions of the default model shape "
        "(d = 64: [N, 65] float32 vectors, 32 feature slots per item) written by `save_version` with the "
        "service's index settings (flat up to 50k items, IVF above); `rebuilt` is a hard-linked copy whose "
        "manifest names no index (a version from before issue 14: the registry builds the index), `mapped` the "
        "version itself (the registry memory-maps the trainer's index file). Ready = `load_version` + index + "
        "`ServingModel.create`, the registry's own path, imports excluded.",
        "",
        "| items | index | files (MB) | mode | ready (s) | load_version (s) | index (s) | ratio "
        "| query p50 first / warm (ms) | RSS (MB) | anon / file (MB) | 2 processes: RSS each (MB) "
        "| 2 processes: PSS sum (MB) |",
        "|---:|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    notes = []
    for res in results:
        files_mb = sum(res["file_bytes"].values()) / 2**20
        ready = {m: median([r["ready_s"] for r in res["runs"][m]]) for m in ("rebuilt", "mapped")}
        for mode in ("rebuilt", "mapped"):
            rs = res["runs"][mode]
            mem = rs[len(rs) // 2]["memory"]
            pair = res["pairs"][mode]
            rss_each = " / ".join(f"{p['memory_together']['VmRSS']:.0f}" for p in pair)
            pss_sum = sum(p["memory_together"]["Pss"] for p in pair)
            ratio = "1.00" if mode == "rebuilt" else f"**{ready['rebuilt'] / ready['mapped']:.1f}x faster**"
            lines.append(
                f"| {res['items']:,} | {res['index']['kind']} | {files_mb:.0f} | {mode} | {ready[mode]:.2f} | "
                f"{median([r['load_version_s'] for r in rs]):.2f} | {median([r['index_s'] for r in rs]):.3f} | "
                f"{ratio} | "
                f"{median([r['first_query_p50_ms'] for r in rs]):.2f} / {median([r['query_p50_ms'] for r in rs]):.2f} | "
                f"{mem['VmRSS']:.0f} | "
                f"{mem['RssAnon']:.0f} / {mem['RssFile']:.0f} | {rss_each} | {pss_sum:.0f} |"
            )
        together = {
            m: " / ".join(f"{p['ready_s']:.1f}" for p in res["pairs"][m]) for m in ("rebuilt", "mapped")
        }
        notes.append(
            f"- {res['items']:,} items: the trainer's `save_version` took {res['save_s']:.1f} s, of which "
            f"{res['index']['build_s']:.1f} s building the {res['index']['kind']} index once (each API process "
            f"used to pay it); same top-10 in every process of both modes: **{res['same_topk']}**; 2 processes "
            f"loading at once were ready in {together['rebuilt']} s (rebuilt) and {together['mapped']} s (mapped)."
        )
    load = meta.get("loadavg")
    busy = (
        f"- Load average {load[0]:.1f} before and {load[1]:.1f} after the run on {meta['machine']}: "
        if load
        else "- "
    )
    lines += [
        "",
        *notes,
        busy
        + "the machine is shared, so absolute seconds move from run to run; compare the modes within a run "
        "(interleaved process by process). `load_version` of a mapped version is mostly checksum reading (sha256 "
        "of the weights and vectors; the index file is hashed in `index (s)`) and the item-id map; the rebuilt "
        "column adds the index build, which uses every CPU of the process.",
        "- RSS counts a shared page in full in every process; PSS charges it 1/n to each of the n processes "
        "mapping it, so the PSS sum of the two processes is what they cost the host together. Mapped pages "
        "(index, vectors, weights) are file-backed and read-only: one copy in the page cache for every process "
        "on the host, and the kernel can drop and re-read them under pressure instead of swapping.",
        "- What is still private per process (the anonymous part of `mapped`): the item-id list and its "
        "id -> row dict (Python objects, ~0.1 KB an item), the user tower's numpy copy, and the interpreter "
        "with torch and faiss.",
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per mode and size")
    parser.add_argument("--out", type=Path, default=Path("var/bench/load.json"))
    parser.add_argument(
        "--update-docs", action="store_true", help=f"rewrite '{SECTION}' in docs/BENCHMARKS.md"
    )
    parser.add_argument("--from-json", type=Path, help="render a saved run's --out file again (no benchmark)")
    parser.add_argument("--child", nargs=2, metavar=("PATH", "MODE"), help=argparse.SUPPRESS)
    parser.add_argument("--hold", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(Path(args.child[0]), args.child[1], args.hold)
        return

    if args.from_json:
        saved = json.loads(args.from_json.read_text(encoding="utf-8"))
        section = render(saved["results"], saved["meta"])
        print(section)
        if args.update_docs:
            update_section(ROOT / "docs" / "BENCHMARKS.md", SECTION, section)
        return

    import faiss

    from app.index import IndexConfig

    options = [f"--sizes {' '.join(map(str, args.sizes))}"]
    if args.repeats != parser.get_default("repeats"):
        options.append(f"--repeats {args.repeats}")
    if args.update_docs:
        options.append("--update-docs")
    meta = {
        "command": " ".join(["PYTHONPATH=. .venv/bin/python scripts/bench_load.py", *options]),
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "faiss": faiss.__version__,
        "repeats": args.repeats,
        "default_index_config": asdict(IndexConfig()),
        "loadavg": [os.getloadavg()[0]],
    }
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-load-") as tmp:
        for n in args.sizes:
            started = time.perf_counter()
            results.append(bench_size(n, Path(tmp), args.repeats))
            print(f"{n:,} items done in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    meta["loadavg"].append(os.getloadavg()[0])
    section = render(results, meta)
    print(section)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": results}, indent=2), encoding="utf-8")
    if args.update_docs:
        update_section(ROOT / "docs" / "BENCHMARKS.md", SECTION, section)


if __name__ == "__main__":
    main()
