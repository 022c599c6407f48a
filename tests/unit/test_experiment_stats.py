"""Experiments: stable assignment and the A/B report math (intervals, tests, verdicts, error rates).

The simulations draw per-user counts with numpy binomials (no loop over impressions) from seeded
generators, so every figure below is reproducible; the measured rates are printed (``pytest -s``).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from app.experiments.assign import assign, assign_many, bucket, validate_shares
from app.experiments.stats import (
    DEFAULT_MIN_EVENTS,
    DEFAULT_MIN_IMPRESSIONS,
    VERDICT_TEST,
    OutcomeColumns,
    UserOutcome,
    holm_adjust,
    normal_cdf,
    normal_ppf,
    ratio_standard_error,
    report,
    two_proportion_z_test,
    two_sided_p,
    wilson_interval,
)

USERS = [f"user-{i}" for i in range(100_000)]

# ----------------------------------------------------------------------------------------------- helpers


def simulate_arm(
    rng: np.random.Generator,
    users: int,
    ctr: float,
    *,
    impressions_per_user: int = 10,
    purchase_per_click: float = 0.2,
    mean_value: float = 50.0,
    concentration: float | None = None,
) -> OutcomeColumns:
    """Per-user counts for one arm: clicks ~ Binomial(impressions, ctr_u), conversions ~ Binomial(clicks, q),
    revenue the sum of Gamma(4, mean/4) purchase values (a Gamma(4k, mean/4) draw for k purchases).

    With ``concentration`` each user's own CTR is Beta(ctr * c, (1 - ctr) * c): users differ in how much
    they click, and one user's impressions are correlated (intra-user correlation 1 / (c + 1)).
    """
    impressions = np.full(users, impressions_per_user)
    if concentration is None:
        user_ctr: float | np.ndarray = ctr
    else:
        user_ctr = rng.beta(ctr * concentration, (1.0 - ctr) * concentration, size=users)
    clicks = rng.binomial(impressions, user_ctr)
    conversions = rng.binomial(clicks, purchase_per_click)
    shape = 4.0
    revenue = np.where(
        conversions > 0, rng.gamma(np.maximum(conversions, 1) * shape, mean_value / shape), 0.0
    )
    return OutcomeColumns.from_arrays(impressions, clicks, conversions, revenue)


def as_outcomes(columns: OutcomeColumns) -> list[UserOutcome]:
    """The same arm as a list of ``UserOutcome`` (the documented input type)."""
    return [
        UserOutcome(int(i), int(c), int(v), float(r))
        for i, c, v, r in zip(
            columns.impressions, columns.clicks, columns.conversions, columns.revenue, strict=True
        )
    ]


def five_sigma(count: int, total: int, share: float) -> bool:
    """Whether ``count`` of ``total`` lies within 5 binomial standard deviations of ``total * share``."""
    return abs(count - total * share) <= 5.0 * math.sqrt(total * share * (1.0 - share))


# ----------------------------------------------------------------------------------------------- assign


def test_bucket_is_pinned_and_follows_the_documented_formula() -> None:
    assert bucket("user-1", "exp-1") == 0.9940276010559971
    digest = hashlib.blake2b(b"exp-1\x00user-1", digest_size=8).digest()
    assert bucket("user-1", "exp-1") == int.from_bytes(digest, "big") / 2**64
    assert [bucket("user-1", "exp-1") for _ in range(3)] == [0.9940276010559971] * 3
    assert all(0.0 <= bucket(user, "exp-1") < 1.0 for user in USERS[:1000])


def test_bucket_is_the_same_in_another_process_with_another_hash_seed() -> None:
    code = "from app.experiments.assign import bucket; print(repr(bucket('user-1', 'exp-1')))"
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    output = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, timeout=60
    ).stdout
    assert output.strip() == "0.9940276010559971"


def test_experiment_id_with_nul_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        bucket("u", "exp\x00x")
    with pytest.raises(ValueError, match="NUL"):
        assign("u", "exp\x00x", [("a", 1.0)])


@pytest.mark.parametrize(
    "shares",
    [(0.5, 0.5), (0.9, 0.1), (0.2, 0.3, 0.5), (0.1, 0.2, 0.3, 0.4)],
)
def test_shares_hold_over_100k_users(shares: tuple[float, ...]) -> None:
    variants = tuple((f"v{i}", share) for i, share in enumerate(shares))
    assigned = assign_many(USERS, "exp-shares", variants)
    for name, share in variants:
        count = assigned.count(name)
        assert five_sigma(count, len(USERS), share), (name, share, count)
    sample = USERS[:2000]
    assert [assign(user, "exp-shares", variants) for user in sample] == assigned[:2000]
    assert [assign(user, "exp-shares", list(variants)) for user in sample] == assigned[:2000]


def test_intervals_are_cumulative_in_the_given_order() -> None:
    variants = [("first", 0.2), ("second", 0.3), ("third", 0.5)]
    for user in USERS[:3000]:
        value = bucket(user, "exp-order")
        expected = "first" if value < 0.2 else "second" if value < 0.5 else "third"
        assert assign(user, "exp-order", variants) == expected


def test_assigning_100k_users_is_fast() -> None:
    variants = (("control", 0.5), ("treatment", 0.5))
    best_single = best_many = math.inf
    for _ in range(3):
        started = time.perf_counter()
        for user in USERS:
            assign(user, "exp-speed", variants)
        best_single = min(best_single, time.perf_counter() - started)
        started = time.perf_counter()
        assign_many(USERS, "exp-speed", variants)
        best_many = min(best_many, time.perf_counter() - started)
    print(f"\nassign: 100k users {best_single:.3f} s one by one, {best_many:.3f} s with assign_many")
    assert best_single < 0.3
    assert best_many < 0.3


def test_buckets_of_two_experiments_are_independent() -> None:
    a = np.array([bucket(user, "exp-A") for user in USERS])
    b = np.array([bucket(user, "exp-B") for user in USERS])
    n = len(USERS)
    correlation = float(np.corrcoef(a, b)[0, 1])
    assert abs(correlation) < 5.0 / math.sqrt(n), correlation
    # The 2x2 table of 50/50 assignments: every cell holds a quarter of the users.
    for in_a in (a < 0.5, a >= 0.5):
        for in_b in (b < 0.5, b >= 0.5):
            assert five_sigma(int(np.count_nonzero(in_a & in_b)), n, 0.25)
    # Being in the treatment half of A does not move the mean bucket in B.
    assert abs(float(b[a < 0.5].mean()) - float(b[a >= 0.5].mean())) < 5.0 * math.sqrt(2 * (1 / 12) / (n / 2))


@pytest.mark.parametrize(
    ("variants", "message"),
    [
        ([], "empty"),
        ([("a", 0.5), ("a", 0.5)], "'a' appears more than once"),
        ([("a", 1.0), ("b", 0.0)], "variant 'b' has share 0.0: shares must be > 0"),
        ([("a", 1.5), ("b", -0.5)], "variant 'b' has share -0.5"),
        ([("a", 0.5), ("b", 0.4)], r"sum to 0.9.*\+0.1"),
        ([("a", 0.6), ("b", 0.6)], r"sum to 1.2.*-0.2"),
        ([("a", float("nan"))], "finite"),
        ([("", 1.0)], "non-empty"),
        ([("a", 0.5, "x")], "pair"),
    ],
)
def test_validate_shares_says_what_is_wrong(variants: list[tuple[str, float]], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_shares(variants)
    with pytest.raises(ValueError, match=message):
        assign("u", "exp", variants)


def test_validate_shares_accepts_rounding_within_tolerance() -> None:
    validate_shares([("a", 1 / 3), ("b", 1 / 3), ("c", 1 / 3)])
    validate_shares([("a", 0.1)] * 0 + [("a", 0.7), ("b", 0.2), ("c", 0.1)])
    assert assign("u", "exp", [("only", 1.0)]) == "only"


# ----------------------------------------------------------------------------------------------- math


def test_normal_helpers() -> None:
    assert normal_cdf(0.0) == pytest.approx(0.5)
    assert normal_cdf(1.959963984540054) == pytest.approx(0.975, abs=1e-12)
    assert two_sided_p(1.959963984540054) == pytest.approx(0.05, abs=1e-12)
    assert two_sided_p(-3.0) == pytest.approx(0.0026997960632601866, rel=1e-9)
    assert normal_ppf(0.8) == pytest.approx(0.8416212335729143, rel=1e-9)
    # erfc keeps the far tail where 1 - cdf would round to 0
    assert two_sided_p(10.0) == pytest.approx(1.5239706e-23, rel=1e-6)
    with pytest.raises(ValueError):
        normal_ppf(1.0)


def test_wilson_interval_against_hand_computed_values() -> None:
    # 10/100, z = 1.96: centre (0.1 + 0.019208) / 1.038416 = 0.114798, half-width 0.059570.
    low, high = wilson_interval(10, 100)
    assert low == pytest.approx(0.0552, abs=1e-4)
    assert high == pytest.approx(0.1744, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0
    assert wilson_interval(0, 10)[1] == pytest.approx(0.2775, abs=1e-4)
    assert wilson_interval(10, 10)[1] == 1.0
    low99, high99 = wilson_interval(10, 100, alpha=0.01)
    assert low99 < low and high99 > high
    with pytest.raises(ValueError):
        wilson_interval(1, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)


def test_two_proportion_z_test_against_a_hand_computed_case() -> None:
    # 50/1000 vs 70/1000: pooled 0.06, se = sqrt(0.06 * 0.94 * 2 / 1000) = 0.0106207, z = 0.02 / se.
    z, p = two_proportion_z_test(50, 1000, 70, 1000)
    assert z == pytest.approx(1.88311, abs=1e-4)
    assert p == pytest.approx(0.05968, abs=1e-4)
    z_reverse, p_reverse = two_proportion_z_test(70, 1000, 50, 1000)
    assert z_reverse == pytest.approx(-z) and p_reverse == pytest.approx(p)
    assert two_proportion_z_test(0, 100, 0, 200) == (0.0, 1.0)


def test_holm_adjust() -> None:
    assert holm_adjust([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm_adjust([0.5]) == [0.5]
    assert holm_adjust([0.6, 0.9]) == pytest.approx([1.0, 1.0])
    assert holm_adjust([]) == []


def test_ratio_standard_error_matches_the_binomial_one_for_identical_users() -> None:
    rng = np.random.default_rng(7)
    impressions = np.full(50_000, 10.0)
    clicks = rng.binomial(10, 0.05, size=50_000).astype(np.float64)
    se = ratio_standard_error(clicks, impressions)
    assert se is not None
    assert se == pytest.approx(math.sqrt(0.05 * 0.95 / 500_000), rel=0.03)
    assert ratio_standard_error(clicks[:1], impressions[:1]) is None


# ----------------------------------------------------------------------------------------------- report


def test_synthetic_shop_b_truly_better_wins() -> None:
    rng = np.random.default_rng(2024)
    control = simulate_arm(rng, 20_000, 0.05)
    treated = simulate_arm(rng, 20_000, 0.055)
    stats = report({"A": as_outcomes(control), "B": as_outcomes(treated)}, "A", bootstrap=500)
    comparison = stats.comparison("B")
    assert comparison.verdict == "better"
    assert stats.winner == "B"
    assert stats.correction == "none" and stats.verdict_test == VERDICT_TEST
    assert comparison.ctr_p_value is not None and comparison.ctr_p_value < 1e-4
    assert comparison.ctr_lift_interval is not None and comparison.ctr_lift_interval.contains(0.005)
    assert comparison.ctr_relative_lift == pytest.approx(0.1, abs=0.05)
    for name in ("A", "B"):
        variant = stats.variant(name)
        assert variant.users == 20_000 and variant.impressions == 200_000
        assert variant.ctr_interval is not None and variant.ctr_interval.contains(variant.ctr or -1.0)
        assert variant.revenue_per_impression_interval is not None
    assert stats.variant("A").ctr_interval.contains(0.05)  # type: ignore[union-attr]
    assert stats.variant("B").ctr_interval.contains(0.055)  # type: ignore[union-attr]
    assert stats.summary.startswith("B beats control A on CTR")
    encoded = json.dumps(stats.as_dict(), allow_nan=False)
    assert json.loads(encoded)["winner"] == "B"


def _declared_rate(runs: int, users: int, ctr: float, *, arms: int = 2, seed: int) -> float:
    """Share of seeded A/A(/A...) experiments with a winner declared (all arms have the same true CTR)."""
    rng = np.random.default_rng(seed)
    declared = 0
    for _ in range(runs):
        variants = {f"v{i}": simulate_arm(rng, users, ctr) for i in range(arms)}
        stats = report(variants, "v0", bootstrap=0)
        declared += any(c.verdict in ("better", "worse") for c in stats.comparisons)
    return declared / runs


def test_a_a_false_positive_rate_is_near_alpha() -> None:
    rate = _declared_rate(400, 2000, 0.05, seed=11)
    print(
        f"\nA/A, 400 runs, 2 x 2000 users x 10 impressions, CTR 5%: declared-winner rate {rate:.4f} (alpha 0.05)"
    )
    assert 0.01 <= rate <= 0.08


def test_a_a_a_false_positive_rate_is_held_by_holm() -> None:
    rate = _declared_rate(300, 2000, 0.05, arms=3, seed=12)
    print(f"\nA/A/A, 300 runs, Holm over 2 comparisons: family-wise declared rate {rate:.4f} (alpha 0.05)")
    assert 0.005 <= rate <= 0.08


def test_user_level_test_holds_alpha_where_the_pooled_z_test_does_not() -> None:
    """Users who differ in click propensity make one user's impressions correlated: the pooled z-test
    (impressions as independent trials) then over-declares; the verdict's user-level test does not."""
    rng = np.random.default_rng(13)
    runs = 300
    verdict_positive = pooled_positive = 0
    for _ in range(runs):
        variants = {
            name: simulate_arm(rng, 2000, 0.05, impressions_per_user=20, concentration=10.0) for name in "AB"
        }
        comparison = report(variants, "A", bootstrap=0).comparison("B")
        assert comparison.ctr_p_value is not None and comparison.ctr_p_value_pooled is not None
        verdict_positive += comparison.verdict in ("better", "worse")
        pooled_positive += comparison.ctr_p_value_pooled < 0.05
    verdict_rate, pooled_rate = verdict_positive / runs, pooled_positive / runs
    print(
        f"\nA/A with heterogeneous users: verdict rate {verdict_rate:.4f}, pooled z-test rate {pooled_rate:.4f}"
    )
    assert 0.01 <= verdict_rate <= 0.08
    assert pooled_rate >= 0.15


