"""The A/B report math: per-variant rates with intervals, comparisons against control, a verdict.

Input per variant is one aggregate per user (``UserOutcome``, or the columnar ``OutcomeColumns``).
The user is the unit of randomisation, so impressions of one user are not independent trials: a user who
clicks a lot clicks on many of their impressions. The statistics follow from that:

* **Rates** (CTR = clicks / impressions, conversion rate = conversions / impressions) get a Wilson score
  interval at ``1 - alpha``, the textbook interval for a proportion.
* **CTR comparison, the verdict test**: a two-sided z-test on the CTR difference whose standard error comes
  from the *delta method at the user level* (each CTR is a ratio of per-user sums, its variance estimated
  from the per-user residuals ``clicks_i - ctr * impressions_i``). It stays valid when users differ in how
  much they click, where the pooled two-proportion z-test (also reported, ``ctr_p_value_pooled``) treats
  every impression as an independent trial and then declares far too many winners. With identical users the
  two agree. A user-level bootstrap p-value of the CTR difference is reported as a robustness check.
* **Conversion rate comparison**: the pooled two-proportion z-test (reported, not used for the verdict).
* **Revenue per impression**: a percentile bootstrap over users (users resampled with replacement within each
  arm, ``bootstrap`` replicates, seeded, vectorised) for each arm's interval and for the lift's interval and
  p-value (twice the smaller tail share of replicate differences on either side of 0).
* **Several treatment variants**: the verdict p-values are Holm-corrected over the ``k`` comparisons against
  control (``ctr_p_value_adjusted``); the minimum detectable effect uses the Bonferroni level ``alpha / k``.

Verdicts (per comparison, on CTR): ``too_small`` when either arm has fewer than ``min_users`` users
(default 100: the user-level test needs enough users for its normal approximation), fewer than
``min_impressions`` impressions (default 1000) or fewer than ``min_events`` clicks (default 30: below that
the normal approximation of a proportion is poor); otherwise ``no_difference`` when the adjusted p-value is
``>= alpha``, else ``better`` / ``worse`` by the sign of the CTR difference. Every comparison also carries
the minimum detectable CTR difference at 80% power for the current sample.

The overall ``winner`` is the one variant judged ``better`` when exactly one is, ``control`` when every other
variant is judged ``worse``, and ``None`` otherwise.

Nothing here needs scipy: the normal CDF is ``math.erfc`` and its inverse ``statistics.NormalDist``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

__all__ = [
    "DEFAULT_MIN_EVENTS",
    "DEFAULT_MIN_IMPRESSIONS",
    "DEFAULT_MIN_USERS",
    "POWER",
    "VERDICT_TEST",
    "Comparison",
    "ExperimentStats",
    "Interval",
    "OutcomeColumns",
    "UserOutcome",
    "VariantStats",
    "Verdict",
    "holm_adjust",
    "normal_cdf",
    "normal_ppf",
    "ratio_standard_error",
    "report",
    "two_proportion_z_test",
    "two_sided_p",
    "wilson_interval",
]

DEFAULT_MIN_IMPRESSIONS = 1000
"""Per arm: fewer impressions than this and a comparison is ``too_small``."""
DEFAULT_MIN_EVENTS = 30
"""Per arm: fewer clicks than this and a comparison is ``too_small`` (the normal approximation needs events)."""
DEFAULT_MIN_USERS = 100
"""Per arm: fewer users than this and a comparison is ``too_small`` (the user-level variance needs users)."""
POWER = 0.8
"""The power at which the minimum detectable effect is reported."""
VERDICT_TEST = "ctr_delta_method_z_test_user_level"
"""The test behind every verdict: see the module docstring."""

Verdict = Literal["too_small", "no_difference", "better", "worse"]

_STANDARD_NORMAL = NormalDist()
_BOOTSTRAP_CELLS = 4_000_000
"""How many resampled user indices one bootstrap chunk may hold (bounds the memory: 32 MB of int64)."""

FloatArray = npt.NDArray[np.float64]


# ----------------------------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class UserOutcome:
    """One user's aggregates in one variant."""

    impressions: int
    """Items shown to the user in this variant."""
    clicks: int
    """Distinct (recommendation, item) pairs clicked (already deduplicated by the caller)."""
    conversions: int
    """Distinct (recommendation, item) pairs purchased."""
    revenue: float
    """Sum of the purchase values attributed."""


