"""Attribution and the experiment report end to end (impression and event rows in, verdict out): a click
counts once however often it is reported; a truly better variant of a synthetic shop wins; an A/A experiment
declares a winner no more often than its stated false-positive rate."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np

from app.experiments.assign import assign
from app.experiments.attribution import Acted, Shown, attribute, outcomes_by_variant
from app.experiments.stats import report

T0 = datetime(2026, 12, 1, tzinfo=UTC)
WINDOW = 3600.0


def test_a_click_reported_twice_counts_once_and_windows_hold() -> None:
    shown = [Shown("r1", "u1", "a", 1, "A", T0), Shown("r1", "u1", "b", 2, "A", T0)]
    later = T0 + timedelta(minutes=5)
    acted = [
        Acted("u1", "a", "click", None, later, "r1"),
        Acted("u1", "a", "click", None, later, "r1"),  # a client retry without an event id
        Acted("u1", "a", "view", None, later, None),  # the item page: the same (answer, item)
        Acted("u1", "b", "click", None, T0 + timedelta(hours=2), None),  # outside the window
        Acted("u1", "c", "click", None, later, None),  # never shown
        Acted("u1", "b", "click", None, T0 - timedelta(minutes=1), None),  # before it was shown
    ]
    got = attribute(shown, acted, WINDOW)
    assert got.clicked == {("r1", "a")}
    purchase = [
        Acted("u1", "b", "purchase", 20.0, later, None),
        Acted("u1", "b", "purchase", 5.0, later, None),
    ]
    got = attribute(shown, purchase, WINDOW)
    assert got.converted == {("r1", "b")} and got.clicked == {("r1", "b")}
    assert got.revenue[("r1", "b")] == 25.0
    outcome = outcomes_by_variant(shown, got)["A"][0]
    assert (outcome.impressions, outcome.clicks, outcome.conversions, outcome.revenue) == (2, 1, 1, 25.0)


def simulate(seed: int, ctr: dict[str, float], n_users: int = 3000, per_user: int = 10) -> dict:
    """A synthetic shop: each user is assigned by the hash, sees `per_user` items over answers, clicks each
    with their variant's rate (reported twice at random); the report comes from the rows."""
    rng = np.random.default_rng(seed)
    shares = [(name, 1 / len(ctr)) for name in ctr]
    shown: list[Shown] = []
    acted: list[Acted] = []
    for u in range(n_users):
        user = f"s{seed}-u{u}"
        variant = assign(user, f"exp{seed}", shares)
        clicks = rng.random(per_user) < ctr[variant]
        for j in range(per_user):
            rid = f"{user}-r{j // 5}"
            ts = T0 + timedelta(seconds=j)
            shown.append(Shown(rid, user, f"i{j}", j % 5 + 1, variant, ts))
            if clicks[j]:
                for _ in range(1 + int(rng.random() < 0.3)):
                    acted.append(Acted(user, f"i{j}", "click", None, ts + timedelta(seconds=30), rid))
    by_variant = outcomes_by_variant(shown, attribute(shown, acted, WINDOW))
    return report(by_variant, next(iter(ctr)), bootstrap=0).as_dict()


def test_a_truly_better_variant_wins_on_the_synthetic_shop() -> None:
    out = simulate(1, {"control": 0.05, "better": 0.07})
    assert out["winner"] == "better"
    assert out["comparisons"][0]["verdict"] == "better"


def test_a_a_declares_a_winner_at_most_at_the_stated_rate() -> None:
    runs = 40
    winners = sum(
        simulate(100 + s, {"a": 0.05, "b": 0.05}, n_users=1000)["winner"] is not None for s in range(runs)
    )
    # alpha = 0.05: 2 of 40 expected; 7 or more would happen by chance with probability < 0.3%.
    assert winners <= 6, winners
