"""Training benchmark: raw files -> test model, quality beside MostPop/ItemKNN/EASE, and where an epoch's time goes.

For each data set (ml-100k: RecBole atomic files; amazon-toys: events.csv + items.jsonl, read by the same
readers as `reco import`): the wall time from the raw files to each seed's test model (read, build the log,
split, train with early stopping on validation, refit on train + valid), the full-ranking table of
EVALUATION.md beside MostPop, ItemKNN and EASE on the same split, training throughput in positions/s, and an
epoch profile: the FLOPs one epoch needs (counted by torch.utils.flop_counter over a whole epoch), its time,
and the ratio of achieved FLOP/s to this machine's measured matmul throughput. Writes JSON, prints the tables
and, with --update-docs, its section of docs/BENCHMARKS.md.

    .venv/bin/python scripts/bench_train.py --seeds 0 1 2 --update-docs
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdocs import update_section  # noqa: E402  (scripts/ is on sys.path when a script runs)

from app.datasets.generic import read_events, read_items  # noqa: E402
from app.datasets.movielens import read_movielens  # noqa: E402
from app.ml.config import DEFAULT_EVENT_WEIGHTS, TrainConfig  # noqa: E402
from app.ml.data import InteractionLog, leave_one_out_split  # noqa: E402
from app.ml.evaluate import evaluate_report, format_table  # noqa: E402
from app.ml.train import ProgressInfo, _new_model  # noqa: E402
from app.ml.trainer import Trainer, tune_allocator, type_weights, use_bf16  # noqa: E402
from app.ml.windows import make_windows  # noqa: E402
from app.records import ItemRecord  # noqa: E402

SECTION = "## Training (issue 10)"
BARS = {
    "ml-100k": {"NDCG@10": 0.106, "HR@10": 0.197, "seconds": 90.0},
    "amazon-toys": {"ease_ratio": 1.05, "seconds": 300.0},
}
DATA = ROOT.parent / "shared" / "data"


def _progress(info: ProgressInfo) -> None:
    valid = f" valid NDCG@10={info.valid['NDCG@10']:.4f}" if info.valid else ""
    print(
        f"  [{info.stage}] epoch {info.epoch}/{info.epochs} loss={info.loss:.4f}{valid} "
        f"{info.elapsed_s:.0f}s eta {info.eta_s:.0f}s",
        flush=True,
    )


def load_ml100k(path: Path) -> tuple[InteractionLog, dict[str, ItemRecord]]:
    items, events = read_movielens(path)
    return InteractionLog.from_records(events), {item.item_id: item for item in items}


def load_events_items(folder: Path) -> tuple[InteractionLog, dict[str, ItemRecord]]:
    """events.csv + items.jsonl through the readers of `reco import events|items`."""
    types = frozenset(DEFAULT_EVENT_WEIGHTS)
    builder = InteractionLog.builder()
    for chunk in read_events(
        folder / "events.csv", event_types=types, max_future=timedelta(days=1), chunk_size=50_000
    ):
        records = chunk.records
        builder.extend(
            [r.user_id for r in records],
            [r.item_id for r in records],
            [r.type for r in records],
            np.fromiter((r.timestamp.timestamp() for r in records), dtype=np.float64, count=len(records)),
        )
    catalog: dict[str, ItemRecord] = {}
    for item_chunk in read_items(folder / "items.jsonl", chunk_size=10_000):
        for item_id, fields in item_chunk.items:
            catalog[item_id] = ItemRecord(
                item_id=item_id,
                title=fields.get("title"),
                categories=tuple(fields.get("categories") or ()),
                tags=tuple(fields.get("tags") or ()),
                price=fields.get("price"),
            )
    return builder.build(), catalog


LOADERS = {"ml-100k": load_ml100k, "amazon-toys": load_events_items}


def matmul_peak(threads: int) -> dict[str, float]:
    """This machine's measured GEMM throughput (GFLOP/s): a square fp32 and bf16 product and the skinny
    [6400 x 65] @ [65 x N] shape of the logits."""
    out: dict[str, float] = {}
    torch.set_num_threads(threads)

    def rate(a: torch.Tensor, b: torch.Tensor) -> float:
        for _ in range(2):
            a @ b
        start = time.perf_counter()
        n = 10
        for _ in range(n):
            a @ b
        return 2 * a.shape[0] * a.shape[1] * b.shape[1] * n / (time.perf_counter() - start) / 1e9

    big = torch.randn(2048, 2048)
    out["fp32_2048"] = rate(big, big)
    out["bf16_2048"] = rate(big.bfloat16(), big.bfloat16())
    out["fp32_logits_6400x65x1682"] = rate(torch.randn(6400, 65), torch.randn(65, 1682))
    return out


def epoch_profile(log: InteractionLog, catalog: dict[str, ItemRecord], config: TrainConfig) -> dict[str, Any]:
    """One timed epoch and one FLOP-counted epoch of the validation stage's windows."""
    tune_allocator()
    split = leave_one_out_split(log, extra_items=catalog.keys())
    seqs = split.sequences(2)
    windows = make_windows(seqs, config.model.max_len)
    popularity = np.bincount(np.concatenate([s for s, _ in seqs]), minlength=split.n_items).astype(np.float64)
    model = _new_model(split, catalog, config, popularity)
    trainer = Trainer(
        model, config, windows, type_weights(split.type_names, config), popularity, torch.device("cpu")
    )
    trainer.total_steps = config.epochs * trainer.steps_per_epoch()
    trainer.epoch(1)  # warm-up: allocator, oneDNN kernels
    start = time.perf_counter()
    trainer.epoch(2)
    seconds = time.perf_counter() - start
    counter = FlopCounterMode(display=False)
    with counter:
        trainer.epoch(3)
    flops = counter.get_total_flops()
    positions = int((windows.targets >= 0).sum())
    return {
        "windows": len(windows),
        "positions": positions,
        "mean_window": positions / max(len(windows), 1),
        "items": split.n_items,
        "steps": trainer.steps_per_epoch(),
        "epoch_s": seconds,
        "positions_per_s": positions / seconds,
        "gflop_per_epoch": flops / 1e9,
        "achieved_gflops": flops / 1e9 / seconds,
        "bf16_logits": use_bf16(config, torch.device("cpu")),
    }


