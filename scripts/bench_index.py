"""Benchmark the item index: build time, single-query latency and recall@10 of flat, IVF and HNSW.

Synthetic clustered item vectors (d = 64 plus a bias column) and user-like queries (the mean of one to three
cluster centres, plus noise, with a constant 1 against the bias). Every search goes through `ItemIndex.search`
one query at a time with one OpenMP thread, as a web process calls it. Three workloads per setting:
  plain     top-10 over the whole catalog;
  seen50    top-10 excluding 50 random rows (a user's seen items);
  cat5      top-10 within a random 5% "category" mask.
Recall@10 is held against exact (flat) answers of the same workload.

    PYTHONPATH=. .venv/bin/python scripts/bench_index.py --sizes 100000 1000000 --update-docs
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import faiss
import numpy as np
from benchdocs import update_section  # scripts/ is on sys.path when a script runs

from app.index import AUTO_APPROXIMATE_KIND, IndexConfig, ItemIndex

K = 10
SECTION = "## Index (issue 4)"
RECALL_FLOOR = 0.95


@dataclass(frozen=True, slots=True)
class Workload:
    """One kind of search: its exclusions or mask, and its exact answers."""

    name: str
    exclude: list[np.ndarray] | None  # per query int64 [50]
    allowed: np.ndarray | None  # bool [N]
    truth: np.ndarray  # int64 [Q, K]


@dataclass(frozen=True, slots=True)
class Row:
    """Figures of one index setting on one catalog (size and cluster noise)."""

    n_items: int
    noise: float
    kind: str
    setting: str
    build_s: float
    workload: str
    recall_at_10: float
    p50_ms: float
    p99_ms: float


def make_data(n: int, dim: int, n_queries: int, seed: int, noise: float) -> tuple[np.ndarray, np.ndarray]:
    """Clustered items [N, dim+1] (bias last) and user-like queries [Q, dim+1] (1 last).

    Centres are N(0, 1) per dimension, items add N(0, noise^2): 0.6 keeps clusters apart, 1.2 makes them overlap.
    """
    rng = np.random.default_rng(seed)
    n_clusters = max(50, n // 1000)
    centres = rng.standard_normal((n_clusters, dim), dtype=np.float32)  # [C, d]
    assign = rng.integers(0, n_clusters, n)  # [N]
    items = np.empty((n, dim + 1), dtype=np.float32)  # [N, d+1]
    for start in range(0, n, 200_000):  # chunks keep the float64 temporaries small
        stop = min(n, start + 200_000)
        jitter = rng.standard_normal((stop - start, dim), dtype=np.float32)  # [B, d]
        items[start:stop, :dim] = centres[assign[start:stop]] + noise * jitter
    items[:, dim] = 0.3 * rng.standard_normal(n, dtype=np.float32)  # item bias
    queries = np.empty((n_queries, dim + 1), dtype=np.float32)  # [Q, d+1]
    for i in range(n_queries):
        liked = rng.choice(n_clusters, size=rng.integers(1, 4), replace=False)  # [1..3]
        queries[i, :dim] = centres[liked].mean(axis=0) + 0.3 * rng.standard_normal(dim, dtype=np.float32)
    queries[:, dim] = 1.0
    return items, queries


def exact_answers(
    flat: ItemIndex, queries: np.ndarray, exclude: list[np.ndarray] | None, allowed
) -> np.ndarray:
    """Exact top-K rows [Q, K] of a workload, by the flat index (validated against numpy in the unit tests)."""
    if exclude is None:
        return flat.search(queries, K, allowed=allowed)[1]
    return np.vstack(
        [
            flat.search(q[None], K, exclude=ex, allowed=allowed)[1]
            for q, ex in zip(queries, exclude, strict=True)
        ]
    )


def workloads(flat: ItemIndex, queries: np.ndarray, seed: int) -> list[Workload]:
    """The plain, seen50 and cat5 workloads with their exact answers."""
    rng = np.random.default_rng(seed + 1)
    n = flat.ntotal
    seen = [rng.choice(n, 50, replace=False).astype(np.int64) for _ in range(len(queries))]
    category = rng.random(n) < 0.05
    batch = flat.with_search_params(search_threads=faiss.omp_get_max_threads())  # ground truth in batches
    return [
        Workload("plain", None, None, exact_answers(batch, queries, None, None)),
        Workload("seen50", seen, None, exact_answers(batch, queries, seen, None)),
        Workload("cat5", None, category, exact_answers(batch, queries, None, category)),
    ]


def measure(index: ItemIndex, queries: np.ndarray, work: Workload) -> tuple[float, float, float]:
    """Recall@10, p50 and p99 milliseconds of single-query searches over the first len(queries) of `work`."""
    found = np.empty((len(queries), K), dtype=np.int64)
    times = np.empty(len(queries))
    for i in range(len(queries)):
        q = queries[i : i + 1]  # [1, D]
        exclude = work.exclude[i] if work.exclude is not None else None
        start = time.perf_counter()
        _, rows = index.search(q, K, exclude=exclude, allowed=work.allowed)
        times[i] = time.perf_counter() - start
        found[i] = rows[0]
    hits = [
        len(set(f.tolist()) & set(t.tolist())) / K
        for f, t in zip(found, work.truth[: len(queries)], strict=True)
    ]
    return float(np.mean(hits)), float(np.percentile(times, 50) * 1e3), float(np.percentile(times, 99) * 1e3)


def timed_build(items: np.ndarray, config: IndexConfig) -> tuple[ItemIndex, float]:
    """Build an index and the seconds it took."""
    start = time.perf_counter()
    index = ItemIndex.build(items, config)
    return index, time.perf_counter() - start


def sweep(
    n: int,
    noise: float,
    index: ItemIndex,
    build_s: float,
    settings: list[tuple[str, dict[str, int]]],
    queries: np.ndarray,
    works: list[Workload],
) -> list[Row]:
    """Rows for every search setting of one built index on every workload."""
    rows = []
    for label, params in settings:
        view = index.with_search_params(**params)
        for work in works:
            measure(view, queries[:10], work)  # warm caches and code paths
            rec, p50, p99 = measure(view, queries, work)
            rows.append(
                Row(
                    n,
                    noise,
                    index.kind,
                    label,
                    round(build_s, 2),
                    work.name,
                    round(rec, 4),
                    round(p50, 3),
                    round(p99, 3),
                )
            )
            print(
                f"  {index.kind:5s} {label:12s} {work.name:7s} recall {rec:.3f}  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms",
                flush=True,
            )
    return rows


def bench_catalog(n: int, noise: float, args: argparse.Namespace, *, flat_only: bool = False) -> list[Row]:
    """All kinds and settings (or flat only) on a catalog of `n` items with cluster noise `noise`."""
    items, queries = make_data(n, args.dim, args.queries, args.seed, noise)
    print(f"{n} items, noise {noise}, d={args.dim}+1, {args.queries} queries", flush=True)
    flat, flat_s = timed_build(items, IndexConfig(kind="flat"))
    works = workloads(flat, queries, args.seed)
    rows = sweep(n, noise, flat, flat_s, [("exact", {})], queries, works)
    del flat
    if flat_only:
        return rows

    ivf, ivf_s = timed_build(items, IndexConfig(kind="ivf"))
    print(f"  ivf built in {ivf_s:.1f} s (nlist {ivf.nlist})", flush=True)
    ivf_settings = [(f"nprobe={p}", {"nprobe": p}) for p in args.nprobe]
    rows += sweep(n, noise, ivf, ivf_s, ivf_settings, queries, works)
    del ivf

    if n <= args.hnsw_max_items:
        hnsw, hnsw_s = timed_build(items, IndexConfig(kind="hnsw", M=args.hnsw_m))
        print(f"  hnsw built in {hnsw_s:.1f} s (M {args.hnsw_m})", flush=True)
        hnsw_settings = [(f"ef={e}", {"ef_search": e}) for e in args.ef]
        rows += sweep(n, noise, hnsw, hnsw_s, hnsw_settings, queries, works)
        del hnsw
    return rows


def best_settings(rows: list[Row]) -> dict[str, dict[str, object]]:
    """Per (size, approximate kind): the cheapest setting whose recall@10 >= RECALL_FLOOR on every workload."""
    best: dict[str, dict[str, object]] = {}
    keys = sorted({(r.n_items, r.noise, r.kind, r.setting) for r in rows if r.kind != "flat"})
    for n, noise, kind, setting in keys:
        group = [r for r in rows if (r.n_items, r.noise, r.kind, r.setting) == (n, noise, kind, setting)]
        if min(r.recall_at_10 for r in group) < RECALL_FLOOR:
            continue
        plain = next(r for r in group if r.workload == "plain")
        name = f"{n}/noise {noise}/{kind}"
        if name not in best or plain.p50_ms < best[name]["p50_ms"]:  # type: ignore[operator]
            best[name] = {
                "setting": setting,
                "p50_ms": plain.p50_ms,
                "p99_ms": plain.p99_ms,
                "build_s": plain.build_s,
            }
    return best


def markdown(
    rows: list[Row], best: dict[str, dict[str, object]], command: str, meta: dict[str, object]
) -> str:
    """The BENCHMARKS.md section: command, table and the reading of it."""
    lines = [
        SECTION,
        "",
        f"Command: `{command}` (JSON in `{meta['json']}`).",
        f"Machine: {meta['machine']}; FAISS {meta['faiss']}; single queries through `ItemIndex.search`, one OpenMP",
        "thread per search; builds use every CPU. Synthetic clustered items (d = 64 + bias column, one cluster per",
        "1,000 items; centres N(0, 1) per dimension, items N(0, noise^2) around them: noise 0.6 keeps clusters apart,",
        "1.2 makes them overlap), user-like queries (mean of 1-3 cluster centres plus noise). Workloads: `plain`",
        "top-10; `seen50` excluding 50 rows; `cat5` within a random 5% category mask. Recall@10 against exact",
        "answers of the same workload.",
        "",
        "| items | noise | kind | setting | build s | workload | recall@10 | p50 ms | p99 ms |",
        "|---:|---:|---|---|---:|---|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.n_items:,} | {r.noise} | {r.kind} | {r.setting} | {r.build_s:.1f} | {r.workload} | {r.recall_at_10:.3f} "
            f"| {r.p50_ms:.3f} | {r.p99_ms:.3f} |"
        )
    lines += ["", f"Cheapest setting with recall@10 >= {RECALL_FLOOR} on all three workloads:", ""]
    for name, b in sorted(best.items()):
        lines.append(
            f"- {name}: {b['setting']}, p50 {b['p50_ms']} ms, p99 {b['p99_ms']} ms, build {b['build_s']} s"
        )
    if not best:
        lines.append("- none")
    lines += ["", "Highest recall@10 each approximate kind reached (worst of the three workloads):", ""]
    for n, noise, kind in sorted({(r.n_items, r.noise, r.kind) for r in rows if r.kind != "flat"}):
        group = [r for r in rows if (r.n_items, r.noise, r.kind) == (n, noise, kind)]
        worst = {
            st: min(r.recall_at_10 for r in group if r.setting == st) for st in {r.setting for r in group}
        }
        top = max(worst, key=lambda st: (worst[st], -_plain(group, st).p50_ms))
        plain = _plain(group, top)
        lines.append(
            f"- {n:,} items, noise {noise}, {kind}: {worst[top]:.3f} at {top} (plain p50 {plain.p50_ms} ms), build {plain.build_s} s"
        )
    flat_p50 = {r.n_items: r.p50_ms for r in rows if r.kind == "flat" and r.workload == "plain"}  # any noise
    at_limit = flat_p50.get(IndexConfig().exact_max_items)
    config = IndexConfig()
    lines += [
        "",
        f'`IndexConfig(kind="auto")` builds flat (exact) up to `exact_max_items` = {config.exact_max_items:,} '
        f"items, **{AUTO_APPROXIMATE_KIND}** above (nlist ~ sqrt(N), nprobe {config.nprobe}; HNSW settings "
        f"M {config.M}, efSearch {config.ef_search}). Flat plain p50 here: "
        + ", ".join(f"{n:,} items {ms} ms" for n, ms in sorted(flat_p50.items()))
        + ".",
        "",
        "Reading (of the run this section was written from): IVF clears the recall floor on every workload at",
        "a fraction of a millisecond and builds in seconds; HNSW over inner product does not clear it even at",
        "efSearch 128, builds an order of magnitude slower, and loses more recall under the category filter, where",
        "its graph walk visits nodes it may not return (searches it leaves short of k are rescanned exactly, hence",
        "its p99 spikes). HNSW does well when a query sits inside one cluster (issue 4 quotes 0.998 at 100k); user",
        "vectors that mix several interests are the case a recommender serves. Flat stays exact up to",
        f"`exact_max_items` for a p50 of {at_limit} ms at that size.",
        "",
    ]
    return "\n".join(lines) + "\n"


def _plain(group: list[Row], setting: str) -> Row:
    """The plain-workload row of one setting."""
    return next(r for r in group if r.setting == setting and r.workload == "plain")


def update_docs(path: Path, section: str) -> None:
    """Replace (or append) this benchmark's section of docs/BENCHMARKS.md."""
    update_section(path, SECTION, section)


