"""Scaling benchmark: training time, memory and quality at 100k, 1M and 10M events (10k, 100k, 1M items).

The data is a vectorised synthetic shop shaped like app/datasets/demo.py (users with one to three favourite
categories, Zipf popularity inside a category, view -> click -> add_to_cart -> purchase funnels, about 30
events a user), generated in numpy because the demo generator builds one Python object per event (10M events
would take GBs before training starts). Each size trains in its own process (`fit`, the serving mode: validate
on each user's latest item, refit continues on all) under a time budget, so peak RSS is that size's alone.
Reported per size: time per epoch, time to a model, peak RSS, validation NDCG@10 beside MostPop (and EASE where
it fits in memory) on the same validation users.

    .venv/bin/python scripts/bench_scale.py --sizes 100000 1000000 10000000 --update-docs
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchdocs import update_section  # noqa: E402  (scripts/ is on sys.path when a script runs)

from app.ml.baselines import EASE, EASE_MAX_ITEMS, interaction_matrix  # noqa: E402
from app.ml.config import TrainConfig  # noqa: E402
from app.ml.data import InteractionLog, leave_one_out_split  # noqa: E402
from app.ml.metrics import evaluate_ranking  # noqa: E402
from app.ml.train import _valid_sample, fit  # noqa: E402
from app.records import ItemRecord  # noqa: E402

SECTION = "## Training at scale (issue 10)"
TYPES = ["view", "click", "add_to_cart", "purchase"]


def synthetic_shop(
    n_events: int, n_items: int, seed: int = 0
) -> tuple[InteractionLog, dict[str, ItemRecord]]:
    """About `n_events` events of n_events / 30 users over `n_items` items in 50 categories (numpy only)."""
    rng = np.random.default_rng(seed)
    n_cat = 50
    n_users = max(n_events // 30, 10)
    counts = 3 + rng.negative_binomial(2, 2 / 29, size=n_users)  # mean ~30
    counts = np.minimum(counts, 400)
    user_of = np.repeat(np.arange(n_users), counts)  # [n]
    n = user_of.shape[0]
    favourites = rng.integers(0, n_cat, size=(n_users, 3))  # [U, 3]
    pick = rng.choice(3, size=n, p=[0.6, 0.25, 0.15])
    category = np.where(
        rng.random(n) < 0.85, favourites[user_of, pick], rng.integers(0, n_cat, size=n)
    )  # [n]
    per_cat = n_items // n_cat
    rank = np.minimum((rng.pareto(1.1, size=n) * per_cat / 20).astype(np.int64), per_cat - 1)  # Zipf-like
    items = category * per_cat + rank  # [n]
    kind = rng.choice(4, size=n, p=[0.7, 0.18, 0.08, 0.04])
    start = rng.uniform(0, 86400 * 60, size=n_users)
    gaps = rng.exponential(600.0, size=n)
    first = np.zeros(n, dtype=bool)
    first[np.concatenate([[0], np.cumsum(counts)[:-1]])] = True
    cum = np.cumsum(gaps)
    base = np.repeat(cum[first] - gaps[first], counts)
    times = 1.7e9 + start[user_of] + (cum - base)
    order = np.argsort(times, kind="stable")
    log = InteractionLog(
        user_codes=user_of[order].astype(np.int64),
        item_codes=items[order].astype(np.int64),
        type_codes=kind[order].astype(np.int64),
        timestamps=times[order],
        users=[f"u{u}" for u in range(n_users)],
        items=[f"i{i}" for i in range(per_cat * n_cat)],
        types=TYPES,
    )
    catalog = {
        f"i{i}": ItemRecord(f"i{i}", categories=(f"c{i // per_cat}",), price=float(1 + i % 97))
        for i in range(per_cat * n_cat)
    }
    return log, catalog


def one_size(n_events: int, n_items: int, budget_s: float, threads: int) -> dict[str, Any]:
    """Generate, train, measure (run in a child process)."""
    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    log, catalog = synthetic_shop(n_events, n_items)
    gen_s = time.perf_counter() - t0
    config = TrainConfig(threads=threads, device="cpu", time_budget_s=budget_s)
    t0 = time.perf_counter()
    result = fit(log, catalog, config)
    fit_s = time.perf_counter() - t0
    fit_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # before the baselines' matrices
    train_epochs = [h for h in result.history if h["stage"].startswith("train")]
    out: dict[str, Any] = {
        "events": len(log),
        "users": len(log.users),
        "items": len(log.items),
        "generate_s": gen_s,
        "fit_s": fit_s,
        "epochs": len(train_epochs),
        "epoch_s": result.timings["train_s"] / max(len(train_epochs), 1),
        "refit_s": result.timings.get("refit_s", 0.0),
        "stopped_by": result.metrics["stopped_by"],
        "positions_per_s": result.metrics["positions_per_s"],
        "valid_NDCG@10": result.metrics["valid_NDCG@10"],
        "valid_HR@10": result.metrics["valid_HR@10"],
        "peak_rss_fit_mb": fit_rss_mb,
        "softmax": "sampled" if len(result.item_ids) > config.full_softmax_max_items else "full",
    }
    # Baselines on the same validation users (each user's latest item, the rest as history).
    split = leave_one_out_split(log, extra_items=catalog.keys(), min_interactions=3)
    sample = _valid_sample(split.n_users, config.valid_max_users, config.seed, split.n_items)
    train = [split.sequence(int(u), 1)[0] for u in range(split.n_users)]
    targets = split.items[split.offsets[1:] - 1][sample]
    popularity = np.bincount(np.concatenate(train), minlength=split.n_items).astype(np.float64)  # [N]
    hist = [train[int(u)] for u in sample]
    out["MostPop_NDCG@10"] = evaluate_ranking(
        lambda u: np.broadcast_to(popularity, (len(u), split.n_items)), targets, hist, 64
    )["NDCG@10"]
    if split.n_items <= EASE_MAX_ITEMS:  # EASE inverts an items x items matrix: only small catalogs
        ease = EASE(interaction_matrix(train, split.n_items), lam=200.0)
        out["EASE_NDCG@10"] = evaluate_ranking(lambda u: ease.scores(sample[u]), targets, hist, 256)[
            "NDCG@10"
        ]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def markdown(results: list[dict[str, Any]], command: str, budget: float) -> str:
    lines = [
        SECTION,
        "",
        f"Command: `{command}`  ",
        f"Date {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, 2 CPU threads, time budget {budget:.0f} s "
        "per size. Synthetic shop (numpy, shaped like the demo shop); serving-mode fit; validation on each "
        "user's latest item (a fixed sample of users past 20k, or fewer for big catalogs).",
        "",
        "| events | users | items | softmax | epoch | epochs run | stopped by | time to model | peak RSS (fit) | positions/s | "
        "valid NDCG@10 | MostPop | EASE |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ease = f"{r['EASE_NDCG@10']:.4f}" if "EASE_NDCG@10" in r else "does not fit"
        lines.append(
            f"| {r['events']:,} | {r['users']:,} | {r['items']:,} | {r['softmax']} | {r['epoch_s']:.1f} s | "
            f"{r['epochs']} | {r['stopped_by']} | {r['fit_s']:.0f} s | {r.get('peak_rss_fit_mb', r['peak_rss_mb']):.0f} MB | "
            f"{r['positions_per_s']:.0f} | {r['valid_NDCG@10']:.4f} | {r['MostPop_NDCG@10']:.4f} | {ease} |"
        )
    if len(results) > 1:
        a, b = results[0], results[-1]
        lines += [
            "",
            f"- From {a['events']:,} to {b['events']:,} events ({b['events'] / a['events']:.0f}x): time per epoch "
            f"x{b['epoch_s'] / a['epoch_s']:.1f}, peak RSS of the fit "
            f"x{b.get('peak_rss_fit_mb', b['peak_rss_mb']) / a.get('peak_rss_fit_mb', a['peak_rss_mb']):.1f}.",
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000, 10_000_000])
    parser.add_argument("--budget", type=float, default=1500.0, help="training time budget per size (s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--child", nargs=2, type=int, help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=ROOT / "var" / "bench" / "bench_scale.json")
    parser.add_argument("--update-docs", action="store_true")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(one_size(args.child[0], args.child[1], args.budget, args.threads), default=float))
        return
    results = []
    for size in args.sizes:
        items = max(size // 10, 100)
        print(f"{size} events, {items} items ...", flush=True)
        proc = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                str(size),
                str(items),
                "--budget",
                str(args.budget),
                "--threads",
                str(args.threads),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            print(proc.stderr[-3000:], flush=True)
            continue
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(row), flush=True)
        results.append(row)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2), encoding="utf-8")
    if args.update_docs and results:
        command = ".venv/bin/python scripts/bench_scale.py " + " ".join(sys.argv[1:])
        update_section(
            ROOT / "docs" / "BENCHMARKS.md", SECTION, markdown(results, command.strip(), args.budget)
        )
        print("updated docs/BENCHMARKS.md")


if __name__ == "__main__":
    main()
