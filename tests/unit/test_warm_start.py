"""Warm-started (incremental) training: new items are learnt from new events, old weights carry over."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from app.ml.config import ModelConfig, TrainConfig
from app.ml.data import InteractionLog, leave_one_out_split
from app.ml.scoring import user_queries
from app.ml.train import Budget, WarmStart, WarmStartError, fit
from app.records import ItemRecord

CFG = TrainConfig(
    model=ModelConfig(
        d=32, max_len=16, layers=1, heads=2, dropout=0.1, attn_dropout=0.1, feature_buckets=512
    ),
    epochs=30,
    batch_size=32,
    lr=3e-3,
    warmup_steps=10,
    patience=5,
    device="cpu",
    threads=1,
)
N_CAT, OLD, NEW, USERS = 4, 10, 4, 200


def shop(
    seed: int = 0,
) -> tuple[InteractionLog, InteractionLog, dict[str, ItemRecord], dict[str, ItemRecord], float]:
    """Users who each like one category and have viewed all its old items. Phase 2: each category gets NEW
    items (with the category as their feature) that half of its users then view; the other half never touch
    them, so for those the right answer is the new items of their own category."""
    rng = np.random.default_rng(seed)
    old = {
        f"c{c}-i{j}": ItemRecord(f"c{c}-i{j}", categories=(f"c{c}",))
        for c in range(N_CAT)
        for j in range(OLD)
    }
    new = {
        f"c{c}-n{j}": ItemRecord(f"c{c}-n{j}", categories=(f"c{c}",))
        for c in range(N_CAT)
        for j in range(NEW)
    }
    rows1: list[tuple[str, str, float]] = []
    rows2: list[tuple[str, str, float]] = []
    for u in range(USERS):
        c = u % N_CAT
        for step, j in enumerate(rng.permutation(OLD)):  # every old item of their category
            rows1.append((f"u{u}", f"c{c}-i{j}", 1_000_000.0 + u * 100 + step))
        if u < USERS // 2:  # the early adopters: the new items of their category, after every old event
            for step, j in enumerate(rng.permutation(NEW)):
                rows2.append((f"u{u}", f"c{c}-n{j}", 2_000_000.0 + u * 100 + step))
    since = max(t for _, _, t in rows1)

    def log(rows: list[tuple[str, str, float]]) -> InteractionLog:
        return InteractionLog.from_arrays(
            [r[0] for r in rows], [r[1] for r in rows], ["view"] * len(rows), np.array([r[2] for r in rows])
        )

    return log(rows1), log(rows1 + rows2), old, {**old, **new}, since


def test_incremental_training_recommends_new_items_to_matching_users() -> None:
    log1, log_all, old, catalog, since = shop()
    first = fit(log1, old, CFG)
    warm = WarmStart(first.model, first.item_ids, first.type_names, since)
    second = fit(log_all, catalog, CFG, warm=warm)

    assert second.metrics["mode"] == "incremental"
    assert second.metrics["warm_start"] == {
        "items_kept": N_CAT * OLD,
        "items_new": N_CAT * NEW,
        "items_dropped": 0,
    }
    assert second.metrics["users_with_new_events"] == USERS // 2
    # The incremental run trained on the fresh windows plus a replay sample, not on everything again.
    assert second.metrics["replayed_users"] == USERS // 2

    # The late majority (no new events) of each category: the new items of *their* category now rank first.
    split = leave_one_out_split(log_all, extra_items=catalog.keys())
    queries = user_queries(second.model, split.sequences(0), torch.device("cpu"))  # [U, D+1]
    table = second.model.item_vectors(None).detach()  # [N, D+1]
    row_of = {item: i for i, item in enumerate(second.item_ids)}
    hits, wrong = 0, 0
    late = [u for u in range(split.n_users) if int(split.user_ids[u][1:]) >= USERS // 2]
    for u in late:
        c = int(split.user_ids[u][1:]) % N_CAT
        scores = (table @ queries[u]).numpy()
        seen = split.sequence(u)[0]
        scores[seen] = -np.inf
        top = [second.item_ids[i] for i in np.argsort(-scores)[:NEW]]
        hits += sum(1 for item in top if item.startswith(f"c{c}-n"))
        wrong += sum(1 for item in top if "-n" in item and not item.startswith(f"c{c}-"))
    assert hits / (len(late) * NEW) > 0.7, hits
    assert wrong == 0
    # Each new item's vector was learnt: it is far from where features alone put it (the cold start).
    new_rows = [row_of[i] for i in catalog if "-n" in i]
    ids = second.model.towers[0].items.id_table.weight[new_rows].detach()
    assert float(ids.norm(dim=1).min()) > 0.0


def test_incremental_run_costs_a_fraction_of_a_full_one() -> None:
    log1, log_all, old, catalog, since = shop(1)
    first = fit(log1, old, CFG)
    full = fit(log_all, catalog, CFG)
    incremental = fit(
        log_all, catalog, CFG, warm=WarmStart(first.model, first.item_ids, first.type_names, since)
    )
    steps = {
        name: sum(1 for h in r.history if h["stage"].startswith("train"))
        for name, r in (("full", full), ("incremental", incremental))
    }
    assert steps["incremental"] <= CFG.incremental_epochs < steps["full"]
    assert incremental.metrics["valid_NDCG@10"] >= 0.9 * full.metrics["valid_NDCG@10"]


def test_another_architecture_refuses_the_warm_start() -> None:
    log1, log_all, old, catalog, since = shop()
    first = fit(log1, old, replace(CFG, epochs=2))
    wider = replace(CFG, model=replace(CFG.model, d=16))
    with pytest.raises(WarmStartError, match="d \\(32 -> 16\\)"):
        fit(log_all, catalog, wider, warm=WarmStart(first.model, first.item_ids, first.type_names, since))


def test_no_new_events_refuses_the_warm_start() -> None:
    log1, _, old, _, since = shop()
    first = fit(log1, old, replace(CFG, epochs=2))
    with pytest.raises(WarmStartError, match="no user has events newer"):
        fit(log1, old, CFG, warm=WarmStart(first.model, first.item_ids, first.type_names, since))


def test_time_budget_stops_the_run_with_the_best_weights() -> None:
    log1, _, old, _, _ = shop()
    budgeted = fit(log1, old, replace(CFG, epochs=10_000, patience=10_000, time_budget_s=3.0))
    assert budgeted.metrics["stopped_by"] == "time_budget"
    assert budgeted.timings["total_s"] < 3.0 + 5.0  # one epoch and one validation past the deadline at most
    assert budgeted.metrics["valid_NDCG@10"] > 0.0  # a usable model came out of it
    assert 0 < sum(1 for h in budgeted.history if h["stage"] == "train") < 10_000


def test_budget_tracks_its_deadline() -> None:
    budget = Budget(None)
    assert budget.deadline is None and not budget.expired() and budget.left() == float("inf")
    spent = Budget(0.0001)
    while not spent.expired():
        pass
    assert spent.hit and spent.left() < 0