def main() -> None:
    """Run the benchmark and write JSON, the markdown table and (optionally) docs/BENCHMARKS.md."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32])
    parser.add_argument("--ef", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-max-items", type=int, default=1_000_000, help="skip HNSW above this size")
    parser.add_argument("--noise", type=float, default=0.6, help="cluster noise of the --sizes catalogs")
    parser.add_argument("--overlap-sizes", type=int, nargs="*", default=[100_000])
    parser.add_argument(
        "--overlap-noise", type=float, default=1.2, help="cluster noise of the --overlap-sizes"
    )
    parser.add_argument("--flat-sizes", type=int, nargs="*", default=[200_000], help="flat-only catalogs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("var/bench/index.json"))
    parser.add_argument(
        "--update-docs", action="store_true", help="rewrite the Index section of docs/BENCHMARKS.md"
    )
    args = parser.parse_args()

    started = time.perf_counter()
    rows: list[Row] = []
    for n in args.sizes:
        rows += bench_catalog(n, args.noise, args)
    for n in args.overlap_sizes:
        rows += bench_catalog(n, args.overlap_noise, args)
    for n in args.flat_sizes:
        rows += bench_catalog(n, args.noise, args, flat_only=True)
    best = best_settings(rows)
    meta = {
        "machine": f"{platform.processor() or platform.machine()}, {faiss.omp_get_max_threads()} CPUs",
        "faiss": faiss.__version__,
        "json": str(args.out),
        "total_s": round(time.perf_counter() - started, 1),
        "auto_approximate_kind": AUTO_APPROXIMATE_KIND,
        "default_config": asdict(IndexConfig()),
    }
    options = [
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}".rstrip()
        for k, v in vars(args).items()
        if k not in ("out", "update_docs") and v != parser.get_default(k)
    ]
    if args.update_docs:
        options.append("--update-docs")
    command = " ".join(["PYTHONPATH=. .venv/bin/python scripts/bench_index.py", *options])
    section = markdown(rows, best, command.strip(), meta)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "best": best, "rows": [asdict(r) for r in rows]}
    args.out.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    args.out.with_suffix(".md").write_text(section, encoding="utf-8")
    print(section)
    print(f"total {meta['total_s']} s; wrote {args.out} and {args.out.with_suffix('.md')}")
    if args.update_docs:
        update_docs(Path("docs/BENCHMARKS.md"), section)


if __name__ == "__main__":
    main()
