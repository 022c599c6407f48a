"""Re-rank an over-fetched candidate list into the final k items under business rules.

`rerank(rows, scores, k, ...)` takes the candidates of a FAISS search (int64 item rows, float model scores) and
returns a `Ranked` of at most k items. It is a pure function: nothing is mutated, nothing is cached. Masks are
numpy bool arrays over ALL rows of the model and are indexed with candidate rows (`mask[rows]`).

The pool
    The candidates plus the rows of every `promoted_pools[i]` (a separate search restricted to promotion i's
    mask), merged in that order and deduplicated (the first occurrence of a row, with its score, is kept). Rows
    < 0 (FAISS's padding when it found fewer than asked) are dropped. Every pool item competes for every slot.

Scores (applied in this order; the result is the item's "adjusted score", returned in `Ranked.scores`)
    * `logits=True`: scores are model logits (softmax scores, possibly negative). A `Boost(mode="multiply")` of
      weight w multiplies the item's probability, i.e. adds ln(w) to its logit (w > 0; w < 1 demotes).
    * `logits=False`: scores are non-negative (e.g. popularity counts); "multiply" multiplies the score by w.
    * `mode="add"` adds w to the score in both cases.
    * Boosts compose: they are applied one after another in the given order, each to the rows of its mask.
    * `Rotation` acts like a multiplicative boost of weight `factor` on the pool rows in `demoted` (after all
      boosts). `factor=0` puts the demoted rows after every other item, keeping their relative order (by their
      score before the rotation); their adjusted score is then -inf (logits) or 0.0 (counts).

Order
    Stable sort by adjusted score, descending (ties keep the pool order). This is the "base ranking".

Pins (`pins`: (row, 1-based position) pairs; applied last, exempt from every other rule)
    Pins are processed in the given order: a pin whose position is > k is ignored; a pin whose position is
    already taken by an earlier pin moves to the next free position after it (ignored when none is <= k); a row
    pinned twice keeps its first pin. Pinned rows are removed from the rest of the ranking, which fills the
    other positions in order. Pinned items do not count against the diversity cap nor enter MMR. When the rest
    runs out, the list is compacted (later pins move up: the output never has holes). A pinned item's score is
    its adjusted score when it is in the pool, else NaN (the caller replaces it).

Promotions (slots reserved for items of `Promotion.mask`)
    Promotion i reserves r_i = ceil(share_i * k) slots (computed with a 1e-9 tolerance against float noise);
    reservations are capped in order so that their sum is at most k (earlier promotions first). Pinned items
    that match count toward the reservation, and so does every matching item that makes the list anyway (an
    item matching several promotions counts toward each). A reservation is capped at the number of matching
    items in the pool: when too few exist, the leftover slots go to the rest; and, in order, at the slots that
    the pins leave. The selection is greedy over the base ranking: an item is taken while the free slots left
    still cover the outstanding reservations (counted as their sum: with overlapping promotions a matching
    item may be taken a little earlier than strictly needed), otherwise only an item that reduces an
    outstanding reservation is taken and the others wait (they are taken, in order, once the reservations are
    met). So the reserved slots hold the best matching items and the other slots the best remaining ones; the
    result is ordered by the base ranking (promoted items are interleaved by score, not forced to the top),
    and every reserved item is within the k.

Diversity (`Diversity(max_per_list, values)`; `values(rows)` gives each row's values of a field)
    Greedy: walking the ranking, an item is skipped when any of its values already appears `max_per_list`
    times among the items chosen so far (a multi-valued item counts against each of its values; an item with
    no value, `()`, is never limited). Promoted reservations are filled with matching items that respect the
    cap when the pool has any; only when none is left is the cap relaxed for a reserved item (greedy, without
    look-ahead: an item taken earlier never gives way to make room for a reserved one). If the pool runs out
    before k, the remaining slots are filled with the skipped items in base order, appended at the end
    (reason "diversity:relaxed"): better k items than fewer. `values` is called lazily on consecutive slices
    of the ranking (possibly several times per call, never twice for a row): the walk rarely needs the pool.

MMR (`Mmr(vectors, lambda_)`, with or without diversity)
    Instead of walking the base ranking, each step picks the item maximising
    lambda_ * rel - (1 - lambda_) * max cosine similarity to the items already picked (0 for the first pick),
    where rel is the adjusted score min-max normalised over the (unpinned) pool (all 1 when constant; rows
    rotated with factor 0 use their pre-rotation score, and are still picked last). Zero vectors have
    similarity 0 to everything. Ties go to the earlier item in the base ranking. The same
    promotion and diversity rules decide which items may be picked at each step, and the output keeps the
    pick order (relaxed fill items last).

Reasons (`Ranked.reasons[i]`, in this order): "boost:j" for each boost j whose mask holds the item, "rotation"
when it is in `rotation.demoted`, "promotion:j" when it counted toward promotion j's reservation,
"diversity:relaxed" when it was taken despite the diversity cap, "pin" when pinned.

At most k items are returned; fewer only when the pool plus the pins hold fewer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Subtracted from the MMR objective (which lies in [-1, 2]) of items rotated with factor 0: they come last.
_LAST_TIER_PENALTY = 4.0
_SHARE_TOLERANCE = 1e-9

# How an item was taken by the greedy selection.
_STRICT = 0  # within every rule
_RELAXED_RESERVED = 1  # a reserved item taken despite the diversity cap (interleaved by score)
_RELAXED_FILL = 2  # a diversity-skipped item filling the list once the pool ran out (appended)


@dataclass(frozen=True, slots=True)
class Boost:
    """Adjust the score of the items of `mask` by `weight` (see the module docstring for the arithmetic)."""

    mask: np.ndarray  # bool [n_rows]: items the boost applies to
    weight: float
    mode: Literal["multiply", "add"] = "multiply"


@dataclass(frozen=True, slots=True)
class Promotion:
    """Reserve ceil(share * k) of the k slots for items of `mask`."""

    mask: np.ndarray  # bool [n_rows]
    share: float  # 0 < share <= 1: fraction of the k slots reserved for matching items


@dataclass(frozen=True, slots=True)
class Diversity:
    """At most `max_per_list` items per value of a (possibly multi-valued) field."""

    max_per_list: int  # >= 1
    # rows -> each row's values of the field (multi-valued: an item counts against each of its values;
    # () = no value, never limited)
    values: Callable[[np.ndarray], list[tuple[Hashable, ...]]]


@dataclass(frozen=True, slots=True)
class Mmr:
    """Greedy maximal marginal relevance over the cosine similarity of item vectors."""

    vectors: Callable[[np.ndarray], np.ndarray]  # rows -> float32 [len(rows), d] item vectors
    lambda_: float  # 1 = pure relevance, 0 = pure diversity


@dataclass(frozen=True, slots=True)
class Rotation:
    """Demote items shown to the user recently without a click."""

    demoted: np.ndarray  # int64 rows shown to the user recently without a click
    factor: float  # score multiplier in probability space (see boosts); 0 = push after every non-demoted item


@dataclass(frozen=True, slots=True)
class Ranked:
    """The final list: rows, their adjusted scores, and which rules touched each item."""

    rows: np.ndarray  # int64 [<= k]
    scores: np.ndarray  # float64 [<= k], the adjusted scores
    reasons: list[list[str]]  # per item: which rules touched it, e.g. ["boost:0", "promotion:0", "pin"]


def rerank(
    rows: np.ndarray,
    scores: np.ndarray,
    k: int,
    *,
    logits: bool = True,
    boosts: Sequence[Boost] = (),
    promotions: Sequence[Promotion] = (),
    promoted_pools: Sequence[tuple[np.ndarray, np.ndarray]] = (),
    pins: Sequence[tuple[int, int]] = (),
    diversity: Diversity | None = None,
    mmr: Mmr | None = None,
    rotation: Rotation | None = None,
) -> Ranked:
    """The final (at most) k items of the candidates `rows`/`scores` under the rules (see the module docstring).

    `promoted_pools[i]` (optional, at most one per promotion) is (rows, scores) of a search restricted to
    promotion i's mask. Raises ValueError on invalid arguments (k < 0, a weight <= 0 for "multiply", a share
    outside (0, 1], max_per_list < 1, lambda_ outside [0, 1], factor < 0, position < 1, mismatched shapes).
    """
    _check(k, boosts, promotions, promoted_pools, pins, diversity, mmr, rotation)
    placed = _place_pins(pins, k)  # 0-based position -> row
    pool_rows, raw = _pool(rows, scores, promoted_pools)  # [P], [P]
    # [P] adjusted scores, [P] sort keys, [P] rotated last, [B, P] boost hits, [P] demoted
    adj, key, last, boosted, demoted = _adjust(pool_rows, raw, logits, boosts, rotation)

    order = np.argsort(-key, kind="stable")  # [P] the base ranking
    if last.any():
        order = np.concatenate([order[~last[order]], order[last[order]]])
    pinned = np.fromiter(placed.values(), dtype=np.int64, count=len(placed))  # [p]
    pinned_at = np.empty(0, dtype=np.int64)  # pool indices of the pinned rows in the pool
    if pinned.size:
        is_pinned = _isin(pool_rows, pinned)  # [P]
        pinned_at = np.flatnonzero(is_pinned)
        order = order[~is_pinned[order]]  # [Q]
    m = k - len(placed)  # slots left to the ranking

    ranked_rows = pool_rows[order]  # [Q]
    match = _matches(promotions, ranked_rows)  # [R, Q]
    quota, pin_tags = _reservations(promotions, k, m, pinned, match)

    if m <= 0 or order.size == 0:
        picks: list[int] = []
        kinds: list[int] = []
        tags: dict[int, list[int]] = {}
    elif diversity is None and mmr is None and not any(quota):
        picks = list(range(min(m, order.size)))
        kinds = [_STRICT] * len(picks)
        tags = {}
    else:
        selector = _Selector(order.size, m, match, quota, diversity, ranked_rows)
        if mmr is None:
            selector.walk(m)
            picks, kinds = selector.ordered()
        else:
            rel_key = key[order]  # [Q]
            _mmr_walk(selector, m, mmr, ranked_rows, rel_key, last[order])
            picks, kinds = selector.picks, selector.kinds
        tags = selector.tags

    return _assemble(
        k, placed, pin_tags, pinned_at, order, picks, kinds, tags, pool_rows, adj, boosted, demoted
    )


def _check(
    k: int,
    boosts: Sequence[Boost],
    promotions: Sequence[Promotion],
    promoted_pools: Sequence[tuple[np.ndarray, np.ndarray]],
    pins: Sequence[tuple[int, int]],
    diversity: Diversity | None,
    mmr: Mmr | None,
    rotation: Rotation | None,
) -> None:
    """Raise ValueError on an invalid argument."""
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    for i, boost in enumerate(boosts):
        if boost.mode not in ("multiply", "add"):
            raise ValueError(f"boost {i}: unknown mode {boost.mode!r}")
        if boost.mode == "multiply" and not boost.weight > 0:
            raise ValueError(f"boost {i}: a multiplicative weight must be > 0, got {boost.weight}")
    for i, promotion in enumerate(promotions):
        if not 0 < promotion.share <= 1:
            raise ValueError(f"promotion {i}: share must be in (0, 1], got {promotion.share}")
    if len(promoted_pools) > len(promotions):
        raise ValueError("more promoted pools than promotions")
    for row, position in pins:
        if position < 1:
            raise ValueError(f"pin of row {row}: positions are 1-based, got {position}")
    if diversity is not None and diversity.max_per_list < 1:
        raise ValueError(f"diversity: max_per_list must be >= 1, got {diversity.max_per_list}")
    if mmr is not None and not 0 <= mmr.lambda_ <= 1:
        raise ValueError(f"mmr: lambda_ must be in [0, 1], got {mmr.lambda_}")
    if rotation is not None and not rotation.factor >= 0:
        raise ValueError(f"rotation: factor must be >= 0, got {rotation.factor}")


def _place_pins(pins: Sequence[tuple[int, int]], k: int) -> dict[int, int]:
    """0-based position -> row of the pins that hold within k (collisions move to the next free position)."""
    placed: dict[int, int] = {}
    seen: set[int] = set()
    for row, position in pins:
        row = int(row)
        if row in seen:
            continue
        at = int(position) - 1
        while at < k and at in placed:
            at += 1
        if at >= k:
            continue
        placed[at] = row
        seen.add(row)
    return placed


def _pool(
    rows: np.ndarray, scores: np.ndarray, promoted_pools: Sequence[tuple[np.ndarray, np.ndarray]]
) -> tuple[np.ndarray, np.ndarray]:
    """The candidates and the promoted pools, merged in order, deduplicated (first kept), rows < 0 dropped."""
    parts_rows = [np.asarray(rows, dtype=np.int64).reshape(-1)]
    parts_scores = [np.asarray(scores, dtype=np.float64).reshape(-1)]
    for extra_rows, extra_scores in promoted_pools:
        parts_rows.append(np.asarray(extra_rows, dtype=np.int64).reshape(-1))
        parts_scores.append(np.asarray(extra_scores, dtype=np.float64).reshape(-1))
    for r, s in zip(parts_rows, parts_scores, strict=True):
        if r.shape != s.shape:
            raise ValueError(f"rows {r.shape} and scores {s.shape} differ in length")
    pool_rows = np.concatenate(parts_rows) if len(parts_rows) > 1 else parts_rows[0]  # [P]
    pool_scores = np.concatenate(parts_scores) if len(parts_scores) > 1 else parts_scores[0]  # [P]
    ordered = np.sort(pool_rows)  # [P]
    if ordered.size and ordered[0] < 0:  # FAISS padding (-1)
        valid = pool_rows >= 0
        pool_rows, pool_scores = pool_rows[valid], pool_scores[valid]
        ordered = ordered[np.searchsorted(ordered, 0) :]
    if ordered.size > 1 and (ordered[1:] == ordered[:-1]).any():
        _, first = np.unique(pool_rows, return_index=True)
        first.sort()
        pool_rows, pool_scores = pool_rows[first], pool_scores[first]
    return pool_rows, pool_scores


def _isin(values: np.ndarray, among: np.ndarray) -> np.ndarray:
    """bool [len(values)]: np.isin, by binary search in sorted `among` (several times cheaper at these sizes)."""
    if among.size == 0:
        return np.zeros(values.shape, dtype=bool)
    ordered = np.sort(among)
    at = np.minimum(np.searchsorted(ordered, values), ordered.size - 1)  # [len(values)]
    return ordered[at] == values


def _adjust(
    pool_rows: np.ndarray,
    raw: np.ndarray,
    logits: bool,
    boosts: Sequence[Boost],
    rotation: Rotation | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(adjusted scores, sort keys, rotated-last flags, boost hits [B, P], demoted flags), all over the pool."""
    adj = raw.copy()  # [P]
    boosted = np.zeros((len(boosts), pool_rows.size), dtype=bool)  # [B, P]
    for b, boost in enumerate(boosts):
        hit = np.asarray(boost.mask[pool_rows], dtype=bool)  # [P]
        boosted[b] = hit
        if boost.mode == "add":
            adj[hit] += boost.weight
        elif logits:
            adj[hit] += math.log(boost.weight)
        else:
            adj[hit] *= boost.weight
    key = adj  # [P] what the base ranking sorts on
    last = np.zeros(pool_rows.size, dtype=bool)  # [P]
    if rotation is not None and len(rotation.demoted):
        demoted = _isin(pool_rows, np.asarray(rotation.demoted, dtype=np.int64))  # [P]
        if rotation.factor == 0:
            key = adj.copy()  # demoted rows keep their pre-rotation score as the key within the last tier
            last = demoted
            adj[demoted] = -np.inf if logits else 0.0
        elif logits:
            adj[demoted] += math.log(rotation.factor)
        else:
            adj[demoted] *= rotation.factor
    else:
        demoted = last
    return adj, key, last, boosted, demoted


