"""Filters in the index search, property-tested: over random catalogs, vectors and expressions, a filtered
search returns k items whenever k eligible items exist, and never an item the filter or the exclusions leave
out (flat, IVF and HNSW indexes, through the serving snapshot's memoised masks)."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest

from app.artifacts import LoadedModel
from app.index import IndexConfig, ItemIndex
from app.rules.expr import ExpressionError, compile_filter
from app.rules.masks import MaskMemo
from app.rules.table import ItemTable
from app.serving.model import ServingModel
from tests.unit.test_rules_expr import expression, random_record


class _Loaded:
    """What ServingModel.create reads of a loaded version (no torch needed for searches)."""

    def __init__(self, item_ids: list[str], vectors: np.ndarray) -> None:
        self.version = "prop"
        self.item_ids = item_ids
        self.row_of = {item: i for i, item in enumerate(item_ids)}
        self.item_vectors = vectors


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_filtered_search_keeps_k_and_never_leaks(kind: str) -> None:
    rng = random.Random(7)
    nrng = np.random.default_rng(7)
    checked = 0
    for trial in range(12):
        n = rng.choice([60, 200, 500])
        records = [replace(random_record(rng, i), item_id=f"item{i}") for i in range(n)]  # unique ids
        ids = [r.item_id for r in records]
        table = ItemTable.empty().with_records(list(enumerate(records)))
        vectors = nrng.normal(size=(n, 9)).astype(np.float32)  # [n, d+1]
        config = IndexConfig(kind=kind, nlist=8, nprobe=1, ef_search=8, filter_exact_max=16)
        index = ItemIndex.build(vectors, config)
        model = ServingModel.create(_Loaded(ids, vectors), index)  # type: ignore[arg-type]
        model = model.with_items([(r, ()) for r in records], {item: i for i, item in enumerate(ids)})
        hidden = set(rng.sample(ids, n // 10))
        model = model.with_items(
            [(replace(r, available=r.item_id not in hidden), ()) for r in records],
            {item: i for i, item in enumerate(ids)},
        )
        memo = MaskMemo()
        for _ in range(15):
            text = expression(rng)
            try:
                expr = compile_filter(text)
            except ExpressionError:
                continue
            mask = memo.model_mask(model, table, expr)
            eligible = {r.item_id for r in records if expr.matches(r) and r.item_id not in hidden}
            assert {ids[i] for i in np.flatnonzero(mask)} == eligible, text
            excluded = set(rng.sample(ids, rng.randint(0, n // 4)))
            k = rng.choice([1, 5, 10, 50])
            query = nrng.normal(size=(1, 9)).astype(np.float32)
            _, rows = model.search(query, k, exclude=model.rows(excluded), category=None, allowed=mask)
            got = [ids[r] for r in rows[0].tolist() if r >= 0]
            allowed_now = eligible - excluded
            assert set(got) <= allowed_now, (text, set(got) - allowed_now)
            assert len(got) == len(set(got)) == min(k, len(allowed_now)), (text, k, len(allowed_now))
            checked += 1
        assert trial < 12
    assert checked > 100


def test_masks_are_memoised_per_catalog_and_snapshot() -> None:
    rng = random.Random(3)
    records = [replace(random_record(rng, i), item_id=f"item{i}") for i in range(50)]
    ids = [r.item_id for r in records]
    table = ItemTable.empty().with_records(list(enumerate(records)))
    vectors = np.random.default_rng(3).normal(size=(50, 5)).astype(np.float32)
    model = ServingModel.create(_Loaded(ids, vectors), ItemIndex.build(vectors))  # type: ignore[arg-type]
    model = model.with_items([(r, ()) for r in records], {item: i for i, item in enumerate(ids)})
    memo = MaskMemo()
    expr = compile_filter("price < 50")
    first = memo.model_mask(model, table, expr)
    assert memo.model_mask(model, table, expr) is first and memo.computed == 2  # catalog + model mask
    newer = table.with_records([(0, records[1])])
    assert memo.model_mask(model, newer, expr) is not first  # a new catalog revision: evaluated again
    assert not first.flags.writeable
    assert isinstance(LoadedModel, type)
