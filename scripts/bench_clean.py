"""Benchmark data cleaning (`app/ml/cleaning.py` `clean_log`) on a synthetic log of millions of events.

The log: uniform users, Zipf-distributed items, six event types of which one has weight 0, timestamps over
90 days in insertion (time) order as the store returns them, and 50 bots with 5,000 events each in one minute.
Each rule set runs `--repeat` times; the best time is reported. Baseline beside it: one stable argsort of the
user codes (the one sort the bot rule and the user cap need; the timestamps come sorted, so sorting
them is nearly free).

    PYTHONPATH=. .venv/bin/python scripts/bench_clean.py --events 10000000 --update-docs
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
from benchdocs import update_section  # scripts/ is on sys.path when a script runs

from app.ml.cleaning import CleaningRules, clean_log, format_report
from app.ml.data import InteractionLog

SECTION = "## Data cleaning (issue 10)"
T = TypeVar("T")
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rating": 3.0, "impression": 0.0}


def synthetic(n: int, n_users: int, n_items: int, seed: int = 0) -> InteractionLog:
    rng = np.random.default_rng(seed)
    users = rng.integers(0, n_users, n)
    items = rng.zipf(1.3, n) % n_items
    types = rng.integers(0, len(WEIGHTS), n)
    ts = 1.7e9 + rng.uniform(0, 90 * 86400, n)
    bots = np.repeat(rng.choice(n_users, 50, replace=False), 5000)[:n]
    users[: bots.size] = bots
    ts[: bots.size] = 1.7e9 + 86400 + rng.uniform(0, 60, bots.size)
    order = np.argsort(ts, kind="stable")  # as read from the store: insertion order, i.e. by time
    return InteractionLog(
        user_codes=users[order],
        item_codes=items[order],
        type_codes=types[order],
        timestamps=ts[order],
        users=[f"u{i}" for i in range(n_users)],
        items=[f"i{i}" for i in range(n_items)],
        types=list(WEIGHTS),
    )


def best_of(repeat: int, fn: Callable[[], T]) -> tuple[float, T]:
    times = []
    for _ in range(max(repeat, 1)):
        started = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - started)
    return min(times), out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=500_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument(
        "--update-docs", action="store_true", help="rewrite the section of docs/BENCHMARKS.md"
    )
    args = parser.parse_args()

    log = synthetic(args.events, args.users, args.items)
    baseline, _ = best_of(args.repeat, lambda: np.argsort(log.user_codes, kind="stable"))
    runs = [
        ("off (every rule 0)", CleaningRules()),
        ("types only", CleaningRules(WEIGHTS)),
        (
            "the defaults (types, bots 120/min, repeats 5 s, 10,000 per user)",
            CleaningRules(WEIGHTS, 120, 5.0, 10_000, 0),
        ),
        ("all five (item cap 50,000 too)", CleaningRules(WEIGHTS, 120, 5.0, 10_000, 50_000)),
    ]
    rows = []
    for name, rules in runs:
        seconds, (_, report) = best_of(args.repeat, partial(clean_log, log, rules))
        rows.append((name, seconds, report))
        print(f"{name}: {seconds:.2f} s ({seconds / baseline:.1f}x the baseline); {format_report(report)}")
    print(f"baseline (one stable argsort of {args.events:,} user codes): {baseline:.2f} s")

    if args.update_docs:
        load = os.getloadavg()[0]
        lines = [
            SECTION,
            "",
            f"Command: `PYTHONPATH=. .venv/bin/python scripts/bench_clean.py --events {args.events} "
            f"--update-docs`.",
            f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, numpy {np.__version__}; load average "
            f"{load:.1f} at the end (shared). Log: {args.events:,} events, {args.users:,} users, {args.items:,} "
            "items (Zipf), 6 types (one of weight 0), 50 bots of 5,000 events in a minute; best of "
            f"{args.repeat}.",
            "",
            "| rules | seconds | x baseline | kept |",
            "|---|---:|---:|---:|",
        ]
        for name, seconds, report in rows:
            lines.append(f"| {name} | {seconds:.2f} | {seconds / baseline:.1f} | {report['kept']:,} |")
        lines.append(f"| baseline: one stable argsort of the user codes | {baseline:.2f} | 1.0 | |")
        lines += [
            "",
            "- The cost is a few sorts of the log (time; user for the bot rule and the user cap; (user, "
            "item, type) for repeats; item for the item cap) and gathers; no loop per event. With the "
            "rows in random time order (not as the store returns them) the time sort is no longer nearly "
            "free: 9.9 s for the defaults in a run on the same machine. Reading events from the store "
            "costs far more: 2.4 s per 100,000 from PostgreSQL in the retraining benchmark (about 240 s "
            "for 10M), so cleaning adds a few percent to a job's read stage.",
        ]
        update_section(
            Path(__file__).resolve().parents[1] / "docs" / "BENCHMARKS.md", SECTION, "\n".join(lines)
        )


if __name__ == "__main__":
    main()