def _matches(promotions: Sequence[Promotion], ranked_rows: np.ndarray) -> np.ndarray:
    """bool [R, Q]: which ranked (unpinned) pool items each promotion's mask holds."""
    match = np.zeros((len(promotions), ranked_rows.size), dtype=bool)
    for i, promotion in enumerate(promotions):
        match[i] = np.asarray(promotion.mask[ranked_rows], dtype=bool)
    return match


def _reservations(
    promotions: Sequence[Promotion], k: int, m: int, pinned: np.ndarray, match: np.ndarray
) -> tuple[list[int], list[list[int]]]:
    """(slots still to fill per promotion from the ranking, promotions each pin counted toward [p])."""
    if not promotions:
        return [], [[] for _ in range(pinned.size)]
    quota: list[int] = []
    left = k
    for promotion in promotions:
        reserved = min(max(math.ceil(promotion.share * k - _SHARE_TOLERANCE), 0), left)
        quota.append(reserved)
        left -= reserved
    pin_tags: list[list[int]] = [[] for _ in range(pinned.size)]
    for i, promotion in enumerate(promotions):
        for j in range(pinned.size):
            if quota[i] > 0 and bool(promotion.mask[pinned[j]]):
                quota[i] -= 1
                pin_tags[j].append(i)
    available = match.sum(axis=1)  # [R]
    left = max(m, 0)
    for i in range(len(quota)):
        quota[i] = min(quota[i], int(available[i]), left)
        left -= quota[i]
    return quota, pin_tags