def run_dataset(
    name: str,
    config: TrainConfig,
    seeds: list[int],
    profile: bool,
    baselines: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """One data set end to end; `baselines`: rows of an earlier run on the same split (not recomputed)."""
    t0 = time.perf_counter()
    log, catalog = LOADERS[name](DATA / name)
    load_s = time.perf_counter() - t0
    print(f"{name}: {len(log)} events, {len(catalog)} items, read in {load_s:.1f} s", flush=True)
    out: dict[str, Any] = {"load_s": load_s}
    if profile:
        out["profile"] = epoch_profile(log, catalog, config)
        print(f"  epoch profile: {json.dumps(out['profile'])}", flush=True)
    report = evaluate_report(
        log, catalog, config, seeds=seeds, baselines=baselines is None, progress=_progress
    )
    if baselines is not None:
        report["rows"] = baselines + report["rows"]
    per_seed = report["model_seeds"]
    out.update(
        report=report,
        raw_to_model_s=[load_s + r["seconds"] for r in per_seed],
        positions_per_s=float(np.mean([r.get("positions_per_s", 0.0) for r in per_seed])),
    )
    model_row = report["rows"][-1]
    ease = next((r for r in report["rows"] if r["method"].startswith("EASE")), None)
    bar = BARS[name]
    if name == "ml-100k":
        out["at_bar"] = model_row["NDCG@10"] >= bar["NDCG@10"] and model_row["HR@10"] >= bar["HR@10"]
    elif ease is not None:
        out["ease_ratio"] = {k: model_row[k] / ease[k] for k in ("NDCG@10", "HR@10")}
        out["at_bar"] = all(v >= bar["ease_ratio"] for v in out["ease_ratio"].values())
    out["in_time"] = max(out["raw_to_model_s"]) <= bar["seconds"]
    print(format_table(report), flush=True)
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    """The BENCHMARKS.md section."""
    peak = results["peak"]
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Machine: {results['machine']}; torch {results['torch']}, {results['threads']} thread(s); "
        f"date {results['date']}; peak RSS {results['peak_rss_mb']:.0f} MB. Measured GEMM throughput here: "
        f"fp32 {peak['fp32_2048']:.0f} GFLOP/s, bf16 {peak['bf16_2048']:.0f} GFLOP/s (2048^3), the fp32 "
        f"logits shape 6400x65x1682 {peak['fp32_logits_6400x65x1682']:.0f} GFLOP/s.",
        "",
    ]
    for name, res in results["datasets"].items():
        lines += [
            f"### {name}, test split, full ranking (EVALUATION.md)",
            "",
            format_table(res["report"]),
            "",
        ]
        secs = ", ".join(f"{s:.0f} s" for s in res["raw_to_model_s"])
        bar = BARS[name]
        lines.append(
            f"- Raw files -> test model per seed: {secs} (reading {res['load_s']:.1f} s); goal "
            f"< {bar['seconds']:.0f} s: {'met' if res['in_time'] else 'NOT met'}."
        )
        if name == "ml-100k":
            lines.append(
                f"- Quality goal (single model, NDCG@10 >= {bar['NDCG@10']}, HR@10 >= {bar['HR@10']}, mean of "
                f"seeds): {'met' if res['at_bar'] else 'NOT met'}."
            )
        elif "ease_ratio" in res:
            r = res["ease_ratio"]
            lines.append(
                f"- Against EASE: NDCG@10 x{r['NDCG@10']:.2f}, HR@10 x{r['HR@10']:.2f} (goal x{bar['ease_ratio']}): "
                f"{'met' if res['at_bar'] else 'NOT met'}."
            )
        if "profile" in res:
            p = res["profile"]
            lines.append(
                f"- One epoch: {p['windows']} windows, {p['positions']} positions ({p['mean_window']:.1f} per "
                f"window), {p['steps']} steps, {p['epoch_s']:.2f} s = {p['positions_per_s']:.0f} positions/s; "
                f"{p['gflop_per_epoch']:.1f} GFLOP counted (torch.utils.flop_counter, forward + backward) = "
                f"{p['achieved_gflops']:.1f} GFLOP/s achieved, "
                f"{p['achieved_gflops'] / peak['fp32_2048']:.2f} of the fp32 GEMM peak"
                f"{' (the logits product runs in bf16)' if p['bf16_logits'] else ''}."
            )
        lines.append("")
    lines.append("- GPU: no GPU was lent to this session; the CUDA path (bf16 autocast) is untested here.")
    return "\n".join(lines) + "\n"