def test_power_at_the_reported_minimum_detectable_effect() -> None:
    """5% vs 5.5% with ~31,300 impressions per arm is sized for 80% power: measured power and the reported
    minimum detectable effect agree with that."""
    rng = np.random.default_rng(14)
    runs = 200
    better = 0
    mdes = []
    for _ in range(runs):
        stats = report(
            {"A": simulate_arm(rng, 3130, 0.05), "B": simulate_arm(rng, 3130, 0.055)}, "A", bootstrap=0
        )
        comparison = stats.comparison("B")
        better += comparison.verdict == "better"
        assert comparison.ctr_minimum_detectable_effect is not None
        mdes.append(comparison.ctr_minimum_detectable_effect)
    power = better / runs
    mde = float(np.median(mdes))
    print(
        f"\npower, 200 runs, 2 x 3130 users x 10 impressions, CTR 5% -> 5.5%: {power:.3f}; median MDE {mde:.5f}"
    )
    assert 0.70 <= power <= 0.90
    assert mde == pytest.approx(0.005, rel=0.1)


def test_small_sample_is_too_small() -> None:
    rng = np.random.default_rng(15)
    stats = report({"A": simulate_arm(rng, 50, 0.05), "B": simulate_arm(rng, 50, 0.08)}, "A", bootstrap=200)
    comparison = stats.comparison("B")
    assert comparison.verdict == "too_small"
    assert stats.winner is None
    assert any(f"needs {DEFAULT_MIN_IMPRESSIONS}" in reason for reason in comparison.reasons)
    assert any(f"needs {DEFAULT_MIN_EVENTS}" in reason for reason in comparison.reasons)
    assert comparison.ctr_minimum_detectable_effect is not None
    assert comparison.ctr_minimum_detectable_effect > 0.02  # 500 impressions per arm only see big changes
    assert stats.summary.startswith("Too small to call")
    assert "80% power" in stats.summary


