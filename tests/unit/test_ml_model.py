"""Known-answer worlds, cold start, the sampled-softmax path and bad input for the model."""

from dataclasses import replace

import numpy as np
import pytest
import torch

from app.ml.config import ModelConfig, TrainConfig
from app.ml.data import InteractionLog, leave_one_out_split
from app.ml.evaluate import evaluate_report, format_table
from app.ml.model import TwoTower
from app.ml.scoring import evaluate_model, user_queries
from app.ml.synthetic import category_world, chain_world
from app.ml.train import fit, fit_split
from app.ml.trainer import Trainer
from app.ml.windows import make_windows
from app.records import ItemRecord

TINY = TrainConfig(
    model=ModelConfig(
        d=32, max_len=16, layers=1, heads=2, dropout=0.1, attn_dropout=0.1, feature_buckets=512
    ),
    epochs=40,
    batch_size=32,
    lr=3e-3,
    warmup_steps=10,
    patience=4,
    device="cpu",
    threads=1,
)


def test_chain_users_next_item_is_recovered() -> None:
    log, items = chain_world(n_items=40, n_users=120, length=12, seed=0)
    split = leave_one_out_split(log, extra_items=items)
    result = fit_split(split, items, TINY, holdout=1)
    test = evaluate_model(result.model, split.sequences(1), split.test_items, torch.device("cpu"))
    assert test["HR@10"] >= 0.9
    assert test["NDCG@10"] >= 0.7
    assert result.metrics["valid_HR@10"] >= 0.9


def test_report_has_baselines_and_model_and_a_table() -> None:
    log, items = chain_world(n_items=30, n_users=80, length=10, seed=1)
    report = evaluate_report(log, items, replace(TINY, epochs=15), seeds=(0, 1))
    methods = [row["method"] for row in report["rows"]]
    assert methods[:3] == ["MostPop", "ItemKNN", "EASE"]
    assert len(report["model_seeds"]) == 2
    model_row = report["rows"][-1]
    assert model_row["HR@10"] == pytest.approx(np.mean([r["HR@10"] for r in report["model_seeds"]]))
    assert model_row["HR@10"] > report["rows"][0]["HR@10"]  # beats MostPop on a chain
    table = format_table(report)
    assert "| EASE (lambda=" in table and "mean of 2 seed(s)" in table


def test_favourite_category_users_get_their_category_and_cold_items_rank_high() -> None:
    log, items, favourite = category_world(n_categories=4, items_per_category=25, n_users=160, seed=0)
    cfg = replace(TINY, model=replace(TINY.model, id_dropout=0.3))
    result = fit(log, items, cfg)
    model = result.model
    split = leave_one_out_split(log, extra_items=items)
    queries = user_queries(model, split.sequences(0), torch.device("cpu"))  # [U, d+1]
    with torch.inference_mode():
        scores = (queries @ model.item_vectors(None).T).numpy()  # [U, N]
    item_cat = np.array([items[i].categories[0] for i in result.item_ids])
    row = {item: r for r, item in enumerate(result.item_ids)}
    cold = np.array([row[i] for i in items if int(i.split("item")[1]) >= 20])
    top_hits, cold_auc = [], []
    for u, user in enumerate(split.user_ids):
        fav = favourite[user]
        top_hits.append(np.mean(item_cat[np.argsort(-scores[u])[:10]] == fav))
        # Cold items (no events at all): own-category ones should outrank the other categories' ones.
        own = scores[u, cold[item_cat[cold] == fav]]
        other = scores[u, cold[item_cat[cold] != fav]]
        cold_auc.append(np.mean(own[:, None] > other[None, :]))
    assert np.mean(top_hits) >= 0.9
    assert np.mean(cold_auc) >= 0.85  # random would be 0.5


def test_sampled_softmax_path_learns_the_chain() -> None:
    log, items = chain_world(n_items=60, n_users=150, length=12, seed=2)
    cfg = replace(TINY, full_softmax_max_items=10, sampled_negatives=16)
    split = leave_one_out_split(log, extra_items=items)
    result = fit_split(split, items, cfg, holdout=1)
    test = evaluate_model(result.model, split.sequences(1), split.test_items, torch.device("cpu"))
    assert test["HR@10"] >= 0.8


def test_training_is_seeded() -> None:
    log, items = chain_world(n_items=20, n_users=30, length=8, seed=3)
    cfg = replace(TINY, epochs=3, refit_on_all=False)
    a = fit(log, items, cfg)
    b = fit(log, items, cfg)
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items(), strict=True):
        assert torch.equal(x, y), name
    assert a.history == b.history


def test_progress_reports_loss_validation_and_eta() -> None:
    log, items = chain_world(n_items=20, n_users=30, length=8, seed=4)
    seen = []
    fit(log, items, replace(TINY, epochs=4, patience=10), progress=seen.append)
    train = [p for p in seen if p.stage == "train"]
    assert [p.epoch for p in train] == [1, 2, 3, 4]
    assert all(p.valid is not None and "NDCG@10" in p.valid for p in train)
    # The ETA covers what is left of the whole fit (the refit included) and reaches 0 at its last epoch.
    assert train[0].eta_s > train[-1].eta_s > 0
    refit = [p for p in seen if p.stage == "refit"]
    assert refit and refit[-1].eta_s == 0.0
    assert any(p.stage == "refit" for p in seen)


def _log(rows: list[tuple[str, str]]) -> InteractionLog:
    return InteractionLog.from_arrays(
        [u for u, _ in rows],
        [i for _, i in rows],
        ["view"] * len(rows),
        np.arange(len(rows), dtype=np.float64),
    )


def test_bad_input_gives_clear_messages() -> None:
    with pytest.raises(ValueError, match="empty"):
        fit(InteractionLog.builder().build(), {}, TINY)
    with pytest.raises(ValueError, match="at least 2 are needed"):
        fit(_log([("u", "only")] * 6), {"only": ItemRecord("only")}, TINY)
    with pytest.raises(ValueError, match="enough distinct items"):
        fit(_log([("u1", "a"), ("u1", "b"), ("u2", "a")]), {}, TINY)


def test_single_user_and_items_without_features_train() -> None:
    log = _log([("u", f"i{k}") for k in range(8)])
    result = fit(log, {}, replace(TINY, epochs=3))
    assert result.item_ids == [f"i{k}" for k in range(8)]
    assert result.metrics["valid_users"] == 1
    assert np.isfinite(result.history[-1]["loss"])


def test_training_softmax_hides_each_positions_prefix_but_never_the_target() -> None:
    log, items = chain_world(n_items=6, n_users=4, length=5, seed=0)
    split = leave_one_out_split(log, extra_items=items)
    windows = make_windows(split.sequences(0), 4)
    model = TwoTower(split.n_items, 1, torch.zeros(split.n_items, 2, dtype=torch.long), TINY.model)
    trainer = Trainer(
        model, TINY, windows, np.ones(2, np.float32), np.ones(split.n_items), torch.device("cpu")
    )
    items_t = torch.tensor([[-1, 0, 1, 2]])  # one window: inputs 0, 1, 2 -> targets 1, 2, 3
    targets = torch.tensor([[-1, 1, 2, 3]])
    mask = targets >= 0
    logits = torch.zeros(3, split.n_items)
    out = trainer._mask_seen(logits, items_t, mask, None, targets[mask])
    hidden = [sorted(torch.nonzero(torch.isinf(row)).flatten().tolist()) for row in out]
    assert hidden == [[0], [0, 1], [0, 1, 2]]