@dataclass(frozen=True, slots=True, eq=False)
class OutcomeColumns:
    """The same per-user aggregates as parallel arrays (one entry per user): the fast input for many users."""

    impressions: FloatArray
    clicks: FloatArray
    conversions: FloatArray
    revenue: FloatArray

    @classmethod
    def from_arrays(
        cls,
        impressions: npt.ArrayLike,
        clicks: npt.ArrayLike,
        conversions: npt.ArrayLike,
        revenue: npt.ArrayLike,
    ) -> OutcomeColumns:
        """Columns from array-likes of equal length; raises ValueError on shape or value problems."""
        columns = cls(
            impressions=np.asarray(impressions, dtype=np.float64).reshape(-1),
            clicks=np.asarray(clicks, dtype=np.float64).reshape(-1),
            conversions=np.asarray(conversions, dtype=np.float64).reshape(-1),
            revenue=np.asarray(revenue, dtype=np.float64).reshape(-1),
        )
        columns._check()
        return columns

    @classmethod
    def from_outcomes(cls, outcomes: Sequence[UserOutcome]) -> OutcomeColumns:
        """Columns from a sequence of ``UserOutcome``."""
        count = len(outcomes)
        return cls.from_arrays(
            np.fromiter((o.impressions for o in outcomes), dtype=np.float64, count=count),
            np.fromiter((o.clicks for o in outcomes), dtype=np.float64, count=count),
            np.fromiter((o.conversions for o in outcomes), dtype=np.float64, count=count),
            np.fromiter((o.revenue for o in outcomes), dtype=np.float64, count=count),
        )

    @property
    def users(self) -> int:
        """The number of users."""
        return int(self.impressions.shape[0])

    def _check(self) -> None:
        sizes = {a.shape[0] for a in (self.impressions, self.clicks, self.conversions, self.revenue)}
        if len(sizes) != 1:
            raise ValueError(
                f"impressions, clicks, conversions and revenue differ in length: {sorted(sizes)}"
            )
        for name in ("impressions", "clicks", "conversions", "revenue"):
            values = getattr(self, name)
            if not np.all(np.isfinite(values)):
                raise ValueError(f"{name} holds a NaN or infinite value")
            if np.any(values < 0):
                raise ValueError(f"{name} holds a negative value")
        if np.any(self.clicks > self.impressions):
            raise ValueError("a user has more clicks than impressions (clicks count distinct shown items)")
        if np.any(self.conversions > self.impressions):
            raise ValueError(
                "a user has more conversions than impressions (conversions count distinct shown items)"
            )


# ----------------------------------------------------------------------------------------------- outputs


def _json_safe(value: Any) -> Any:
    """NaN and infinities become None; tuples become lists (``json.dumps`` then needs nothing special)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(item) for item in value]
    return value


@dataclass(frozen=True, slots=True)
class Interval:
    """A two-sided confidence interval."""

    low: float
    high: float

    def contains(self, value: float) -> bool:
        """Whether ``value`` lies inside (bounds included)."""
        return self.low <= value <= self.high

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return _json_safe(asdict(self))


@dataclass(frozen=True, slots=True)
class VariantStats:
    """One arm's totals and rates. Rates are None when the arm has no impressions."""

    name: str
    users: int
    impressions: int
    clicks: int
    conversions: int
    revenue: float
    ctr: float | None
    ctr_interval: Interval | None
    """Wilson interval at ``1 - alpha``."""
    conversion_rate: float | None
    """Conversions per impression."""
    conversion_rate_interval: Interval | None
    """Wilson interval at ``1 - alpha``."""
    revenue_per_impression: float | None
    revenue_per_impression_interval: Interval | None
    """Percentile bootstrap over users at ``1 - alpha``; None when ``bootstrap`` is 0."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return _json_safe(asdict(self))


@dataclass(frozen=True, slots=True)
class Comparison:
    """One non-control variant against control. Lifts are variant minus control; relative lifts divide by
    control's value (None when that is 0). ``ctr_p_value`` is the verdict test's raw p-value,
    ``ctr_p_value_adjusted`` the Holm-corrected one the verdict compares with ``alpha``."""

    variant: str
    control: str
    verdict: Verdict
    reasons: tuple[str, ...]
    """Why the verdict is ``too_small`` (empty otherwise)."""
    ctr_lift: float | None
    ctr_relative_lift: float | None
    ctr_lift_interval: Interval | None
    """Delta-method interval at ``1 - alpha`` (not multiplicity-corrected)."""
    ctr_p_value: float | None
    ctr_p_value_adjusted: float | None
    ctr_p_value_pooled: float | None
    """Pooled two-proportion z-test over impressions: reported, not used (ignores per-user correlation)."""
    ctr_p_value_bootstrap: float | None
    """User-level bootstrap p-value of the CTR difference: a robustness check; None without bootstrap."""
    ctr_minimum_detectable_effect: float | None
    """Smallest absolute CTR difference detected with 80% power at level ``alpha / k`` for this sample."""
    ctr_minimum_detectable_relative_effect: float | None
    conversion_rate_lift: float | None
    conversion_rate_relative_lift: float | None
    conversion_rate_p_value: float | None
    """Pooled two-proportion z-test over impressions (not multiplicity-corrected)."""
    revenue_per_impression_lift: float | None
    revenue_per_impression_relative_lift: float | None
    revenue_per_impression_lift_interval: Interval | None
    """Percentile bootstrap over users at ``1 - alpha``; None without bootstrap."""
    revenue_per_impression_p_value: float | None
    """Bootstrap p-value (not multiplicity-corrected); None without bootstrap."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form."""
        return _json_safe(asdict(self))


