"""ServingModel snapshots: catalog changes, cold items, isolation of old snapshots, every index kind vs numpy."""

from __future__ import annotations

import numpy as np
import pytest

from app.artifacts import LoadedModel
from app.artifacts.store import item_table
from app.index import IndexConfig, ItemIndex
from app.records import ItemRecord
from app.serving.model import ServingModel
from tests.serving_support import trained, world


def loaded(version: str = "v1") -> LoadedModel:
    """The tiny trained model as serving loads it (without a trip through files)."""
    result = trained(0)
    manifest = {"version": version, "type_names": result.type_names}
    return LoadedModel(manifest, result.model, list(result.item_ids), item_table(result.model))


def snapshot(config: IndexConfig = IndexConfig(kind="flat")) -> ServingModel:
    model = loaded()
    base = ServingModel.create(model, ItemIndex.build(model.item_vectors, config))
    _, catalog, _ = world(0)
    return base.with_items([(record, ()) for record in catalog.values()])


def test_catalog_changes_hide_recategorise_and_add_items() -> None:
    base = snapshot()
    _, catalog, _ = world(0)
    assert base.n_rows == base.trained_rows == len(catalog)  # training saw the whole catalog (cold items too)
    assert set(base.category_rows) == {"cat0", "cat1", "cat2", "cat3"}
    hidden = ItemRecord("cat0-item1", categories=("cat0",), available=False)
    moved = ItemRecord("cat0-item2", categories=("cat9",))
    new = ItemRecord("fresh-1", categories=("cat0",), title="cat0 product fresh")
    after = base.with_items([(hidden, ("cat0",)), (moved, ("cat0",)), (new, ())])
    assert after.n_rows == base.n_rows + 1 and after.row("fresh-1") == base.n_rows
    assert not after.allowed[after.row_of["cat0-item1"]] and base.allowed[base.row_of["cat0-item1"]]
    assert after.hidden_rows.tolist() == [after.row_of["cat0-item1"]]
    assert after.row_of["cat0-item2"] in after.category_rows["cat9"]
    assert after.row_of["cat0-item2"] not in after.category_rows["cat0"]
    assert after.row("fresh-1") in after.category_rows["cat0"]
    assert base.row("fresh-1") is None  # the old snapshot does not know the row it did not have


def test_an_old_snapshot_never_returns_rows_added_after_it() -> None:
    base = snapshot()
    query = base.index.vectors(np.asarray([base.row_of["cat1-item3"]]))  # [1, d+1]
    query[0, :-1] *= 50  # strongly like cat1-item3
    twin = base.loaded.item_ids[base.row_of["cat1-item3"]]
    after = base.with_items([(ItemRecord("clone", categories=("cat1",), title="cat1 product 3"), ())])
    assert base.index is after.index and base.index.ntotal == after.n_rows  # shared, grown index
    _, rows_old = base.search(query, base.n_rows, exclude=np.empty(0, np.int64), category=None)
    _, rows_new = after.search(query, after.n_rows, exclude=np.empty(0, np.int64), category=None)
    assert after.row_of["clone"] not in rows_old[0].tolist() and (rows_old[0] >= 0).sum() == base.n_rows
    assert after.row_of["clone"] in rows_new[0].tolist()
    assert twin == "cat1-item3"


@pytest.mark.parametrize(
    ("config", "min_recall"),
    [
        (IndexConfig(kind="flat"), 1.0),
        (IndexConfig(kind="ivf", nlist=8, nprobe=8), 1.0),  # every list probed: exact
        (IndexConfig(kind="ivf", nlist=8, nprobe=3), 0.8),
        (IndexConfig(kind="hnsw", M=16, ef_search=64), 0.95),
    ],
)
def test_every_index_kind_against_brute_force_numpy(config: IndexConfig, min_recall: float) -> None:
    model = snapshot(config)
    hidden = [
        (ItemRecord(f"cat{c}-item{j}", categories=(f"cat{c}",), available=False), (f"cat{c}",))
        for c, j in [(0, 1), (1, 2), (2, 3)]
    ]
    model = model.with_items(hidden)
    table = model.index.vectors(np.arange(model.n_rows))  # [N, d+1]
    log, _, _ = world(0)
    recalls = []
    for user in log.users[:30]:
        code = log.users.index(user)
        items = [log.items[i] for i in log.item_codes[log.user_codes == code].tolist()]
        query = model.loaded.query_vector([(i, "view") for i in items])
        assert query is not None
        seen = model.rows(items)
        for category in (None, "cat2"):
            scores = table @ query  # [N]
            eligible = model.allowed_in(category).copy()
            eligible[seen] = False
            expected = np.flatnonzero(eligible)[np.argsort(-scores[eligible], kind="stable")][:10]
            _, rows = model.search(query[None], 10, exclude=seen, category=category)  # [1, 10]
            got = rows[0][rows[0] >= 0]
            assert len(got) == len(expected) == 10
            assert eligible[got].all()  # never a hidden, seen or off-category row
            if min_recall == 1.0:
                # Exact: the same scores in the same order (items with equal vectors may swap places).
                np.testing.assert_allclose(scores[got], scores[expected], rtol=1e-5, atol=1e-6)
            recalls.append(len(set(got.tolist()) & set(expected.tolist())) / 10)
    assert float(np.mean(recalls)) >= min_recall
