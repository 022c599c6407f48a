"""Data cleaning before training: known answers for each rule, rules off, settings, and a job on the store."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from app.cli import main
from app.db.engine import make_engine, make_sessionmaker
from app.events.service import load_events
from app.ml.cleaning import CleaningRules, clean_log, format_report
from app.ml.data import InteractionLog
from app.records import EventRecord
from app.registry import repository as registry
from app.settings import DEFAULT_EVENT_WEIGHTS, Settings, load_settings
from app.trainer.pipeline import cleaning_rules, read_training_data
from app.trainer.worker import Worker
from tests.e2e.support import BASE_TIME, TINY, enqueue, job_row, load_chain_world, tiny

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


# --- settings -------------------------------------------------------------------------------------------------


@pytest.fixture
def no_reco_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("RECO_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def test_settings_defaults_empty_values_and_refusals(
    no_reco_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = cleaning_rules(load_settings())
    assert (rules.bot_events_per_minute, rules.repeat_window_s) == (120, 5.0)
    assert (rules.max_events_per_user, rules.max_events_per_item) == (10_000, 0)
    assert rules.type_weights == DEFAULT_EVENT_WEIGHTS
    monkeypatch.setenv("RECO_CLEAN_BOT_EVENTS_PER_MINUTE", "")  # empty: off
    monkeypatch.setenv("RECO_CLEAN_REPEAT_WINDOW_S", "0")
    monkeypatch.setenv("RECO_CLEAN_MAX_EVENTS_PER_ITEM", "500")
    rules = cleaning_rules(load_settings())
    assert (rules.bot_events_per_minute, rules.repeat_window_s, rules.max_events_per_item) == (0, 0.0, 500)
    monkeypatch.setenv("RECO_CLEAN_MAX_EVENTS_PER_USER", "-1")
    with pytest.raises(SystemExit, match="RECO_CLEAN_MAX_EVENTS_PER_USER"):
        load_settings()


# --- through the worker, on the store ------------------------------------------------------------------------


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(settings)
    yield make_sessionmaker(engine)
    engine.dispose()


def noisy_events() -> list[EventRecord]:
    """Beside the chain world: a bot, a user who double-fires, impressions, a user over the cap."""

    def at(seconds: float) -> datetime:
        return BASE_TIME + timedelta(days=1, seconds=seconds)

    events = [
        EventRecord("bot", f"i{k % 10}", "view", at(0.05 * k), event_id=f"bot-{k}")  # 600 in 30 s
        for k in range(600)
    ]
    for k in range(12):  # each view fired twice, 2 s apart (the later one stored first)
        events.append(EventRecord("double", f"i{k}", "view", at(3600 + 10.0 * k + 2), event_id=f"d-{k}"))
        events.append(EventRecord("double", f"i{k}", "view", at(3600 + 10.0 * k), event_id=f"d-first-{k}"))
    events += [EventRecord("u3", f"i{k}", "impression", at(7200 + k), event_id=f"imp-{k}") for k in range(30)]
    events += [EventRecord("heavy", f"i{k}", "view", at(600.0 * k), event_id=f"heavy-{k}") for k in range(20)]
    return events


def test_a_job_cleans_its_data_and_the_admin_api_shows_the_counts(
    settings: Settings, sessions: sessionmaker[Session], client: TestClient
) -> None:
    chain = load_chain_world(sessions)  # 120 users x 12 views, 1 s apart: nothing in it is noise
    stored, _ = load_events(sessions, noisy_events(), source="noise")
    assert stored == 600 + 24 + 30 + 20
    job_id = enqueue(sessions)
    weights = {**DEFAULT_EVENT_WEIGHTS, "impression": 0.0}
    cleaning = {
        "event_weights": weights,
        "clean_bot_events_per_minute": 120,
        "clean_repeat_window_s": 5.0,
        "clean_max_events_per_user": 12,
        "clean_max_events_per_item": 0,
    }
    assert Worker(tiny(settings, train_epochs=2, **cleaning), sessions).run(once=True) == 1

    expected = {
        "types": {"events": 30, "by_type": {"impression": 30}},
        "bot_users": {"users": 1, "events": 600},
        "repeats": {"events": 12},
        "user_cap": {"users": 1, "events": 8},
        "item_cap": {"items": 0, "events": 0},
    }
    kept = chain + stored - 30 - 600 - 12 - 8
    job = job_row(sessions, job_id)
    assert job["status"] == "succeeded", job["error"]
    report = job["metrics"]["cleaning"]
    assert report["dropped"] == expected and report["read"] == chain + stored and report["kept"] == kept
    assert report["rules"]["max_events_per_user"] == 12 and report["rules"]["bot_events_per_minute"] == 120

    answer = client.get(f"/v1/admin/jobs/{job_id}")
    assert answer.status_code == 200
    assert answer.json()["metrics"]["cleaning"]["dropped"] == expected
    with sessions() as s:
        row = registry.get_version(s, job["model_version"])
        assert row is not None
        assert row.data_stats["cleaning"]["dropped"] == expected
        assert row.data_stats["raw_interactions"] == kept
        assert row.data_stats["skipped_types"] == {"impression": 30}
    models = client.get("/v1/admin/models").json()["models"]
    assert models[0]["data"]["cleaning"]["kept"] == kept

    # The same store read with the rules off: only the type rule (from the weights) applies.
    with sessions() as s:
        data = read_training_data(s, weights)
    assert data.cleaning is not None and len(data.log) == chain + stored - 30
    assert "bot" in data.log.users


def test_reco_train_cleans_the_store_and_prints_the_report(
    settings: Settings,
    sessions: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    no_reco_env: None,
) -> None:
    chain = load_chain_world(sessions)
    bot = [e for e in noisy_events() if e.user_id == "bot"]
    stored, _ = load_events(sessions, bot, source="noise")
    monkeypatch.setenv("RECO_DATABASE_URL", settings.database_url)
    monkeypatch.setenv("RECO_ARTIFACT_DIR", str(settings.artifact_dir))
    for name, value in {**TINY, "train_epochs": 2}.items():
        monkeypatch.setenv(f"RECO_{name.upper()}", str(value))
    monkeypatch.setenv("RECO_CLEAN_REPEAT_WINDOW_S", "")  # off; the other rules keep their defaults

    assert main(["train"]) == 0

    out = capsys.readouterr().out
    assert (
        f"cleaning: read {chain + stored}, kept {chain}; dropped: types 0, bot users 1 (600 events), repeats 0, "
        "user cap 0 events of 0 users, item cap 0 events of 0 items"
    ) in out
