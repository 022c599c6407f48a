"""InteractionLog building and the EVALUATION.md leave-one-out split."""

from datetime import UTC, datetime

import numpy as np
import pytest

from app.ml.data import InteractionLog, leave_one_out_split
from app.records import EventRecord


def _log(rows: list[tuple[str, str, str, float]]) -> InteractionLog:
    users, items, types, times = zip(*rows, strict=True)
    return InteractionLog.from_arrays(
        list(users), list(items), list(types), np.array(times, dtype=np.float64)
    )


def test_from_records_matches_from_arrays_and_streams_chunks() -> None:
    events = [
        EventRecord(f"u{i % 7}", f"i{i % 11}", "view", datetime.fromtimestamp(1_700_000_000 + i, UTC))
        for i in range(70_000)
    ]
    a = InteractionLog.from_records(iter(events))
    b = InteractionLog.from_arrays(
        [e.user_id for e in events],
        [e.item_id for e in events],
        [e.type for e in events],
        np.array([e.timestamp.timestamp() for e in events]),
    )
    assert len(a) == len(b) == 70_000
    assert a.users == b.users and a.items == b.items
    np.testing.assert_array_equal(a.item_codes, b.item_codes)
    np.testing.assert_array_equal(a.timestamps, b.timestamps)


def test_builder_extend_keeps_codes_across_chunks() -> None:
    builder = InteractionLog.builder()
    builder.extend(["a", "b"], ["x", "y"], ["view", "view"], np.array([1.0, 2.0]))
    builder.extend(["b", "c"], ["x", "z"], ["purchase", "view"], np.array([3.0, 4.0]))
    log = builder.build()
    assert log.users == ["a", "b", "c"] and log.items == ["x", "y", "z"]
    np.testing.assert_array_equal(log.user_codes, [0, 1, 1, 2])
    np.testing.assert_array_equal(log.item_codes, [0, 1, 0, 2])
    assert log.types == ["view", "purchase"]


def test_bad_columns_are_refused_with_the_row() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        InteractionLog.from_arrays(["a"], ["x", "y"], ["view"], np.array([1.0]))
    with pytest.raises(ValueError, match=r"item_ids\[1\]"):
        InteractionLog.from_arrays(["a", "a"], ["x", ""], ["view", "view"], np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match=r"timestamps\[0\]"):
        InteractionLog.from_arrays(["a"], ["x"], ["view"], np.array([np.nan]))


def test_split_keeps_first_pair_orders_ties_by_input_and_filters_short_users() -> None:
    rows = [
        ("u1", "a", "view", 10.0),
        ("u1", "b", "view", 5.0),
        ("u1", "a", "view", 1.0),  # earliest a: the kept one
        ("u1", "c", "view", 20.0),
        ("u1", "d", "view", 20.0),  # tie with c: input order, so c then d
        ("u1", "e", "view", 30.0),
        ("u1", "f", "view", 20.0),  # tie again: after d
        ("u2", "a", "view", 1.0),
        ("u2", "b", "view", 2.0),
        ("u2", "c", "view", 3.0),
        ("u2", "c", "view", 4.0),  # duplicate: u2 has 4 distinct items -> dropped
        ("u2", "d", "view", 5.0),
    ]
    split = leave_one_out_split(_log(rows))
    assert split.user_ids == ["u1"]
    items, _ = split.sequence(0)
    assert [split.item_ids[i] for i in items] == ["a", "b", "c", "d", "f", "e"]
    assert split.item_ids[split.test_items[0]] == "e"
    assert split.item_ids[split.valid_items[0]] == "f"
    train, _ = split.sequence(0, drop_last=2)
    assert [split.item_ids[i] for i in train] == ["a", "b", "c", "d"]
    assert split.n_items == 6


def test_split_type_strength_and_extra_catalog_items() -> None:
    rows = [("u", f"i{k}", "view", float(k)) for k in range(5)] + [("u", "i1", "purchase", 9.0)]
    log = _log(rows)
    split = leave_one_out_split(log, extra_items=["cold"], type_strength={"view": 1.0, "purchase": 4.0})
    items, types = split.sequence(0)
    assert [split.item_ids[i] for i in items] == ["i0", "i1", "i2", "i3", "i4"]
    assert [split.type_names[t] for t in types] == ["view", "purchase", "view", "view", "view"]
    assert split.item_ids[-1] == "cold"
    plain = leave_one_out_split(log)
    assert [plain.type_names[t] for t in plain.sequence(0)[1]] == ["view"] * 5


def test_empty_log_gives_empty_split() -> None:
    log = InteractionLog.builder().build()
    split = leave_one_out_split(log)
    assert split.n_users == 0 and split.stats()["interactions"] == 0
