"""Data-parallel training: two gloo processes on the CPU train a model as good as one process does."""

import json
import os
import socket
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from app.ml.config import ModelConfig, TrainConfig
from app.ml.data import leave_one_out_split
from app.ml.model import TwoTower
from app.ml.scoring import evaluate_model
from app.ml.synthetic import chain_world
from app.ml.train import fit_split
from app.ml.trainer import Trainer, ddp_setup
from app.ml.windows import make_windows

CFG = TrainConfig(
    model=ModelConfig(
        d=32, max_len=16, layers=1, heads=2, dropout=0.1, attn_dropout=0.1, feature_buckets=512
    ),
    epochs=40,
    batch_size=16,
    lr=3e-3,
    warmup_steps=10,
    patience=4,
    device="cpu",
    threads=1,
)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(
        {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank), "WORLD_SIZE": str(world)}
    )
    assert ddp_setup("gloo")
    try:
        log, items = chain_world(n_items=40, n_users=120, length=12, seed=0)
        split = leave_one_out_split(log, extra_items=items)
        result = fit_split(split, items, CFG, holdout=1)
        test = evaluate_model(result.model, split.sequences(1), split.test_items, torch.device("cpu"))
        with torch.inference_mode():
            np.save(Path(out) / f"table{rank}.npy", result.model.item_vectors(None).numpy())
        # Without the final broadcast: after DDP steps on different shards the weights are still equal.
        windows = make_windows(split.sequences(2), CFG.model.max_len)
        popularity = np.ones(split.n_items)
        model = TwoTower(
            split.n_items, len(split.type_names), result.model.towers[0].items.features, CFG.model
        )
        trainer = Trainer(
            model,
            CFG,
            windows,
            np.ones(len(split.type_names) + 1, np.float32),
            popularity,
            torch.device("cpu"),
        )
        trainer.epoch(1)
        checksum = float(sum(p.detach().double().sum() for p in model.parameters()))
        gathered: list[object] = [None, None]
        dist.all_gather_object(gathered, (checksum, trainer.sequences))
        (Path(out) / f"rank{rank}.json").write_text(
            json.dumps({"test": test, "metrics": result.metrics, "gathered": gathered})
        )
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # gloo's background threads can abort a normally ending interpreter ("terminate called without an active
    # exception"); the results are on disk, so leave without running C++ static destructors.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_two_process_gloo_training_matches_quality(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0]["test"]["HR@10"] >= 0.9  # the single-process known-answer bar
    assert ranks[0]["test"] == ranks[1]["test"]  # both ranks hold the same weights
    np.testing.assert_array_equal(np.load(tmp_path / "table0.npy"), np.load(tmp_path / "table1.npy"))
    assert ranks[0]["metrics"]["best_epoch"] == ranks[1]["metrics"]["best_epoch"]
    (sum0, seen0), (sum1, seen1) = ranks[0]["gathered"]
    assert sum0 == sum1  # gradients were averaged across the ranks
    assert seen0 == seen1 and seen0 > 0  # each rank trained on its own half of the windows