def main() -> None:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--members", type=int, default=None, help="ensemble members (default: the config's)")
    parser.add_argument("--epochs", type=int, default=None, help="epoch cap (default: the config's)")
    parser.add_argument("--user-buckets", type=int, default=None, help="hashed user-ID rows (0 = off)")
    parser.add_argument("--refit-epochs", type=int, default=None)
    parser.add_argument("--no-profile", action="store_true")
    parser.add_argument(
        "--reuse-baselines",
        type=Path,
        default=None,
        help="take MostPop/ItemKNN/EASE rows from this earlier JSON output (same data) instead of recomputing",
    )
    parser.add_argument(
        "--merge",
        type=Path,
        nargs="*",
        default=[],
        help="earlier JSON outputs whose other data sets join the docs",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "bench_train.json")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(device=args.device, threads=args.threads)
    if args.members is not None:
        config = replace(config, model=replace(config.model, members=args.members))
    if args.user_buckets is not None:
        config = replace(config, model=replace(config.model, user_buckets=args.user_buckets))
    if args.epochs is not None:
        config = replace(config, epochs=args.epochs)
    if args.refit_epochs is not None:
        config = replace(config, refit_epochs=args.refit_epochs)
    results: dict[str, Any] = {
        "machine": f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} CPU threads"
        + (f", {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""),
        "torch": torch.__version__,
        "threads": args.threads,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "config": config.to_dict(),
        "peak": matmul_peak(args.threads),
        "datasets": {},
    }
    for name in args.datasets:
        if not (DATA / name).exists():
            print(f"{DATA / name}: not found, skipped")
            continue
        reused = None
        if args.reuse_baselines is not None:
            earlier = json.loads(args.reuse_baselines.read_text(encoding="utf-8"))["datasets"].get(name)
            if earlier is not None:
                reused = [r for r in earlier["report"]["rows"] if not r["method"].startswith("Reco")]
        results["datasets"][name] = run_dataset(name, config, args.seeds, not args.no_profile, reused)
    for path in args.merge:
        earlier = json.loads(path.read_text(encoding="utf-8"))
        for name, res in earlier["datasets"].items():
            if name not in results["datasets"]:
                res["merged_from"] = f"{path.name} ({earlier['date']})"
                results["datasets"][name] = res
    results["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    print(f"wrote {args.out}")
    command = ".venv/bin/python scripts/bench_train.py " + " ".join(sys.argv[1:])
    if args.update_docs:
        update_section(ROOT / "docs" / "BENCHMARKS.md", SECTION, markdown(results, command.strip()))
        print("updated docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