@dataclass(frozen=True, slots=True)
class ExperimentStats:
    """The whole report: settings, one ``VariantStats`` per arm (control first), one ``Comparison`` per
    non-control arm, the winner (or None) and a sentence for people."""

    control: str
    alpha: float
    verdict_test: str
    correction: str
    """``"none"`` for a single comparison, else ``"holm"`` over the comparisons against control."""
    min_users: int
    min_impressions: int
    min_events: int
    bootstrap: int
    seed: int
    variants: tuple[VariantStats, ...]
    comparisons: tuple[Comparison, ...]
    winner: str | None
    summary: str

    def variant(self, name: str) -> VariantStats:
        """The stats of arm ``name`` (KeyError if absent)."""
        for stats in self.variants:
            if stats.name == name:
                return stats
        raise KeyError(name)

    def comparison(self, name: str) -> Comparison:
        """The comparison of variant ``name`` against control (KeyError if absent)."""
        for comparison in self.comparisons:
            if comparison.variant == name:
                return comparison
        raise KeyError(name)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form (NaN and infinities as None)."""
        return _json_safe(asdict(self))


# ----------------------------------------------------------------------------------------------- math


def normal_cdf(z: float) -> float:
    """P(Z <= z) for a standard normal Z, via ``math.erfc`` (accurate far into both tails)."""
    return 0.5 * math.erfc(-z / math.sqrt(2.0))


def two_sided_p(z: float) -> float:
    """P(|Z| >= |z|) for a standard normal Z."""
    return math.erfc(abs(z) / math.sqrt(2.0))


def normal_ppf(p: float) -> float:
    """The standard normal quantile: ``normal_cdf(normal_ppf(p)) == p`` for 0 < p < 1."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"a normal quantile needs 0 < p < 1, got {p!r}")
    return _STANDARD_NORMAL.inv_cdf(p)


def wilson_interval(successes: float, trials: float, alpha: float = 0.05) -> tuple[float, float]:
    """The Wilson score interval for a proportion at confidence ``1 - alpha``.

    10 successes in 100 trials at alpha 0.05 give (0.0552, 0.1744). Raises ValueError for ``trials <= 0``
    or ``successes`` outside [0, trials].
    """
    if trials <= 0:
        raise ValueError(f"a Wilson interval needs trials > 0, got {trials!r}")
    if not 0 <= successes <= trials:
        raise ValueError(f"successes must lie in [0, trials], got {successes!r} of {trials!r}")
    z = normal_ppf(1.0 - alpha / 2.0)
    p = successes / trials
    z2 = z * z
    denominator = 1.0 + z2 / trials
    centre = (p + z2 / (2.0 * trials)) / denominator
    half = z * math.sqrt(p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)) / denominator
    low = 0.0 if successes == 0 else max(0.0, centre - half)  # exact at the edges, not 1e-17 off
    high = 1.0 if successes == trials else min(1.0, centre + half)
    return low, high