class _Selector:
    """State of the greedy selection over the Q ranked (unpinned) pool items, indexed by base-ranking rank."""

    def __init__(
        self,
        size: int,
        m: int,
        match: np.ndarray,
        quota: list[int],
        diversity: Diversity | None,
        ranked_rows: np.ndarray,
    ) -> None:
        self.size = size
        self.taken = [False] * size
        self.picks: list[int] = []  # ranks, in pick order
        self.kinds: list[int] = []  # _STRICT / _RELAXED_RESERVED / _RELAXED_FILL per pick
        self.tags: dict[int, list[int]] = {}  # rank -> promotions it counted toward
        self.need = list(quota)
        self.outstanding = sum(quota)
        # rank -> the promotions whose mask holds it (promoted ranks only)
        self.promotions_of: dict[int, list[int]] = {}
        if match.shape[0]:
            which, ranks = np.nonzero(match)
            for i, q in zip(which.tolist(), ranks.tolist(), strict=True):
                self.promotions_of.setdefault(q, []).append(i)
        self.promoted_ranks = sorted(self.promotions_of)  # ascending ranks
        self.cap = diversity.max_per_list if diversity is not None else 0
        # Diversity values are asked for lazily, in chunks along the ranking: the walk rarely goes far.
        self.diversity = diversity
        self.ranked_rows = ranked_rows  # [Q]
        self.values: list[tuple[Hashable, ...]] | None = [] if diversity is not None else None  # [known]
        self.known = 0 if diversity is not None else size
        self.chunk = max(32, 4 * m)
        self.counts: dict[Hashable, int] = {}
        self.start = 0  # every rank before it is taken or blocked by diversity (for good: counts only grow)

    def fetch(self, q: int) -> None:
        """Ask for the diversity values of the ranks up to q at least (and a chunk more)."""
        assert self.diversity is not None and self.values is not None
        upto = min(self.size, max(q + 1, self.known + self.chunk))
        got = self.diversity.values(self.ranked_rows[self.known : upto])
        if len(got) != upto - self.known:
            raise ValueError(f"diversity.values returned {len(got)} entries for {upto - self.known} rows")
        self.values.extend(got)
        self.known = upto
        self.chunk *= 2

    def blocked(self, q: int) -> bool:
        """Whether the diversity cap forbids item q now."""
        if self.values is None:
            return False
        if q >= self.known:
            self.fetch(q)
        counts, cap = self.counts, self.cap
        return any(counts.get(v, 0) >= cap for v in self.values[q])

    def reduces(self, q: int) -> bool:
        """Whether taking item q reduces an outstanding reservation."""
        if not self.outstanding or q not in self.promotions_of:
            return False
        need = self.need
        return any(need[i] > 0 for i in self.promotions_of[q])

    def take(self, q: int, kind: int) -> None:
        """Add item q to the picks."""
        self.taken[q] = True
        self.picks.append(q)
        self.kinds.append(kind)
        if self.values is not None:
            if q >= self.known:
                self.fetch(q)
            for v in dict.fromkeys(self.values[q]):
                self.counts[v] = self.counts.get(v, 0) + 1
        if self.reduces(q):
            counted = [i for i in self.promotions_of[q] if self.need[i] > 0]
            for i in counted:
                self.need[i] -= 1
            self.outstanding -= len(counted)
            self.tags[q] = counted

    def acceptable(self, q: int, m: int) -> bool:
        """Whether item q (not taken, not blocked) may be taken with the slots left covering the reservations."""
        return m - len(self.picks) > self.outstanding or self.reduces(q)

    def fallback(self, candidates: Sequence[int], m: int) -> bool:
        """When no item is acceptable: relax the cap for a reserved item, then drop reservations no item can
        meet, then relax the cap to fill. False when nothing is left to take."""
        while True:
            if self.outstanding:
                for q in candidates:
                    if not self.taken[q] and self.reduces(q):
                        self.take(q, _RELAXED_RESERVED)
                        return True
                # No matching item left (cannot happen with capped quotas; kept as a guard): the leftover
                # reserved slots go to the rest.
                self.need = [0] * len(self.need)
                self.outstanding = 0
                for q in candidates:
                    if not self.taken[q] and not self.blocked(q):
                        self.take(q, _STRICT)
                        return True
                continue
            for q in candidates:
                if not self.taken[q]:
                    self.take(q, _RELAXED_FILL)
                    return True
            return False

    def walk(self, m: int) -> None:
        """Greedy over the base ranking until m picks or the pool is exhausted."""
        everything = range(self.size)
        promoted_ranks = self.promoted_ranks  # the only takers when every slot left is reserved
        taken, blocked = self.taken, self.blocked
        while len(self.picks) < m:
            found = -1
            if m - len(self.picks) > self.outstanding:  # a free slot: the first item within the cap
                q = self.start
                while q < self.size and (taken[q] or blocked(q)):
                    q += 1  # taken or blocked for good (counts only grow): never looked at again
                self.start = q
                if q < self.size:
                    found = q
            else:  # every slot left is reserved: the first item within the cap that meets a reservation
                for q in promoted_ranks:
                    if not taken[q] and self.reduces(q) and not blocked(q):
                        found = q
                        break
            if found >= 0:
                self.take(found, _STRICT)
            elif not self.fallback(everything, m):
                return

    def ordered(self) -> tuple[list[int], list[int]]:
        """The picks in output order: strict and reserved ones by rank, then the relaxed fill in pick order."""
        main = sorted(
            (q, kind) for q, kind in zip(self.picks, self.kinds, strict=True) if kind != _RELAXED_FILL
        )
        fill = [q for q, kind in zip(self.picks, self.kinds, strict=True) if kind == _RELAXED_FILL]
        picks = [q for q, _ in main] + fill
        kinds = [kind for _, kind in main] + [_RELAXED_FILL] * len(fill)
        return picks, kinds