def test_thresholds_are_configurable() -> None:
    rng = np.random.default_rng(16)
    variants = {"A": simulate_arm(rng, 50, 0.05), "B": simulate_arm(rng, 50, 0.05)}
    stats = report(variants, "A", min_users=10, min_impressions=100, min_events=5, bootstrap=0)
    assert stats.comparison("B").verdict != "too_small"


def test_revenue_bootstrap_detects_higher_purchase_values() -> None:
    rng = np.random.default_rng(17)
    control = simulate_arm(rng, 10_000, 0.05, mean_value=50.0)
    treated = simulate_arm(rng, 10_000, 0.05, mean_value=65.0)
    stats = report({"A": control, "B": treated}, "A", bootstrap=1000, seed=3)
    comparison = stats.comparison("B")
    interval = comparison.revenue_per_impression_lift_interval
    assert interval is not None and interval.low > 0.0
    assert interval.contains(0.05 * 0.2 * 15.0)  # true lift: CTR x purchases per click x value difference
    assert comparison.revenue_per_impression_p_value is not None
    assert comparison.revenue_per_impression_p_value < 0.01
    assert comparison.revenue_per_impression_relative_lift == pytest.approx(0.3, abs=0.15)
    assert stats.variant("B").revenue_per_impression_interval.contains(0.65)  # type: ignore[union-attr]


