"""Explicit negatives in training: no negatives changes nothing (bitwise), not_interested lowers an item's rank,
and the store read keeps negatives apart from positives (not_interested events, unclicked impressions)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import datetime, timedelta

import numpy as np
import pytest
import torch
from sqlalchemy.orm import Session, sessionmaker

from app.db.engine import make_engine, make_sessionmaker, run_transaction
from app.db.tables import Impression
from app.events.service import load_events
from app.ml.cleaning import format_report
from app.ml.config import ModelConfig, TrainConfig
from app.ml.data import IMPRESSION_KIND, InteractionLog, Negatives, leave_one_out_split, user_negatives
from app.ml.scoring import user_queries
from app.ml.synthetic import chain_world
from app.ml.train import FitResult, fit
from app.ml.trainer import Trainer
from app.ml.windows import make_windows
from app.records import EventRecord, ItemRecord
from app.settings import Settings
from app.trainer.pipeline import negative_options, read_training_data, train_config
from tests.e2e.support import BASE_TIME

TINY = TrainConfig(
    model=ModelConfig(d=16, max_len=8, layers=1, heads=2, dropout=0.1, attn_dropout=0.1, feature_buckets=256),
    epochs=6,
    batch_size=16,
    lr=3e-3,
    warmup_steps=5,
    patience=10,
    device="cpu",
    threads=1,
    amp="off",
)


def state(result: FitResult) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def assert_bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


# (a) No negatives: exactly the same computation and weights.


@pytest.mark.parametrize("sampled", [False, True], ids=["full_softmax", "sampled_softmax"])
def test_without_negatives_the_weights_are_bitwise_identical(sampled: bool) -> None:
    log, items = chain_world(n_items=30, n_users=40, length=8, seed=1)
    config = replace(TINY, epochs=3, full_softmax_max_items=10 if sampled else 50_000, sampled_negatives=8)
    plain = state(fit(log, items, config))
    # None, an empty set, pairs that map to nothing (unknown items / users), and the term switched off.
    unknown = Negatives(["u1", "nobody"], ["no-such-item", "i3"], ["not_interested"] * 2, np.zeros(2))
    real = Negatives(["u1", "u2"], ["i3", "i4"], ["not_interested"] * 2, np.zeros(2))
    for negatives, cfg in [
        (Negatives.empty(), config),
        (unknown, config),
        (real, replace(config, negative_weight=0.0)),
    ]:
        assert_bitwise_equal(plain, state(fit(log, items, cfg, negatives=negatives)))
    # ... and with real negatives the weights do move.
    moved = state(fit(log, items, config, negatives=real))
    assert any(not torch.equal(plain[k], moved[k]) for k in plain)


def test_a_trainer_without_negatives_runs_the_plain_loss() -> None:
    log, items = chain_world(n_items=12, n_users=6, length=6, seed=0)
    split = leave_one_out_split(log, extra_items=items)
    windows = make_windows(split.sequences(0), 4)
    assert windows.seqs is not None and windows.seqs.shape == (len(windows),)
    empty = user_negatives(split, Negatives.empty(), log.items)
    from app.ml.model import TwoTower

    model = TwoTower(split.n_items, 1, torch.zeros(split.n_items, 2, dtype=torch.long), TINY.model)
    trainer = Trainer(
        model, TINY, windows, np.ones(2, np.float32), np.ones(split.n_items), torch.device("cpu"), empty
    )
    assert trainer.negatives is None  # nothing to add: the loss is the plain one
    assert trainer._batch_negatives(np.arange(len(windows)), windows.targets[:, -1]) is None


# (b) not_interested lowers the item's rank for the users who said it.


def preference_world(seed: int = 0) -> tuple[InteractionLog, dict[str, ItemRecord], list[str], str]:
    """Two groups of 30 items; each user views 7 items of their group. Item g0-0 is the group's favourite:
    most group-0 users view it. Returns the log, the catalog, group-0 users who have not seen g0-0, and g0-0."""
    rng = np.random.default_rng(seed)
    users, items, times = [], [], []
    unseen: list[str] = []
    star = "g0-0"
    for u in range(120):
        group = u % 2
        user = f"u{u}"
        pool = [f"g{group}-{j}" for j in range(1, 30)]
        chosen = list(rng.choice(pool, size=7, replace=False))
        if group == 0:
            if u % 8 != 0:
                chosen[int(rng.integers(0, 6))] = star  # not last: seen in the history
            else:
                unseen.append(user)
        for step, item in enumerate(chosen):
            users.append(user)
            items.append(str(item))
            times.append(1_000_000.0 + u * 100 + step)
    catalog = {f"g{g}-{j}": ItemRecord(f"g{g}-{j}") for g in range(2) for j in range(30)}
    log = InteractionLog.from_arrays(users, items, ["view"] * len(users), np.array(times))
    return log, catalog, unseen, star


def rank_of(result: FitResult, log: InteractionLog, users: list[str], item: str) -> np.ndarray:
    """The 1-based rank of `item` for each user among the items they have not seen."""
    split = leave_one_out_split(log, extra_items=result.item_ids, min_interactions=3)
    rows = [split.user_ids.index(u) for u in users]
    seqs = [split.sequence(r) for r in rows]
    queries = user_queries(result.model, seqs, torch.device("cpu"))  # [U, D+1]
    with torch.inference_mode():
        scores = (queries @ result.model.item_vectors(None).T).numpy()  # [U, N]
    column = result.item_ids.index(item)
    ranks = []
    for u, (seq, _) in enumerate(seqs):
        codes = [result.item_ids.index(split.item_ids[c]) for c in seq]
        row = scores[u].copy()
        row[codes] = -np.inf
        ranks.append(int((row > row[column]).sum()) + 1)
    return np.array(ranks)


def test_not_interested_lowers_the_items_rank_for_those_users() -> None:
    log, catalog, unseen, star = preference_world()
    config = replace(TINY, epochs=12, negative_weight=1.0)
    without = fit(log, catalog, config)
    told = unseen  # every group-0 user who has not seen the favourite says "not for me" about it
    negatives = Negatives(told, [star] * len(told), ["not_interested"] * len(told), np.zeros(len(told)))
    with_negatives = fit(log, catalog, config, negatives=negatives)
    before = rank_of(without, log, told, star)
    after = rank_of(with_negatives, log, told, star)
    assert before.mean() <= 3.0, before  # the favourite is near the top for them without negatives
    assert after.mean() >= before.mean() + 4.0, (before, after)
    assert (after > before).mean() >= 0.8, (before, after)  # nearly every one of them, not a few outliers
    stats = with_negatives.data_stats["negatives"]
    assert stats["used"] == {"not_interested": len(told)} and stats["users"] == len(told)
    assert "negatives" not in without.data_stats


def test_sampled_softmax_path_uses_the_negatives_too() -> None:
    log, catalog, unseen, star = preference_world()
    config = replace(TINY, epochs=12, negative_weight=1.0, full_softmax_max_items=8, sampled_negatives=6)
    negatives = Negatives(
        unseen, [star] * len(unseen), ["not_interested"] * len(unseen), np.zeros(len(unseen))
    )
    without = rank_of(fit(log, catalog, config), log, unseen, star)
    after = rank_of(fit(log, catalog, config, negatives=negatives), log, unseen, star)
    assert after.mean() >= without.mean() + 3.0, (without, after)


def test_user_negatives_maps_dedupes_and_reports() -> None:
    log, items = chain_world(n_items=10, n_users=4, length=6, seed=0)
    split = leave_one_out_split(log, extra_items=[*items, "catalog-only"], min_interactions=3)
    negatives = Negatives(
        ["u0", "u0", "u1", "u1", "ghost", "u2"],
        ["i1", "i1", "i2", "catalog-only", "i1", "i3"],
        [
            "not_interested",
            IMPRESSION_KIND,
            IMPRESSION_KIND,
            "not_interested",
            "not_interested",
            IMPRESSION_KIND,
        ],
        2e6 + np.arange(6, dtype=np.float64),  # after every positive: none is superseded
    )
    out = user_negatives(split, negatives, log.items)
    assert out.report["used"] == {IMPRESSION_KIND: 2, "not_interested": 1}  # u0/i1 once, as not_interested
    assert out.report["ignored"] == {"unknown_item": 1, "unknown_user": 1, "superseded": 0}
    u0, u1 = split.user_ids.index("u0"), split.user_ids.index("u1")
    assert [split.item_ids[c] for c in out.items[out.offsets[u0] : out.offsets[u0 + 1]]] == ["i1"]
    assert [split.item_ids[c] for c in out.items[out.offsets[u1] : out.offsets[u1 + 1]]] == ["i2"]
    capped = user_negatives(
        split,
        Negatives(
            ["u0"] * 4, ["i1", "i2", "i3", "i4"], ["not_interested"] * 4, 2e6 + np.array([1.0, 4.0, 3.0, 2.0])
        ),
        log.items,
        max_per_user=2,
    )
    assert sorted(split.item_ids[c] for c in capped.items) == ["i2", "i3"]  # the latest two
    # u3's chain starts somewhere: a negative before a positive of theirs on the same item is superseded,
    # one after it is kept (they saw it, then said no).
    u3 = split.user_ids.index("u3")
    first = split.item_ids[int(split.sequence(u3)[0][0])]
    t_first = float(split.times[split.offsets[u3]])  # type: ignore[index]
    later = user_negatives(
        split,
        Negatives(["u3", "u3"], [first, first], ["not_interested"] * 2, np.array([t_first - 1, t_first + 1])),
        log.items,
    )
    assert later.report["ignored"]["superseded"] == 1 and later.report["used"] == {"not_interested": 1}


# (c) The store read: negatives apart from positives.


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def at(seconds: float) -> datetime:
    return BASE_TIME + timedelta(seconds=seconds)


def store_world(sessions: sessionmaker[Session]) -> None:
    events = [
        EventRecord(f"u{u}", f"i{(u + k) % 9}", "view", at(u * 1000 + k)) for u in range(3) for k in range(5)
    ]
    events += [
        EventRecord("u0", "i8", "not_interested", at(50)),
        EventRecord("u1", "i8", "not_interested", at(1050)),
        EventRecord("u0", "q", "click", at(10_100)),  # acted on 100 s after its impression
        EventRecord("u0", "r", "click", at(10_000 + 7200)),  # 2 h after: outside a 1 h window
        EventRecord("u0", "s", "view", at(9_000)),  # before its impression only
    ]
    load_events(sessions, events, source="test")

    def add(s: Session) -> None:
        for n, (user, item, seconds) in enumerate(
            [
                ("u0", "p", 10_000),
                ("u0", "q", 10_000),
                ("u0", "r", 10_000),
                ("u0", "s", 10_000),
                ("u1", "p", 0),
            ]
        ):
            s.add(
                Impression(
                    recommendation_id=f"rec{n // 4}-{user}",
                    user_id=user,
                    item_id=item,
                    position=n + 1,
                    ts=at(seconds),
                )
            )

    run_transaction(sessions, add)


def test_not_interested_events_come_out_as_negatives_never_as_positives(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    store_world(sessions)
    # Even a weight naming the type does not make it a positive.
    weights = {"view": 1.0, "click": 2.0, "not_interested": 1.0}
    with sessions() as s:
        data = read_training_data(s, weights)
    assert "not_interested" not in data.log.types
    assert data.negatives is not None
    pairs = set(zip(data.negatives.user_ids, data.negatives.item_ids, data.negatives.kinds, strict=True))
    assert pairs == {("u0", "i8", "not_interested"), ("u1", "i8", "not_interested")}  # impressions: off
    assert data.cleaning is not None and data.cleaning["negatives"]["read"] == {"not_interested": 2}
    assert "not_interested" not in data.skipped_types
    # And not in any sequence the model trains on (neither input nor target).
    split = leave_one_out_split(data.log, min_interactions=3)
    kept = {
        (split.user_ids[u], split.item_ids[c]) for u in range(split.n_users) for c in split.sequence(u)[0]
    }
    assert ("u0", "i8") not in kept and ("u1", "i8") not in kept


def test_impressions_without_a_click_are_negatives_only_when_enabled(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    store_world(sessions)
    with sessions() as s:
        off = read_training_data(s, settings.event_weights, **negative_options(settings))
        on = read_training_data(
            s,
            settings.event_weights,
            **negative_options(
                replace_settings(settings, train_impression_negatives=True, impression_negative_window_s=3600)
            ),
        )
    assert off.negatives is not None and IMPRESSION_KIND not in off.negatives.kinds
    assert on.negatives is not None
    shown = {
        (u, i)
        for u, i, k in zip(on.negatives.user_ids, on.negatives.item_ids, on.negatives.kinds, strict=True)
        if k == IMPRESSION_KIND
    }
    # p: never acted on; r: acted on after the window; s: an event before the impression only. q was clicked.
    assert shown == {("u0", "p"), ("u0", "r"), ("u0", "s"), ("u1", "p")}
    assert on.cleaning is not None
    assert on.cleaning["negatives"]["read"] == {"not_interested": 2, IMPRESSION_KIND: 4}
    assert format_report(on.cleaning).endswith(
        f"; explicit negatives read: {IMPRESSION_KIND} 4, not_interested 2"
    )
    assert {"p", "q", "r", "s"} & set(on.log.items) == {"q", "r", "s"}  # the clicks stay positives


def test_impressions_younger_than_the_window_are_not_judged_yet(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    from app.trainer.pipeline import read_unclicked_impressions

    store_world(sessions)
    with sessions() as s:
        early = read_unclicked_impressions(s, 3600, now=at(10_000 + 1800).timestamp())
        late = read_unclicked_impressions(s, 3600, now=at(10_000 + 7200).timestamp())
    assert set(zip(early.user_ids, early.item_ids, strict=True)) == {("u1", "p")}
    assert len(late) == 4


def replace_settings(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update=changes)


def test_settings_parse_and_reach_the_train_config(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = Settings(_env_file=None)  # type: ignore[call-arg]
    assert defaults.negative_types == ["not_interested"]
    assert defaults.train_impression_negatives is False and defaults.impression_negative_window_s == 86400
    monkeypatch.setenv("RECO_NEGATIVE_TYPES", "not_interested, hide ,")
    monkeypatch.setenv("RECO_NEGATIVE_WEIGHT", "0.25")
    monkeypatch.setenv("RECO_TRAIN_IMPRESSION_NEGATIVES", "true")
    monkeypatch.setenv("RECO_IMPRESSION_NEGATIVE_WINDOW_S", "600")
    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    assert settings.negative_types == ["not_interested", "hide"]
    assert train_config(settings).negative_weight == 0.25
    assert negative_options(settings) == {
        "negative_types": ("not_interested", "hide"),
        "impression_window_s": 600,
    }
    monkeypatch.setenv("RECO_NEGATIVE_WEIGHT", "-1")
    with pytest.raises(ValueError):
        Settings(_env_file=None)  # type: ignore[call-arg]
