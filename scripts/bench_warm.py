"""Warm-start benchmark: an incremental retrain after the last 10% of events, against a full retrain on all.

For each data set: the events are cut at the 90th percentile of their timestamps. A full model is trained on
the first 90% (its own split, so it never sees a test item that lies after the cut); then the rest "arrives"
and two models are trained on everything: a full retrain from scratch and an incremental one warm-started
from the 90% model (new-event windows plus a replay sample, TrainConfig.incremental_epochs). Both are tested on
the EVALUATION.md split of all the data (full ranking). Goal: incremental NDCG@10 >= 0.98 x full, in <= 1/4
of its time.

    .venv/bin/python scripts/bench_warm.py --update-docs
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench_train import DATA, LOADERS  # noqa: E402  (scripts/ is on sys.path when a script runs)
from benchdocs import update_section  # noqa: E402

from app.ml.config import TrainConfig  # noqa: E402
from app.ml.data import InteractionLog, leave_one_out_split  # noqa: E402
from app.ml.scoring import evaluate_model  # noqa: E402
from app.ml.train import WarmStart, fit_split  # noqa: E402

SECTION = "## Warm-started retraining (issue 10)"


def subset(log: InteractionLog, keep: np.ndarray) -> InteractionLog:
    """The rows of `log` where `keep` is true (vocabularies rebuilt)."""
    return InteractionLog.from_arrays(
        [log.users[u] for u in log.user_codes[keep]],
        [log.items[i] for i in log.item_codes[keep]],
        [log.types[t] for t in log.type_codes[keep]],
        log.timestamps[keep],
    )


def run(name: str, config: TrainConfig, seed: int) -> dict[str, Any]:
    log, catalog = LOADERS[name](DATA / name)
    cut = float(np.quantile(log.timestamps, 0.9))
    early = subset(log, log.timestamps <= cut)
    split_all = leave_one_out_split(log, extra_items=catalog.keys())
    split_early = leave_one_out_split(early, extra_items=catalog.keys())
    test_seqs = split_all.sequences(1)
    cpu = torch.device("cpu")
    out: dict[str, Any] = {"events": len(log), "after_cut": int((log.timestamps > cut).sum())}

    t0 = time.perf_counter()
    base = fit_split(split_early, catalog, config, holdout=1)
    out["base_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    full = fit_split(split_all, catalog, config, holdout=1)
    out["full_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    incremental = fit_split(
        split_all, catalog, config, holdout=1, warm=WarmStart(base.model, base.item_ids, base.type_names, cut)
    )
    out["incremental_s"] = time.perf_counter() - t0
    # The 90% model codes items in its own split's order: map the test sequences onto it.
    base_row = {item: row for row, item in enumerate(base.item_ids)}
    to_base = np.array([base_row[item] for item in split_all.item_ids], dtype=np.int64)  # [N_all]
    for key, result in (("base", base), ("full", full), ("incremental", incremental)):
        if key == "base":
            seqs = [(to_base[items], types) for items, types in test_seqs]
            test = evaluate_model(result.model, seqs, to_base[split_all.test_items], cpu)
        else:
            test = evaluate_model(result.model, test_seqs, split_all.test_items, cpu)
        out[key] = {"NDCG@10": test["NDCG@10"], "HR@10": test["HR@10"], "mode": result.metrics["mode"]}
    out["incremental_info"] = {
        k: incremental.metrics.get(k) for k in ("users_with_new_events", "replayed_users", "warm_start")
    }
    out["quality_ratio"] = out["incremental"]["NDCG@10"] / max(out["full"]["NDCG@10"], 1e-12)
    out["time_ratio"] = out["incremental_s"] / out["full_s"]
    print(name, json.dumps(out, default=float), flush=True)
    return out


def markdown(results: dict[str, Any], command: str) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date {results['date']}, {results['threads']} CPU threads. The last 10% of events (by time) arrive after a "
        "model trained on the first 90%; then a full retrain on all events and an incremental one from the 90% "
        "model. Test: EVALUATION.md split of all events, full ranking. The 90% model is shown for reference "
        "(it has not seen the newest events).",
        "",
        "| data | model | NDCG@10 | HR@10 | seconds |",
        "|---|---|---|---|---|",
    ]
    for name, r in results["datasets"].items():
        for key, secs in (("base", r["base_s"]), ("full", r["full_s"]), ("incremental", r["incremental_s"])):
            label = {
                "base": "trained on the first 90%",
                "full": "full retrain on all",
                "incremental": "incremental",
            }
            lines.append(
                f"| {name} | {label[key]} | {r[key]['NDCG@10']:.4f} | {r[key]['HR@10']:.4f} | {secs:.1f} |"
            )
    lines.append("")
    for name, r in results["datasets"].items():
        q, t = r["quality_ratio"], r["time_ratio"]
        info = r["incremental_info"]
        lines.append(
            f"- {name}: incremental/full NDCG@10 = {q:.3f} (goal >= 0.98: {'met' if q >= 0.98 else 'NOT met'}), "
            f"time {t:.2f} of the full retrain (goal <= 0.25: {'met' if t <= 0.25 else 'NOT met'}); "
            f"{info['users_with_new_events']} users with new events, {info['replayed_users']} replayed; "
            f"items {info['warm_start']}."
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(LOADERS), choices=list(LOADERS))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    defaults = TrainConfig()
    parser.add_argument("--replay-ratio", type=float, default=defaults.replay_ratio)
    parser.add_argument("--incremental-epochs", type=int, default=defaults.incremental_epochs)
    parser.add_argument("--lr-scale", type=float, default=defaults.incremental_lr_scale)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "bench_warm.json")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    config = TrainConfig(
        threads=args.threads,
        seed=args.seed,
        device="cpu",
        replay_ratio=args.replay_ratio,
        incremental_epochs=args.incremental_epochs,
        incremental_lr_scale=args.lr_scale,
    )
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "threads": args.threads,
        "datasets": {},
    }
    for name in args.datasets:
        if (DATA / name).exists():
            results["datasets"][name] = run(name, config, args.seed)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, default=float), encoding="utf-8")
    if args.update_docs:
        command = ".venv/bin/python scripts/bench_warm.py " + " ".join(sys.argv[1:])
        update_section(ROOT / "docs" / "BENCHMARKS.md", SECTION, markdown(results, command.strip()))
        print("updated docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