def test_revenue_bootstrap_interval_covers_zero_without_a_difference() -> None:
    rng = np.random.default_rng(18)
    runs = 60
    covered = 0
    for seed in range(runs):
        variants = {name: simulate_arm(rng, 600, 0.05) for name in "AB"}
        interval = (
            report(variants, "A", bootstrap=400, seed=seed)
            .comparison("B")
            .revenue_per_impression_lift_interval
        )
        covered += interval is not None and interval.contains(0.0)
    print(f"\nrevenue bootstrap, A/A, {runs} runs: the 95% lift interval covers 0 in {covered / runs:.3f}")
    assert covered / runs >= 0.85


def test_bootstrap_is_seeded() -> None:
    rng = np.random.default_rng(19)
    variants = {name: simulate_arm(rng, 1000, 0.05) for name in "AB"}
    first = report(variants, "A", bootstrap=300, seed=5).as_dict()
    assert report(variants, "A", bootstrap=300, seed=5).as_dict() == first
    other = report(variants, "A", bootstrap=300, seed=6).as_dict()
    assert (
        other["comparisons"][0]["revenue_per_impression_lift_interval"]
        != (first["comparisons"][0]["revenue_per_impression_lift_interval"])
    )
    # Without bootstrap the robustness fields are None and everything else is unchanged.
    plain = report(variants, "A", bootstrap=0).comparison("B")
    assert plain.revenue_per_impression_lift_interval is None and plain.ctr_p_value_bootstrap is None
    assert plain.ctr_p_value == first["comparisons"][0]["ctr_p_value"]


