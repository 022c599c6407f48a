"""Data cleaning before training: known answers for each rule, and rules that are off."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pytest

from app.ml.cleaning import CleaningRules, clean_log, format_report
from app.ml.data import InteractionLog

Row = tuple[str, str, str, float]
T0 = 1_700_000_000.0
WEIGHTS = {"view": 1.0, "click": 2.0, "purchase": 8.0, "impression": 0.0}


def make_log(rows: Sequence[Row]) -> InteractionLog:
    users, items, types, times = zip(*rows, strict=True) if rows else ((), (), (), ())
    return InteractionLog.from_arrays(
        list(users), list(items), list(types), np.array(times, dtype=np.float64)
    )


def rows_of(log: InteractionLog) -> list[Row]:
    return [
        (log.users[u], log.items[i], log.types[t], float(ts))
        for u, i, t, ts in zip(log.user_codes, log.item_codes, log.type_codes, log.timestamps, strict=True)
    ]


def dropped_events(report: dict) -> dict[str, int]:
    return {rule: counts["events"] for rule, counts in report["dropped"].items()}


def human(user: str = "human") -> list[Row]:
    """A person: a burst of 20 clicks within one minute, then browsing a few times an hour for a day."""
    burst = [(user, f"i{k}", "click", T0 + 3.0 * k) for k in range(20)]
    browsing = [(user, f"i{k % 7}", "view", T0 + 600.0 + 900.0 * k) for k in range(96)]
    return burst + browsing


# --- bot users ---------------------------------------------------------------------------------------------


def test_a_bot_with_10000_events_in_a_minute_is_dropped_whole_and_a_human_kept() -> None:
    rng = np.random.default_rng(0)
    bot = [("bot", f"i{k % 50}", "view", T0 + 86_400 + float(rng.uniform(0, 60))) for k in range(10_000)]
    bot += [("bot", "i1", "view", T0 - 3600.0 * k) for k in range(1, 6)]  # calm history: dropped too
    rows = human() + bot + human("other")
    cleaned, report = clean_log(make_log(rows), CleaningRules(bot_events_per_minute=120))
    assert report["dropped"]["bot_users"] == {"users": 1, "events": 10_005}
    assert rows_of(cleaned) == human() + human("other")  # input order kept
    assert cleaned.users == ["human", "other"] and "bot" not in cleaned.users
    assert report["read"] == len(rows) and report["kept"] == len(cleaned) == 2 * len(human())


def test_the_bot_threshold_is_more_than_n_events_within_60_seconds() -> None:
    n = 120
    at_limit = [("a", f"i{k}", "view", T0 + 59.0 * k / (n - 1)) for k in range(n)]  # 120 in 59 s
    over = [("b", f"i{k}", "view", T0 + 59.9 * k / n) for k in range(n + 1)]  # 121 in 59.9 s
    spread = [("c", f"i{k}", "view", T0 + 0.5 * k) for k in range(n + 1)]  # 121, first to last 60 s
    log = make_log(at_limit + over + spread)
    cleaned, report = clean_log(log, CleaningRules(bot_events_per_minute=n))
    assert report["dropped"]["bot_users"] == {"users": 1, "events": n + 1}
    assert cleaned.users == ["a", "c"]


# --- per-user and per-item caps ------------------------------------------------------------------------------


def test_the_user_cap_keeps_each_users_latest_events() -> None:
    rng = np.random.default_rng(1)
    heavy = [("heavy", f"i{k}", "view", T0 + 100.0 * k) for k in range(10)]
    order = rng.permutation(len(heavy))
    shuffled = [heavy[k] for k in order]  # input order is not time order
    tie = [("tie", name, "view", T0) for name in "wxyz"]  # 4 at the same time: the later rows are newer
    light = [("light", "i1", "view", T0), ("light", "i2", "view", T0 + 1)]
    cleaned, report = clean_log(make_log(shuffled + tie + light), CleaningRules(max_events_per_user=3))
    assert report["dropped"]["user_cap"] == {"users": 2, "events": 7 + 1}
    latest = set(heavy[-3:])
    assert rows_of(cleaned) == [r for r in shuffled if r in latest] + tie[1:] + light


def test_the_item_cap_keeps_each_items_latest_events() -> None:
    popular = [(f"u{k}", "hit", "view", T0 + 10.0 * (20 - k)) for k in range(20)]  # newest first
    niche = [("u0", "niche", "view", T0)]
    cleaned, report = clean_log(make_log(popular + niche), CleaningRules(max_events_per_item=5))
    assert report["dropped"]["item_cap"] == {"items": 1, "events": 15}
    assert rows_of(cleaned) == popular[:5] + niche
    assert cleaned.users == ["u0", "u1", "u2", "u3", "u4"]


# --- repeats -------------------------------------------------------------------------------------------------


def test_repeats_within_the_window_are_dropped_and_the_first_kept() -> None:
    rows = [
        ("u", "a", "view", T0),  # 2 s after the last row (the first in time): a repeat
        ("u", "a", "view", T0 + 3.0),  # 3 s after the previous one: a repeat
        ("u", "a", "view", T0 + 8.0),  # 5 s after the previous one (at most the window): a repeat
        ("u", "a", "view", T0 + 13.5),  # 5.5 s after: kept
        ("u", "a", "click", T0 + 1.0),  # another type: kept
        ("u", "b", "view", T0 + 1.0),  # another item: kept
        ("v", "a", "view", T0 + 1.0),  # another user: kept
        ("u", "a", "view", T0 - 2.0),  # late in the input but the first in time: kept
    ]
    cleaned, report = clean_log(make_log(rows), CleaningRules(repeat_window_s=5.0))
    assert report["dropped"]["repeats"] == {"events": 3}
    assert rows_of(cleaned) == [rows[k] for k in (3, 4, 5, 6, 7)]


# --- types -------------------------------------------------------------------------------------------------


def test_zero_weight_and_unknown_types_are_dropped_and_counted_by_type() -> None:
    rows = [
        ("u", "a", "view", T0),
        ("u", "a", "impression", T0 + 1),  # weight 0
        ("u", "b", "impression", T0 + 2),
        ("u", "c", "wishlist", T0 + 3),  # not in the weights (a type removed since)
        ("w", "d", "impression", T0 + 4),  # w only had impressions: gone from the vocabulary
        ("u", "b", "purchase", T0 + 5),
    ]
    cleaned, report = clean_log(make_log(rows), CleaningRules(type_weights=WEIGHTS))
    assert report["dropped"]["types"] == {"events": 4, "by_type": {"impression": 3, "wishlist": 1}}
    assert rows_of(cleaned) == [rows[0], rows[5]]
    assert cleaned.types == ["view", "purchase"] and cleaned.users == ["u"] and cleaned.items == ["a", "b"]
    assert report["rules"]["event_types"] == ["click", "purchase", "view"]


def test_each_event_counts_once_under_the_first_rule_that_drops_it() -> None:
    burst = [("bot", "a", "view", T0 + 0.01 * k) for k in range(200)]  # also 199 repeats of one another
    burst += [("bot", "a", "impression", T0 + 0.5)]  # a bot's zero-weight event counts as a type drop
    doubles = [("u", f"i{k // 2}", "view", T0 + 100.0 * (k // 2) + (k % 2)) for k in range(20)]  # 10 repeats
    rules = CleaningRules(WEIGHTS, bot_events_per_minute=120, repeat_window_s=5.0, max_events_per_user=4)
    cleaned, report = clean_log(make_log(burst + doubles), rules)
    assert dropped_events(report) == {
        "types": 1,
        "bot_users": 200,
        "repeats": 10,
        "user_cap": 6,
        "item_cap": 0,
    }
    assert rows_of(cleaned) == [doubles[k] for k in (12, 14, 16, 18)]  # the latest 4 after the repeats
    assert report["kept"] == 4 and sum(dropped_events(report).values()) + 4 == report["read"]


# --- rules off ------------------------------------------------------------------------------------------------


def test_rules_that_are_off_drop_nothing() -> None:
    rng = np.random.default_rng(2)
    bot = [("bot", "a", "impression", T0 + float(rng.uniform(0, 60))) for _ in range(5000)]
    log = make_log(human() + bot)
    for rules in (CleaningRules(), CleaningRules(None, 0, 0.0, 0, 0)):
        cleaned, report = clean_log(log, rules)
        assert cleaned is log
        assert dropped_events(report) == dict.fromkeys(dropped_events(report), 0)
        assert report["kept"] == report["read"] == len(log)
    # Limits above what the data holds drop nothing either.
    everything = {"view": 1.0, "click": 1.0, "impression": 1.0}
    cleaned, report = clean_log(log, CleaningRules(everything, 10_000, 0.0, 10**6, 10**6))
    assert cleaned is log and report["kept"] == len(log)


def test_an_empty_log_and_invalid_rules() -> None:
    cleaned, report = clean_log(make_log([]), CleaningRules(WEIGHTS, 120, 5.0, 10, 10))
    assert len(cleaned) == 0 and report["kept"] == report["read"] == 0
    for bad in (
        {"bot_events_per_minute": -1},
        {"max_events_per_user": 1.5},
        {"repeat_window_s": float("nan")},
    ):
        with pytest.raises(ValueError, match="CleaningRules"):
            CleaningRules(**bad)  # type: ignore[arg-type]


def test_the_report_reads_as_one_line() -> None:
    _, report = clean_log(make_log(human()), CleaningRules({"view": 1.0}, 120, 5.0, 100, 0))
    line = format_report(report)
    assert line.startswith(f"cleaning: read {len(human())}, kept 96; dropped: types 20 (click 20)")
    assert "bot users 0 (0 events)" in line
