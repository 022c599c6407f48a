"""`reco evaluate`: the EVALUATION.md protocol for the model and the baselines, by the same ranking code."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from app.ml.baselines import EASE, EASE_MAX_ITEMS, ItemKNN, MostPop, interaction_matrix
from app.ml.config import TrainConfig
from app.ml.data import InteractionLog, Split, leave_one_out_split
from app.ml.metrics import evaluate_ranking
from app.ml.scoring import evaluate_model
from app.ml.train import ProgressInfo, fit_split
from app.records import ItemRecord

METRIC_COLUMNS = ("HR@10", "NDCG@10", "HR@20", "NDCG@20", "MRR")
EASE_LAMBDAS = (10.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
KNN_KS = (20, 50, 100, 200)
PROTOCOL = "chronological leave-one-out, full ranking, seen items removed (EVALUATION.md)"


def _histories(split: Split, drop_last: int) -> list[np.ndarray]:
    return [items for items, _ in split.sequences(drop_last)]


def _tuned_baseline(
    split: Split,
    build: Callable[[np.ndarray, Any], MostPop | ItemKNN | EASE],
    grid: Sequence[Any],
) -> tuple[dict[str, float], dict[str, float], Any, float]:
    """Tune one hyper-parameter on validation, then score the test item with a fit on train + valid."""
    t0 = time.perf_counter()
    train = _histories(split, 2)
    x_train = interaction_matrix(train, split.n_items)
    best_valid: dict[str, float] = {}
    best_param = grid[0]
    for param in grid:
        model = build(x_train, param)
        valid = evaluate_ranking(model.scores, split.valid_items, train)
        if not best_valid or valid["NDCG@10"] > best_valid["NDCG@10"]:
            best_valid, best_param = valid, param
    full = _histories(split, 1)
    test = evaluate_ranking(
        build(interaction_matrix(full, split.n_items), best_param).scores, split.test_items, full
    )
    return test, best_valid, best_param, time.perf_counter() - t0


def baseline_rows(split: Split) -> list[dict[str, Any]]:
    """MostPop, ItemKNN (k tuned) and EASE (lambda tuned) on the split, test metrics with validation."""
    rows = []
    specs: list[tuple[str, Callable[[np.ndarray, Any], MostPop | ItemKNN | EASE], Sequence[Any], str]] = [
        ("MostPop", lambda x, _: MostPop(x), (None,), ""),
        ("ItemKNN", lambda x, k: ItemKNN(x, k=k), KNN_KS, "k"),
    ]
    if split.n_items <= EASE_MAX_ITEMS:
        specs.append(("EASE", lambda x, lam: EASE(x, lam=lam), EASE_LAMBDAS, "lambda"))
    for name, build, grid, param_name in specs:
        test, valid, param, seconds = _tuned_baseline(split, build, grid)
        rows.append(
            {
                "method": name,
                **{k: test[k] for k in (*METRIC_COLUMNS, "users")},
                "valid_NDCG@10": valid["NDCG@10"],
                "params": {param_name: param} if param_name else {},
                "seconds": seconds,
            }
        )
    return rows


def model_rows(
    split: Split,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    seeds: Sequence[int],
    progress: Callable[[ProgressInfo], None] | None = None,
) -> list[dict[str, Any]]:
    """One row per seed: validate on the validation item, refit on train + valid, test once."""
    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        result = fit_split(split, items, replace(config, seed=seed), holdout=1, progress=progress)
        test = evaluate_model(
            result.model,
            split.sequences(1),
            split.test_items,
            torch.device("cpu"),
            users=split.user_rows(config.model.user_buckets),
        )
        rows.append(
            {
                "method": "Reco (SASRec two-tower)",
                "seed": seed,
                **{k: test[k] for k in (*METRIC_COLUMNS, "users")},
                "valid_NDCG@10": result.metrics.get("valid_NDCG@10", 0.0),
                "best_epoch": result.metrics["best_epoch"],
                "sequences_per_s": result.metrics["sequences_per_s"],
                "positions_per_s": result.metrics.get("positions_per_s", 0.0),
                "stopped_by": result.metrics.get("stopped_by"),
                "seconds": time.perf_counter() - t0,
            }
        )
    return rows


def evaluate_report(
    log: InteractionLog,
    items: Mapping[str, ItemRecord],
    config: TrainConfig,
    seeds: Sequence[int] = (0, 1, 2),
    baselines: bool = True,
    progress: Callable[[ProgressInfo], None] | None = None,
) -> dict[str, Any]:
    """The evaluation table as JSON-able data: baselines, the model's mean over seeds, and each seed."""
    if len(log) == 0:
        raise ValueError("evaluate: the interaction log is empty")
    if not seeds:
        raise ValueError("evaluate: give at least one seed")
    split = leave_one_out_split(log, extra_items=items.keys())
    if split.n_users == 0:
        raise ValueError(f"evaluate: no user has {5} or more distinct items; nothing to evaluate")
    t0 = time.perf_counter()
    rows = baseline_rows(split) if baselines else []
    per_seed = model_rows(split, items, config, seeds, progress)
    mean: dict[str, Any] = {"method": f"Reco (SASRec two-tower), mean of {len(per_seed)} seed(s)"}
    for key in (*METRIC_COLUMNS, "valid_NDCG@10", "seconds"):
        values = np.array([r[key] for r in per_seed], dtype=np.float64)
        mean[key] = float(values.mean())
        if key in METRIC_COLUMNS:
            mean[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    mean["users"] = per_seed[0]["users"]
    rows.append(mean)
    return {
        "protocol": PROTOCOL,
        "data": {**split.stats(), "raw_interactions": len(log)},
        "rows": rows,
        "model_seeds": per_seed,
        "config": config.to_dict(),
        "seconds": time.perf_counter() - t0,
    }


def format_table(report: Mapping[str, Any]) -> str:
    """The report as a Markdown table (test split, full ranking)."""
    data = report["data"]
    lines = [
        f"{report['protocol']}: {data['users']} users, {data['items']} items, {data['interactions']} interactions",
        "",
        "| method | " + " | ".join(METRIC_COLUMNS) + " | users | valid NDCG@10 | seconds |",
        "|---" * (len(METRIC_COLUMNS) + 4) + "|",
    ]
    for row in report["rows"]:
        cells = []
        for key in METRIC_COLUMNS:
            std = row.get(f"{key}_std")
            cells.append(f"{row[key]:.4f}" + (f" ± {std:.4f}" if std else ""))
        params = row.get("params")
        name = row["method"] + (
            " (" + ", ".join(f"{k}={v}" for k, v in params.items()) + ")" if params else ""
        )
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {row['users']} | {row['valid_NDCG@10']:.4f} | {row['seconds']:.1f} |"
        )
    return "\n".join(lines)