def _mmr_walk(
    selector: _Selector, m: int, mmr: Mmr, ranked_rows: np.ndarray, rel_key: np.ndarray, last: np.ndarray
) -> None:
    """Greedy MMR: each step takes the acceptable item of highest MMR objective (ties: the earlier rank)."""
    q_size = ranked_rows.size
    vectors = np.asarray(mmr.vectors(ranked_rows), dtype=np.float32)  # [Q, d]
    if vectors.ndim != 2 or vectors.shape[0] != q_size:
        raise ValueError(f"mmr.vectors returned shape {vectors.shape} for {q_size} rows")
    norms = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))[:, None]  # [Q, 1]
    unit = vectors / np.where(norms > 0, norms, 1.0)  # [Q, d]
    finite = np.isfinite(rel_key)  # [Q]
    all_finite = bool(finite.all())
    lo = rel_key.min() if all_finite else (rel_key[finite].min() if finite.any() else 0.0)
    hi = rel_key.max() if all_finite else (rel_key[finite].max() if finite.any() else 0.0)
    if hi > lo:
        rel = (rel_key - lo) / (hi - lo)  # [Q]
        if not all_finite:
            rel = np.clip(np.nan_to_num(rel, nan=0.0, posinf=1.0, neginf=0.0), 0.0, 1.0)
    else:
        rel = np.ones(q_size)  # [Q]
    lam = float(mmr.lambda_)
    base = lam * rel - _LAST_TIER_PENALTY * last  # [Q]
    weight = 1.0 - lam
    # [Q] the objective: base - weight * (max cosine to the picks, 0 before the first); -inf once taken
    objective = base.copy()
    taken = np.zeros(q_size, dtype=bool)  # [Q]
    n_taken = 0
    promoted = np.asarray(selector.promoted_ranks, dtype=np.int64)  # [<= Q], ascending ranks
    while len(selector.picks) < m and n_taken < q_size:
        best = int(objective.argmax())  # the first of the ties: the earlier rank, as the stable sort below
        before = len(selector.picks)
        if not selector.blocked(best) and selector.acceptable(best, m):
            selector.take(best, _STRICT)
        else:
            if m - len(selector.picks) > selector.outstanding:
                candidates = np.argsort(-objective, kind="stable")[: q_size - n_taken].tolist()
            else:  # every slot left is reserved: only promoted items may be taken, look at them alone
                ranks = promoted[~taken[promoted]]  # [<= Q]
                candidates = ranks[np.argsort(-objective[ranks], kind="stable")].tolist()
            found = -1
            for q in candidates:
                if not selector.blocked(q) and selector.acceptable(q, m):
                    found = q
                    break
            if found >= 0:
                selector.take(found, _STRICT)
            else:
                everything = np.argsort(-objective, kind="stable")[: q_size - n_taken].tolist()
                if not selector.fallback(everything, m):
                    return
        q = selector.picks[before]
        penalised = base - weight * (unit @ unit[q])  # [Q] base - weight * cosine to the new pick
        if before == 0:
            objective = penalised
            objective[taken] = -np.inf
        else:
            np.minimum(objective, penalised, out=objective)  # base - weight * max(...) = min over the picks
        objective[q] = -np.inf
        taken[q] = True
        n_taken += 1