def _fixed_arm(users: int, clicks_per_user: int) -> OutcomeColumns:
    """An arm of identical users with a spread of clicks (users alternate between two click counts)."""
    clicks = np.where(np.arange(users) % 2 == 0, clicks_per_user, clicks_per_user + 2)
    return OutcomeColumns.from_arrays(np.full(users, 100), clicks, np.zeros(users), np.zeros(users))


def test_winner_rules_with_three_or_more_variants() -> None:
    base = _fixed_arm(5000, 4)  # CTR 5%
    up = _fixed_arm(5000, 6)  # CTR 7%
    down = _fixed_arm(5000, 2)  # CTR 3%
    same = _fixed_arm(5000, 4)

    one_better = report({"A": base, "B": up, "C": same}, "A", bootstrap=0)
    assert one_better.correction == "holm"
    assert [c.verdict for c in one_better.comparisons] == ["better", "no_difference"]
    assert one_better.winner == "B"
    assert "Holm-corrected over 2 comparisons" in one_better.summary

    better_and_worse = report({"A": base, "B": up, "C": down}, "A", bootstrap=0)
    assert better_and_worse.winner == "B"

    two_better = report({"A": base, "B": up, "C": _fixed_arm(5000, 6)}, "A", bootstrap=0)
    assert two_better.winner is None
    assert two_better.summary.startswith("Several variants beat control A")

    all_worse = report({"A": up, "B": base, "C": down}, "A", bootstrap=0)
    assert all_worse.winner == "A"
    assert all_worse.summary.startswith("Control A beats every other variant")

    nothing = report({"A": base, "B": same}, "A", bootstrap=0)
    assert nothing.comparison("B").verdict == "no_difference" and nothing.winner is None
    assert nothing.summary.startswith("No variant differs significantly")
    assert "would be detected at 80% power" in nothing.summary