def two_proportion_z_test(
    successes_a: float, trials_a: float, successes_b: float, trials_b: float
) -> tuple[float, float]:
    """Pooled two-proportion z-test of p_b - p_a: returns (z, two-sided p).

    ``z = (p_b - p_a) / sqrt(p (1 - p) (1/n_a + 1/n_b))`` with the pooled ``p``. When the pooled proportion
    is 0 or 1 the two samples agree exactly and the answer is (0, 1).
    """
    if trials_a <= 0 or trials_b <= 0:
        raise ValueError("a two-proportion z-test needs trials > 0 in both samples")
    pooled = (successes_a + successes_b) / (trials_a + trials_b)
    variance = pooled * (1.0 - pooled) * (1.0 / trials_a + 1.0 / trials_b)
    if variance <= 0.0:
        return 0.0, 1.0
    z = (successes_b / trials_b - successes_a / trials_a) / math.sqrt(variance)
    return z, two_sided_p(z)


def ratio_standard_error(numerators: FloatArray, denominators: FloatArray) -> float | None:
    """Delta-method standard error of ``sum(numerators) / sum(denominators)`` over i.i.d. units (users).

    ``Var(R) ~= var(y_i - R x_i) / (n * mean(x)**2)`` with the sample variance (ddof 1). None with fewer
    than 2 units or no denominator.
    """
    count = numerators.shape[0]
    total = float(denominators.sum())
    if count < 2 or total <= 0.0:
        return None
    ratio = float(numerators.sum()) / total
    residuals = numerators - ratio * denominators
    variance = float(residuals.var(ddof=1)) / (count * (total / count) ** 2)
    return math.sqrt(max(variance, 0.0))