def _assemble(
    k: int,
    placed: dict[int, int],
    pin_tags: list[list[int]],
    pinned_at: np.ndarray,
    order: np.ndarray,
    picks: list[int],
    kinds: list[int],
    tags: dict[int, list[int]],
    pool_rows: np.ndarray,
    adj: np.ndarray,
    boosted: np.ndarray,
    demoted: np.ndarray,
) -> Ranked:
    """Interleave the pins with the picks (compacting when the picks run out), with scores and reasons."""
    picked = order[np.asarray(picks, dtype=np.int64)]  # [n] pool indices of the picks
    if not placed:  # the common case, without the per-position walk
        after = [[f"promotion:{i}" for i in tags.get(q, ())] for q in picks] if tags else [[] for _ in picks]
        for n, kind in enumerate(kinds):
            if kind != _STRICT:
                after[n].append("diversity:relaxed")
        return Ranked(
            rows=pool_rows[picked],
            scores=adj[picked],
            reasons=_early_reasons(picked, boosted, demoted, after),
        )
    first_pin = len(picks)
    pool_index = {
        row: first_pin + e for e, row in enumerate(pool_rows[pinned_at].tolist())
    }  # row -> `sel` entry
    pin_order = {row: n for n, row in enumerate(placed.values())}  # row -> index into pin_tags
    # one gather for the picks and the pinned pool items: entry e of `sel` is pick e, then pin e - len(picks)
    sel = np.concatenate([picked, pinned_at])  # [n + p_in]
    sel_rows: list[int] = pool_rows[sel].tolist()
    sel_scores: list[float] = adj[sel].tolist()
    late: list[list[str]] = []  # promotion, diversity and pin reasons per output item
    out_sel: list[int] = []  # entry of `sel` per output item, -1 for a pin outside the pool
    out_rows: list[int] = []
    out_scores: list[float] = []
    nxt = 0
    for position in range(k):
        if position in placed:
            row = placed[position]
            e = pool_index.get(row, -1)
            why = [f"promotion:{i}" for i in pin_tags[pin_order[row]]]
            why.append("pin")
            out_scores.append(sel_scores[e] if e >= 0 else math.nan)
        elif nxt < len(picks):
            e = nxt
            row = sel_rows[e]
            why = [f"promotion:{i}" for i in tags.get(picks[nxt], ())]
            if kinds[nxt] != _STRICT:
                why.append("diversity:relaxed")
            out_scores.append(sel_scores[e])
            nxt += 1
        else:
            continue
        out_sel.append(e)
        out_rows.append(row)
        late.append(why)
    reasons = late
    if boosted.shape[0] or demoted.any():
        hit_rows: list[list[bool]] = boosted[:, sel].T.tolist()  # [n + p_in][B]
        rotated: list[bool] = demoted[sel].tolist()  # [n + p_in]
        reasons = [
            [
                *(f"boost:{b}" for b, hit in enumerate(hit_rows[e]) if hit),
                *(["rotation"] if rotated[e] else []),
                *why,
            ]
            if e >= 0
            else why
            for e, why in zip(out_sel, late, strict=True)
        ]
    return Ranked(
        rows=np.asarray(out_rows, dtype=np.int64),
        scores=np.asarray(out_scores, dtype=np.float64),
        reasons=reasons,
    )


def _early_reasons(
    idx: np.ndarray,
    boosted: np.ndarray,
    demoted: np.ndarray,
    late: list[list[str]],
) -> list[list[str]]:
    """The boost and rotation reasons of pool items `idx` [n], then `late`."""
    if not boosted.shape[0] and not demoted.any():
        return late
    hits = boosted[:, idx]  # [B, n]
    rotated = demoted[idx]  # [n]
    hit_rows: list[list[bool]] = hits.T.tolist()  # [n][B]
    rotated_list: list[bool] = rotated.tolist()  # [n]
    return [
        [*(f"boost:{b}" for b, hit in enumerate(hits_b) if hit), *(["rotation"] if rot else []), *why]
        for hits_b, rot, why in zip(hit_rows, rotated_list, late, strict=True)
    ]
