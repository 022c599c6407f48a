"""Stable, process-independent assignment of users to experiment variants.

A user's bucket is a number in [0, 1) derived from BLAKE2b of ``experiment_id + "\\x00" + user_id``: the
same in every process, machine and Python version (no ``hash()``, which is salted per process), and
independent between experiments because the experiment id is part of the hashed message. Variants own
consecutive intervals of [0, 1) in the order given, so growing the last variant's share only moves users
from the variants after the changed boundary.
"""

from __future__ import annotations

import hashlib
import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from functools import lru_cache

__all__ = ["SHARE_TOLERANCE", "assign", "assign_many", "bucket", "validate_shares"]

SHARE_TOLERANCE = 1e-9
"""How far the shares may sum from 1."""

_TWO_64 = float(2**64)
_blake2b = hashlib.blake2b
_from_bytes = int.from_bytes
_BELOW_ONE = math.nextafter(1.0, 0.0)


def bucket(user_id: str, experiment_id: str) -> float:
    """The user's stable position in [0, 1) for this experiment.

    The first 8 bytes of BLAKE2b(``experiment_id + "\\x00" + user_id``) read as a big-endian unsigned
    integer, divided by 2**64. An experiment id containing NUL is refused: it would make two different
    (experiment, user) pairs hash the same message.
    """
    if "\x00" in experiment_id:
        raise ValueError("experiment_id must not contain a NUL character")
    return _bucket(experiment_id + "\x00", user_id)


def _bucket(prefix: str, user_id: str) -> float:
    """``bucket`` for an already checked ``experiment_id + "\\x00"``."""
    value = _from_bytes(_blake2b((prefix + user_id).encode(), digest_size=8).digest(), "big") / _TWO_64
    # A 64-bit integer within 2**10 of 2**64 rounds up to 1.0 as a float: keep the interval half-open.
    return value if value < 1.0 else _BELOW_ONE


def validate_shares(variants: Sequence[tuple[str, float]]) -> None:
    """Raise ValueError saying which variant is wrong and what to change, or return None.

    Rules: at least one variant; names are non-empty and unique; every share is a finite number > 0;
    the shares sum to 1 within ``SHARE_TOLERANCE``.
    """
    if not variants:
        raise ValueError("variants is empty: give at least one (name, share) pair, e.g. [('control', 1.0)]")
    seen: set[str] = set()
    total = 0.0
    for position, entry in enumerate(variants):
        try:
            name, share = entry
        except (TypeError, ValueError):
            raise ValueError(
                f"variant #{position} is {entry!r}: each variant must be a (name, share) pair"
            ) from None
        if not isinstance(name, str) or not name:
            raise ValueError(f"variant #{position} has name {name!r}: use a non-empty string")
        if name in seen:
            raise ValueError(f"variant name {name!r} appears more than once: give each variant a unique name")
        seen.add(name)
        if isinstance(share, bool) or not isinstance(share, int | float) or not math.isfinite(share):
            raise ValueError(f"variant {name!r} has share {share!r}: use a finite number > 0")
        if share <= 0:
            raise ValueError(
                f"variant {name!r} has share {share!r}: shares must be > 0 (drop the variant instead of "
                "giving it 0)"
            )
        total += float(share)
    if abs(total - 1.0) > SHARE_TOLERANCE:
        listing = ", ".join(f"{name}={share!r}" for name, share in variants)
        raise ValueError(
            f"variant shares sum to {total!r}, not 1 ({listing}): adjust them by {1.0 - total:+.6g} in total "
            "so that they add up to 1"
        )


@lru_cache(maxsize=256)
def _layout(variants: tuple[tuple[str, float], ...]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """Validated names and the upper boundaries of all but the last interval (cached per variant list)."""
    validate_shares(variants)
    names = tuple(name for name, _ in variants)
    bounds: list[float] = []
    cumulative = 0.0
    for _, share in variants[:-1]:
        cumulative += float(share)
        bounds.append(cumulative)
    return names, tuple(bounds)


def _cached_layout(variants: Sequence[tuple[str, float]]) -> tuple[tuple[str, ...], tuple[float, ...]]:
    """``_layout`` for any sequence: tuples hit the cache directly, other sequences are copied first."""
    try:
        return _layout(variants if type(variants) is tuple else tuple(variants))
    except TypeError:  # unhashable entries (e.g. lists as pairs): validate, then cache the tuple form
        validate_shares(variants)
        return _layout(tuple((name, share) for name, share in variants))


_last: tuple[object, tuple[tuple[str, ...], tuple[float, ...]]] = (None, ((), ()))
"""The last tuple of variants ``assign`` saw and its layout (one atomic rebinding: thread-safe)."""


def assign(user_id: str, experiment_id: str, variants: Sequence[tuple[str, float]]) -> str:
    """The variant of ``user_id`` in ``experiment_id``: the one whose cumulative interval holds its bucket.

    ``variants`` are (name, share) pairs, shares > 0 summing to 1 (see ``validate_shares``); intervals
    are laid out in the given order. The last variant also takes any bucket left above the rounded sum.
    """
    global _last
    last_variants, layout = _last
    if variants is not last_variants:  # the hot path reuses the previous call's layout for the same tuple
        layout = _cached_layout(variants)
        if type(variants) is tuple:
            _last = (variants, layout)
    names, bounds = layout
    if "\x00" in experiment_id:
        raise ValueError("experiment_id must not contain a NUL character")
    value = _from_bytes(_blake2b((experiment_id + "\x00" + user_id).encode(), digest_size=8).digest(), "big")
    return names[bisect_right(bounds, min(value / _TWO_64, _BELOW_ONE))]


def assign_many(
    user_ids: Iterable[str], experiment_id: str, variants: Sequence[tuple[str, float]]
) -> list[str]:
    """``assign`` for many users at once (validates once; the same answers as calling ``assign`` each time)."""
    names, bounds = _cached_layout(variants)
    if "\x00" in experiment_id:
        raise ValueError("experiment_id must not contain a NUL character")
    prefix = experiment_id + "\x00"
    return [names[bisect_right(bounds, _bucket(prefix, user_id))] for user_id in user_ids]