def holm_adjust(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values (same order as given): reject where ``adjusted < alpha``.

    Controls the family-wise error rate like Bonferroni, and rejects at least as often.
    """
    count = len(p_values)
    order = sorted(range(count), key=lambda index: p_values[index])
    adjusted = [1.0] * count
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (count - rank) * p_values[index]))
        adjusted[index] = running
    return adjusted


# ----------------------------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True, slots=True)
class _Replicates:
    """Per bootstrap replicate, the resampled arm's totals."""

    impressions: FloatArray
    clicks: FloatArray
    revenue: FloatArray


def _arm_seed(seed: int, name: str) -> np.random.Generator:
    """A generator for one arm that depends on the seed and the arm's name only (not on the other arms)."""
    name_key = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")
    return np.random.default_rng([seed & 0xFFFFFFFFFFFFFFFF, name_key])


def _bootstrap_arm(columns: OutcomeColumns, replicates: int, rng: np.random.Generator) -> _Replicates:
    """Resample the arm's users with replacement ``replicates`` times; totals per replicate (chunked)."""
    users = columns.users
    impressions = np.empty(replicates)
    clicks = np.empty(replicates)
    revenue = np.empty(replicates)
    chunk = max(1, _BOOTSTRAP_CELLS // max(users, 1))
    for start in range(0, replicates, chunk):
        stop = min(replicates, start + chunk)
        picks = rng.integers(0, users, size=(stop - start, users))
        impressions[start:stop] = columns.impressions[picks].sum(axis=1)
        clicks[start:stop] = columns.clicks[picks].sum(axis=1)
        revenue[start:stop] = columns.revenue[picks].sum(axis=1)
    return _Replicates(impressions, clicks, revenue)


def _per_impression(values: FloatArray, impressions: FloatArray) -> FloatArray:
    """values / impressions, NaN where a replicate has no impressions."""
    out = np.full(values.shape, np.nan)
    np.divide(values, impressions, out=out, where=impressions > 0)
    return out


def _percentile_interval(samples: FloatArray, alpha: float) -> Interval | None:
    finite = samples[np.isfinite(samples)]
    if finite.size == 0:
        return None
    low, high = np.quantile(finite, [alpha / 2.0, 1.0 - alpha / 2.0])
    return Interval(float(low), float(high))


def _bootstrap_p(differences: FloatArray) -> float | None:
    """Two-sided bootstrap p-value of "difference = 0": twice the smaller share of replicates at or beyond
    0 on either side, with the +1 correction so that it is never exactly 0."""
    finite = differences[np.isfinite(differences)]
    if finite.size == 0:
        return None
    below = int(np.count_nonzero(finite <= 0.0))
    above = int(np.count_nonzero(finite >= 0.0))
    return min(1.0, 2.0 * (min(below, above) + 1) / (finite.size + 1))


# ----------------------------------------------------------------------------------------------- report


@dataclass(frozen=True, slots=True)
class _Arm:
    name: str
    columns: OutcomeColumns
    impressions: float
    clicks: float
    conversions: float
    revenue: float
    replicates: _Replicates | None

    @property
    def ctr(self) -> float | None:
        return self.clicks / self.impressions if self.impressions > 0 else None

    @property
    def conversion_rate(self) -> float | None:
        return self.conversions / self.impressions if self.impressions > 0 else None

    @property
    def revenue_per_impression(self) -> float | None:
        return self.revenue / self.impressions if self.impressions > 0 else None


def _lifts(treated: float | None, control: float | None) -> tuple[float | None, float | None]:
    if treated is None or control is None:
        return None, None
    lift = treated - control
    return lift, (lift / control if control > 0 else None)


def _variant_stats(arm: _Arm, alpha: float) -> VariantStats:
    def wilson(successes: float) -> Interval | None:
        if arm.impressions <= 0:
            return None
        return Interval(*wilson_interval(successes, arm.impressions, alpha))

    revenue_interval = None
    if arm.replicates is not None:
        revenue_interval = _percentile_interval(
            _per_impression(arm.replicates.revenue, arm.replicates.impressions), alpha
        )
    return VariantStats(
        name=arm.name,
        users=arm.columns.users,
        impressions=round(arm.impressions),
        clicks=round(arm.clicks),
        conversions=round(arm.conversions),
        revenue=arm.revenue,
        ctr=arm.ctr,
        ctr_interval=wilson(arm.clicks),
        conversion_rate=arm.conversion_rate,
        conversion_rate_interval=wilson(arm.conversions),
        revenue_per_impression=arm.revenue_per_impression,
        revenue_per_impression_interval=revenue_interval,
    )


def _too_small_reasons(arm: _Arm, min_users: int, min_impressions: int, min_events: int) -> list[str]:
    reasons = []
    if arm.columns.users < min_users:
        reasons.append(f"{arm.name} has {arm.columns.users} users (needs {min_users})")
    if arm.impressions < min_impressions:
        reasons.append(f"{arm.name} has {round(arm.impressions)} impressions (needs {min_impressions})")
    if arm.clicks < min_events:
        reasons.append(f"{arm.name} has {round(arm.clicks)} clicks (needs {min_events})")
    return reasons


@dataclass(frozen=True, slots=True)
class _Raw:
    """A comparison before the multiplicity correction and the verdict."""

    arm: _Arm
    reasons: list[str]
    ctr_lift: float | None
    ctr_relative_lift: float | None
    ctr_se: float | None
    ctr_p: float | None
    ctr_p_pooled: float | None
    ctr_p_bootstrap: float | None


def _raw_comparison(arm: _Arm, control: _Arm, limits: tuple[int, int, int]) -> _Raw:
    reasons = _too_small_reasons(control, *limits) + _too_small_reasons(arm, *limits)
    ctr_lift, ctr_relative = _lifts(arm.ctr, control.ctr)
    se_arm = ratio_standard_error(arm.columns.clicks, arm.columns.impressions)
    se_control = ratio_standard_error(control.columns.clicks, control.columns.impressions)
    ctr_se = None
    ctr_p = None
    if ctr_lift is not None and se_arm is not None and se_control is not None:
        ctr_se = math.hypot(se_arm, se_control)
        if ctr_se > 0:
            ctr_p = two_sided_p(ctr_lift / ctr_se)
        else:
            ctr_p = 1.0 if ctr_lift == 0 else 0.0
    ctr_p_pooled = None
    if arm.impressions > 0 and control.impressions > 0:
        ctr_p_pooled = two_proportion_z_test(
            control.clicks, control.impressions, arm.clicks, arm.impressions
        )[1]
    ctr_p_bootstrap = None
    if arm.replicates is not None and control.replicates is not None:
        ctr_p_bootstrap = _bootstrap_p(
            _per_impression(arm.replicates.clicks, arm.replicates.impressions)
            - _per_impression(control.replicates.clicks, control.replicates.impressions)
        )
    return _Raw(arm, reasons, ctr_lift, ctr_relative, ctr_se, ctr_p, ctr_p_pooled, ctr_p_bootstrap)


def _finish_comparison(
    raw: _Raw, control: _Arm, p_adjusted: float | None, alpha: float, k: int
) -> Comparison:
    arm = raw.arm
    verdict: Verdict
    if raw.reasons or p_adjusted is None or raw.ctr_lift is None:
        verdict = "too_small"
    elif p_adjusted >= alpha:
        verdict = "no_difference"
    else:
        verdict = "better" if raw.ctr_lift > 0 else "worse"
    reasons = tuple(raw.reasons)
    if verdict == "too_small" and not reasons:
        reasons = (
            "no user-level variance could be estimated (an arm has fewer than 2 users or no impressions)",
        )

    ctr_interval = None
    mde = None
    mde_relative = None
    if raw.ctr_se is not None and raw.ctr_lift is not None:
        z = normal_ppf(1.0 - alpha / 2.0)
        ctr_interval = Interval(raw.ctr_lift - z * raw.ctr_se, raw.ctr_lift + z * raw.ctr_se)
        mde = (normal_ppf(1.0 - alpha / (2.0 * k)) + normal_ppf(POWER)) * raw.ctr_se
        if control.ctr:
            mde_relative = mde / control.ctr

    conversion_lift, conversion_relative = _lifts(arm.conversion_rate, control.conversion_rate)
    conversion_p = None
    if arm.impressions > 0 and control.impressions > 0:
        conversion_p = two_proportion_z_test(
            control.conversions, control.impressions, arm.conversions, arm.impressions
        )[1]

    revenue_lift, revenue_relative = _lifts(arm.revenue_per_impression, control.revenue_per_impression)
    revenue_interval = None
    revenue_p = None
    if arm.replicates is not None and control.replicates is not None:
        differences = _per_impression(arm.replicates.revenue, arm.replicates.impressions) - _per_impression(
            control.replicates.revenue, control.replicates.impressions
        )
        revenue_interval = _percentile_interval(differences, alpha)
        revenue_p = _bootstrap_p(differences)

    return Comparison(
        variant=arm.name,
        control=control.name,
        verdict=verdict,
        reasons=reasons,
        ctr_lift=raw.ctr_lift,
        ctr_relative_lift=raw.ctr_relative_lift,
        ctr_lift_interval=ctr_interval,
        ctr_p_value=raw.ctr_p,
        ctr_p_value_adjusted=p_adjusted,
        ctr_p_value_pooled=raw.ctr_p_pooled,
        ctr_p_value_bootstrap=raw.ctr_p_bootstrap,
        ctr_minimum_detectable_effect=mde,
        ctr_minimum_detectable_relative_effect=mde_relative,
        conversion_rate_lift=conversion_lift,
        conversion_rate_relative_lift=conversion_relative,
        conversion_rate_p_value=conversion_p,
        revenue_per_impression_lift=revenue_lift,
        revenue_per_impression_relative_lift=revenue_relative,
        revenue_per_impression_lift_interval=revenue_interval,
        revenue_per_impression_p_value=revenue_p,
    )


def _winner(comparisons: Sequence[Comparison], control: str) -> str | None:
    better = [c.variant for c in comparisons if c.verdict == "better"]
    if len(better) == 1:
        return better[0]
    if comparisons and all(c.verdict == "worse" for c in comparisons):
        return control
    return None


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}%"


def _summary(
    variants: Sequence[VariantStats],
    comparisons: Sequence[Comparison],
    control: str,
    winner: str | None,
    alpha: float,
) -> str:
    by_name = {v.name: v for v in variants}
    k = len(comparisons)
    correction = f", Holm-corrected over {k} comparisons" if k > 1 else ""
    test = f"user-level delta-method z-test on CTR at alpha {alpha:g}{correction}"

    def describe(c: Comparison) -> str:
        relative = "" if c.ctr_relative_lift is None else f", {100.0 * c.ctr_relative_lift:+.1f}%"
        p = "" if c.ctr_p_value_adjusted is None else f", p={c.ctr_p_value_adjusted:.3g}"
        return (
            f"{c.variant} {_percent(by_name[c.variant].ctr)} vs {_percent(by_name[control].ctr)}{relative}{p}"
        )

    if winner is not None and winner != control:
        best = next(c for c in comparisons if c.variant == winner)
        return f"{winner} beats control {control} on CTR ({describe(best)}; {test})."
    if winner == control:
        return f"Control {control} beats every other variant on CTR ({'; '.join(map(describe, comparisons))}; {test})."
    better = [c for c in comparisons if c.verdict == "better"]
    if len(better) > 1:
        names = ", ".join(c.variant for c in better)
        return f"Several variants beat control {control} on CTR ({names}); no single winner ({test})."
    small = [c for c in comparisons if c.verdict == "too_small"]
    if small:
        parts = []
        for c in small:
            mde = (
                ""
                if c.ctr_minimum_detectable_relative_effect is None
                else f"; it can detect a CTR change of about {100.0 * c.ctr_minimum_detectable_relative_effect:.0f}%"
                " at 80% power"
            )
            parts.append(f"{c.variant} vs {control}: {'; '.join(c.reasons)}{mde}")
        return f"Too small to call: {'. '.join(parts)}."
    detectable = [
        c.ctr_minimum_detectable_relative_effect
        for c in comparisons
        if c.ctr_minimum_detectable_relative_effect is not None
    ]
    reach = (
        f" With this sample a CTR change of about {100.0 * max(detectable):.1f}% would be detected at 80% power."
        if detectable
        else ""
    )
    return (
        f"No variant differs significantly from control {control} on CTR "
        f"({'; '.join(map(describe, comparisons))}; {test}).{reach}"
    )


def report(
    variants: Mapping[str, Sequence[UserOutcome] | OutcomeColumns],
    control: str,
    *,
    alpha: float = 0.05,
    min_users: int = DEFAULT_MIN_USERS,
    min_impressions: int = DEFAULT_MIN_IMPRESSIONS,
    min_events: int = DEFAULT_MIN_EVENTS,
    seed: int = 0,
    bootstrap: int = 2000,
) -> ExperimentStats:
    """The A/B report for ``variants`` (name -> per-user outcomes) against ``control``.

    See the module docstring for the statistics. ``bootstrap`` is the number of user-resampling replicates
    for the revenue intervals and the CTR robustness p-value (0 skips them: those fields are None); ``seed``
    makes them reproducible (each arm's stream depends on the seed and its own name only). Raises ValueError
    for a missing control, fewer than two variants, a bad ``alpha`` or invalid outcomes.
    """
    if control not in variants:
        raise ValueError(f"control {control!r} is not among the variants {sorted(variants)!r}")
    if len(variants) < 2:
        raise ValueError("an experiment report needs the control and at least one other variant")
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must lie in (0, 1), got {alpha!r}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap!r}")

    arms: dict[str, _Arm] = {}
    for name in [control, *(n for n in variants if n != control)]:
        given = variants[name]
        if isinstance(given, OutcomeColumns):  # re-checked: it may have been built without from_arrays
            columns = OutcomeColumns.from_arrays(
                given.impressions, given.clicks, given.conversions, given.revenue
            )
        else:
            columns = OutcomeColumns.from_outcomes(given)
        replicates = None
        if bootstrap > 0 and columns.users > 0:
            replicates = _bootstrap_arm(columns, bootstrap, _arm_seed(seed, name))
        arms[name] = _Arm(
            name=name,
            columns=columns,
            impressions=float(columns.impressions.sum()),
            clicks=float(columns.clicks.sum()),
            conversions=float(columns.conversions.sum()),
            revenue=float(columns.revenue.sum()),
            replicates=replicates,
        )

    control_arm = arms[control]
    limits = (min_users, min_impressions, min_events)
    raws = [_raw_comparison(arm, control_arm, limits) for name, arm in arms.items() if name != control]
    k = len(raws)
    # Holm over all k comparisons; one without a p-value (no variance) enters the family as p = 1.
    adjusted_all = holm_adjust([1.0 if raw.ctr_p is None else raw.ctr_p for raw in raws])
    adjusted = [None if raw.ctr_p is None else value for raw, value in zip(raws, adjusted_all, strict=True)]
    comparisons = tuple(
        _finish_comparison(raw, control_arm, adjusted[index], alpha, k) for index, raw in enumerate(raws)
    )
    variant_stats = tuple(_variant_stats(arm, alpha) for arm in arms.values())
    winner = _winner(comparisons, control)
    return ExperimentStats(
        control=control,
        alpha=alpha,
        verdict_test=VERDICT_TEST,
        correction="holm" if k > 1 else "none",
        min_users=min_users,
        min_impressions=min_impressions,
        min_events=min_events,
        bootstrap=bootstrap,
        seed=seed,
        variants=variant_stats,
        comparisons=comparisons,
        winner=winner,
        summary=_summary(variant_stats, comparisons, control, winner, alpha),
    )