def test_holm_correction_changes_a_borderline_verdict() -> None:
    """A p-value between alpha/2 and alpha is significant alone and not with two comparisons."""
    rng = np.random.default_rng(20)
    for _ in range(200):
        a, b, c = (simulate_arm(rng, 3000, 0.05) for _ in range(3))
        two = report({"A": a, "B": b}, "A", bootstrap=0).comparison("B")
        assert two.ctr_p_value is not None
        if 0.025 < two.ctr_p_value < 0.05:
            break
    else:
        pytest.fail("no borderline A/A draw found")
    three = report({"A": a, "B": b, "C": c}, "A", bootstrap=0).comparison("B")
    assert two.verdict in ("better", "worse")
    assert three.ctr_p_value == two.ctr_p_value
    assert three.ctr_p_value_adjusted is not None and three.ctr_p_value_adjusted >= 0.05
    assert three.verdict == "no_difference"


def test_empty_arm_is_json_safe_and_too_small() -> None:
    empty = OutcomeColumns.from_arrays([], [], [], [])
    rng = np.random.default_rng(21)
    stats = report({"A": simulate_arm(rng, 500, 0.05), "B": empty}, "A")
    variant = stats.variant("B")
    assert variant.users == 0 and variant.ctr is None and variant.ctr_interval is None
    assert stats.comparison("B").verdict == "too_small"
    json.dumps(stats.as_dict(), allow_nan=False)
    zero_impressions = [UserOutcome(0, 0, 0, 0.0)] * 200
    stats = report({"A": simulate_arm(rng, 500, 0.05), "B": zero_impressions}, "A", bootstrap=50)
    assert stats.comparison("B").verdict == "too_small"
    json.dumps(stats.as_dict(), allow_nan=False)


def test_report_rejects_bad_input() -> None:
    rng = np.random.default_rng(22)
    arm = simulate_arm(rng, 100, 0.05)
    with pytest.raises(ValueError, match="control 'X'"):
        report({"A": arm, "B": arm}, "X")
    with pytest.raises(ValueError, match="at least one other variant"):
        report({"A": arm}, "A")
    with pytest.raises(ValueError, match="alpha"):
        report({"A": arm, "B": arm}, "A", alpha=1.5)
    with pytest.raises(ValueError, match="more clicks than impressions"):
        report({"A": arm, "B": [UserOutcome(1, 2, 0, 0.0)]}, "A")
    with pytest.raises(ValueError, match="negative"):
        report({"A": arm, "B": [UserOutcome(1, 0, 0, -1.0)]}, "A")
    with pytest.raises(ValueError, match="differ in length"):
        OutcomeColumns.from_arrays([1, 2], [0], [0], [0])
