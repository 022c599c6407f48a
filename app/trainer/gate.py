"""The quality gate: a new version goes live only if it is not worse than the active one on validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GATE_METRIC = "valid_NDCG@10"


@dataclass(frozen=True)
class GateDecision:
    """Whether to activate the candidate, and why (stored on the version row)."""

    accept: bool
    reason: str


def _metric(metrics: Mapping[str, Any] | None) -> float | None:
    value = (metrics or {}).get(GATE_METRIC)
    return float(value) if isinstance(value, int | float) else None


def decide(
    candidate: Mapping[str, Any],
    active: Mapping[str, Any] | None,
    active_version: str | None,
    tolerance: float,
) -> GateDecision:
    """Accept when candidate valid NDCG@10 >= active's x (1 - tolerance), or when nothing is active."""
    new = _metric(candidate)
    if new is None:
        return GateDecision(False, f"the candidate has no {GATE_METRIC} to compare")
    if active_version is None:
        return GateDecision(True, f"first model ({GATE_METRIC} {new:.4f})")
    old = _metric(active)
    if old is None:
        return GateDecision(True, f"the active version {active_version} has no {GATE_METRIC} to compare")
    bar = old * (1.0 - tolerance)
    if new >= bar:
        return GateDecision(
            True,
            f"{GATE_METRIC} {new:.4f} >= {bar:.4f} (active {active_version}: {old:.4f}, tolerance {tolerance})",
        )
    return GateDecision(
        False,
        f"{GATE_METRIC} {new:.4f} < {bar:.4f} = active {active_version}'s {old:.4f} x (1 - {tolerance}); "
        "kept out of serving (activate it by hand to override)",
    )
