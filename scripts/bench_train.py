"""Training benchmark: raw MovieLens files -> model at the quality bar, on this machine's CPU (or GPU).

Measures the time from the raw files to a test-ready model (read, build the log, split, train with early
stopping on validation, refit on train + validation), training throughput in sequences/s, the full-ranking
table of EVALUATION.md beside MostPop/ItemKNN/EASE, the same table on the synthetic demo shop, and the
serving latency of one query vector. Writes JSON, prints the tables and updates its section of
docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench_train.py --seeds 0 1 2 --update-docs
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdocs import update_section  # noqa: E402  (scripts/ is on sys.path when a script runs)

from app.artifacts import load_version, save_version  # noqa: E402
from app.datasets.demo import DemoConfig, generate_demo  # noqa: E402
from app.datasets.movielens import read_movielens  # noqa: E402
from app.ml.config import TrainConfig  # noqa: E402
from app.ml.data import InteractionLog  # noqa: E402
from app.ml.evaluate import evaluate_report, format_table  # noqa: E402
from app.ml.train import ProgressInfo, fit  # noqa: E402

SECTION = "## Training (issue 3)"
BAR = {"NDCG@10": 0.106, "HR@10": 0.197}


def _progress(info: ProgressInfo) -> None:
    valid = f" valid NDCG@10={info.valid['NDCG@10']:.4f}" if info.valid else ""
    print(
        f"  [{info.stage}] epoch {info.epoch}/{info.epochs} loss={info.loss:.4f}{valid} "
        f"{info.elapsed_s:.0f}s {info.sequences_per_s:.0f} seq/s",
        flush=True,
    )


def movielens(path: Path, config: TrainConfig, seeds: list[int]) -> dict[str, Any]:
    """Read, build and evaluate on MovieLens; time from the raw files to each seed's test model."""
    t0 = time.perf_counter()
    items, events = read_movielens(path)
    log = InteractionLog.from_records(events)
    catalog = {item.item_id: item for item in items}
    load_s = time.perf_counter() - t0
    report = evaluate_report(log, catalog, config, seeds=seeds, progress=_progress)
    model_row = report["rows"][-1]
    per_seed = report["model_seeds"]
    return {
        "report": report,
        "load_s": load_s,
        "raw_to_model_s": [load_s + r["seconds"] for r in per_seed],
        "sequences_per_s": float(np.mean([r["sequences_per_s"] for r in per_seed])),
        "at_bar": all(model_row[k] >= v for k, v in BAR.items()),
    }


def demo(config: TrainConfig, seeds: list[int]) -> dict[str, Any]:
    """The same table on the synthetic demo shop (default DemoConfig)."""
    items, events = generate_demo(DemoConfig())
    log = InteractionLog.from_records(events)
    return {
        "report": evaluate_report(log, {i.item_id: i for i in items}, config, seeds=seeds, progress=_progress)
    }


def serving_latency(config: TrainConfig) -> dict[str, float]:
    """Median single-query latency of LoadedModel.query_vector for L=50, d=64 on one thread."""
    items, events = generate_demo(DemoConfig(n_users=300, n_items=500))
    log = InteractionLog.from_records(events)
    small = replace(config, model=replace(config.model, d=64, max_len=50), epochs=1, refit_on_all=False)
    result = fit(log, {i.item_id: i for i in items}, small)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            loaded = load_version(save_version(result, Path(tmp)))
            history = [(loaded.item_ids[k % len(loaded.item_ids)], "view") for k in range(50)]
            for _ in range(20):
                loaded.query_vector(history)
            times = []
            for _ in range(300):
                start = time.perf_counter()
                loaded.query_vector(history)
                times.append(time.perf_counter() - start)
            batch = [history] * 64
            start = time.perf_counter()
            loaded.query_vectors(batch)
            batch_ms = (time.perf_counter() - start) * 1000
    finally:
        torch.set_num_threads(threads)
    return {
        "query_vector_p50_ms": float(np.percentile(times, 50) * 1000),
        "query_vector_p99_ms": float(np.percentile(times, 99) * 1000),
        "query_vectors_64_ms": batch_ms,
    }


def markdown(results: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section."""
    ml = results["movielens"]
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Machine: {results['machine']}; torch {results['torch']}, {results['threads']} thread(s); "
        f"date {results['date']}. The 2 cores were shared with other jobs during the run: times are upper bounds.",
        "",
        "### ml-100k, test split, full ranking (EVALUATION.md)",
        "",
        format_table(ml["report"]),
        "",
        f"- Raw files -> test model (read + log + split + train with early stopping"
        f"{' + refit on train+valid' if results['config']['refit_on_all'] else ''}), "
        f"per seed: {', '.join(f'{s:.0f} s' for s in ml['raw_to_model_s'])} (reading: {ml['load_s']:.1f} s).",
        f"- Training throughput: {ml['sequences_per_s']:.0f} sequences/s (windows of up to L="
        f"{results['config']['model']['max_len']} positions, every position trained).",
        f"- Quality bar (NDCG@10 >= {BAR['NDCG@10']}, HR@10 >= {BAR['HR@10']}, mean of seeds): "
        f"{'reached' if ml['at_bar'] else 'NOT reached'}.",
        "- GPU: no GPU was lent to this session; the CUDA path (bf16 autocast) is untested here.",
        "",
    ]
    if "demo" in results:
        lines += ["### Synthetic demo shop (app/datasets/demo.py, default DemoConfig)", ""]
        lines += [format_table(results["demo"]["report"]), ""]
    if "serving" in results:
        s = results["serving"]
        lines += [
            "### Serving query latency (one thread, L=50, d=64)",
            "",
            f"`query_vector`: p50 {s['query_vector_p50_ms']:.2f} ms, p99 {s['query_vector_p99_ms']:.2f} ms; "
            f"`query_vectors` of 64 histories: {s['query_vectors_64_ms']:.1f} ms.",
            "",
        ]
    return "\n".join(lines)


def update_docs(path: Path, section: str) -> None:
    """Replace (or append) this benchmark's section of docs/BENCHMARKS.md."""
    update_section(path, SECTION, section)


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "ml-100k")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--demo-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--members", type=int, default=None, help="ensemble members (default: the config's)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap (default: the config's)")
    parser.add_argument("--no-refit", action="store_true", help="test with the train-only model")
    parser.add_argument("--skip-demo", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "bench_train.json")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    if not args.data.exists():
        sys.exit(f"{args.data}: MovieLens folder not found")
    torch.set_num_threads(args.threads)
    config = TrainConfig(device=args.device, threads=args.threads)
    if args.members is not None:
        config = replace(config, model=replace(config.model, members=args.members))
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    if args.no_refit:
        config = replace(config, refit_on_all=False)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": config.to_dict(),
    }
    print(f"ml-100k ({args.data}), seeds {args.seeds}", flush=True)
    results["movielens"] = movielens(args.data, config, args.seeds)
    print(format_table(results["movielens"]["report"]), flush=True)
    if not args.skip_demo:
        print("demo shop", flush=True)
        results["demo"] = demo(config, args.demo_seeds)
        print(format_table(results["demo"]["report"]), flush=True)
    results["serving"] = serving_latency(config)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    command = ".venv/bin/python scripts/bench_train.py " + " ".join(sys.argv[1:])
    if args.update_docs:
        update_docs(ROOT / "docs" / "BENCHMARKS.md", markdown(results, command.strip()))
        print("updated docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
