"""Multi-process training as the worker runs it (app/ml/distributed.py): 2 gloo ranks spawned on loopback.

Quality: the 2-rank model is compared with the 1-process model on the same split's held-out test items. The
chain world has a known answer (the next item of a chain), so both must reach the single-process known-answer
bar (HR@10 >= 0.9), and their NDCG@10 may differ by at most 0.05: the two runs see different batch
compositions (each rank buckets its own half of every epoch), so they are not bit-identical, but on this world
both converge to ranking the true next item first for nearly every one of the 120 users; 0.05 is 6 users'
worth of a top-1 hit moving to rank 2-3, far above what one run to the next moves here (0-0.02) and far below
what a broken all-reduce costs (a rank training alone on half the windows with half the batch still learns the
chains but the ranks' weights then differ, which the artifact check below would also catch).

Faults: a rank that raises mid-training fails the whole run with its error, a rank that hangs fails it after
the collective timeout; no rank process is left behind, and both end well within a bound.
"""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from app.artifacts import load_version, save_version
from app.index import IndexConfig, ItemIndex
from app.ml.config import ModelConfig, TrainConfig
from app.ml.data import Split, leave_one_out_split
from app.ml.distributed import DistributedTrainingError, rank_config, run_ranks
from app.ml.scoring import evaluate_model
from app.ml.synthetic import chain_world
from app.ml.train import FitResult, ProgressInfo, fit_split
from app.records import ItemRecord
from app.serving.model import ServingModel
from tests.helpers.ddp_ranks import fit_target, hang_in_rank1, raise_in_rank1

CFG = TrainConfig(
    model=ModelConfig(
        d=32, max_len=16, layers=1, heads=2, dropout=0.1, attn_dropout=0.1, feature_buckets=512
    ),
    epochs=8,
    batch_size=16,
    lr=3e-3,
    warmup_steps=10,
    patience=3,
    device="cpu",
    threads=1,  # each rank: max(1, 1 // 2) = 1 thread too
)


def _world() -> tuple[Split, dict[str, ItemRecord]]:
    log, items = chain_world(n_items=40, n_users=120, length=12, seed=0)
    return leave_one_out_split(log, extra_items=items), items


def _test(result: FitResult, split: Split) -> dict[str, float]:
    return evaluate_model(result.model, split.sequences(1), split.test_items, torch.device("cpu"))


def test_rank_config_splits_the_batch_and_the_cores() -> None:
    per_rank = rank_config(TrainConfig(batch_size=32, batch_positions=2048, threads=0), 2, cores=8)
    assert (per_rank.batch_size, per_rank.batch_positions, per_rank.threads) == (16, 1024, 4)
    assert rank_config(TrainConfig(threads=2), 4, cores=64).threads == 1  # never 0 threads
    with pytest.raises(ValueError, match="nproc"):
        run_ranks(1, fit_target, (), CFG)


def test_two_gloo_ranks_train_one_model_as_good_as_one_process(tmp_path: Path) -> None:
    split, items = _world()
    single = fit_split(split, items, CFG, holdout=1)
    reports: list[ProgressInfo] = []
    double = run_ranks(2, fit_target, (split, items), CFG, reports.append, timeout_s=120)

    one, two = _test(single, split), _test(double, split)
    assert one["HR@10"] >= 0.9 and two["HR@10"] >= 0.9  # the known-answer bar, for both
    assert abs(one["NDCG@10"] - two["NDCG@10"]) <= 0.05, (one, two)
    # Rank 0's progress reached this process, for every epoch it trained and refit.
    stages = [r.stage for r in reports]
    assert stages == [h["stage"] for h in double.history] and "refit" in stages
    assert all(r.sequences_per_s > 0 for r in reports)
    assert double.config.batch_size == CFG.batch_size // 2 and double.config.threads == 1  # per rank

    # The artifact of the 2-rank model is valid and serves: it loads, builds its index and ranks the chain.
    path = save_version(double, tmp_path / "artifacts")
    loaded = load_version(path)
    ServingModel.create(loaded, ItemIndex.build(loaded.item_vectors, IndexConfig(kind="flat")))
    query = loaded.query_vector([("i3", "view"), ("i4", "view"), ("i5", "view")])
    assert query is not None
    scores = loaded.item_vectors @ query  # [N]
    for seen in ("i3", "i4", "i5"):
        scores[loaded.row_of[seen]] = -np.inf
    assert loaded.item_ids[int(np.argmax(scores))] == "i6"


@pytest.mark.parametrize(
    ("hook", "timeout_s", "expected"),
    [
        (raise_in_rank1, 300.0, "DDP rank 1 of 2 failed: RuntimeError: injected fault in rank 1"),
        (hang_in_rank1, 5.0, "DDP rank 0 of 2 failed"),
    ],
    ids=["raises", "hangs"],
)
def test_a_failing_rank_fails_the_run_without_hanging(hook: Any, timeout_s: float, expected: str) -> None:
    split, items = _world()
    started = time.monotonic()
    with pytest.raises(DistributedTrainingError) as caught:
        run_ranks(2, fit_target, (split, items), CFG, timeout_s=timeout_s, hook=hook)
    elapsed = time.monotonic() - started
    # The fault was seen: the failing rank's error (or, for the hung one, rank 0's collective timeout).
    assert expected in str(caught.value)
    # Bounded: a raise is seen at once by gloo (closed connection), not after the 300 s timeout; a hang
    # after the 5 s timeout. The rest of the bound is the two ranks' start-up on a loaded 2-core machine.
    assert elapsed < 120, elapsed
    assert not multiprocessing.active_children()  # no rank left running
