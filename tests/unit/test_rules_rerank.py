"""app.rules.rerank: each rule against a hand-computed list, their composition, and randomized invariants."""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence

import numpy as np
import pytest

from app.rules.rerank import Boost, Diversity, Mmr, Promotion, Ranked, Rotation, rerank

N_ROWS = 40
ROWS = np.array([10, 11, 12, 13, 14, 15, 16, 17], dtype=np.int64)  # [8] candidates, in FAISS order
LOGITS = np.array([2.0, 1.5, 1.2, 1.0, 0.5, 0.0, -0.3, -1.0])  # [8] sorted descending
COUNTS = np.array([80.0, 60.0, 50.0, 40.0, 30.0, 20.0, 10.0, 5.0])  # [8]
LN2 = math.log(2.0)


def mask(*rows: int) -> np.ndarray:
    """bool [N_ROWS] holding `rows`."""
    out = np.zeros(N_ROWS, dtype=bool)
    out[list(rows)] = True
    return out


def values_of(table: dict[int, tuple[Hashable, ...]]) -> Diversity:
    """A Diversity(max_per_list=1) reading each row's values from `table`."""
    return Diversity(max_per_list=1, values=lambda rows: [table[int(r)] for r in rows])


def reasons_of(ranked: Ranked) -> dict[int, list[str]]:
    return {int(r): why for r, why in zip(ranked.rows, ranked.reasons, strict=True)}


# --- scores and boosts -------------------------------------------------------------------------------------


def test_no_rules_keeps_the_order_and_cuts_at_k() -> None:
    out = rerank(ROWS, LOGITS, 5)
    assert out.rows.tolist() == [10, 11, 12, 13, 14]
    assert out.scores.tolist() == [2.0, 1.5, 1.2, 1.0, 0.5]
    assert out.reasons == [[], [], [], [], []]
    assert out.rows.dtype == np.int64 and out.scores.dtype == np.float64


def test_multiplicative_boost_on_logits_adds_ln_w() -> None:
    # weight 2 on rows 13, 16: 13 -> 1.0 + ln 2 = 1.693, 16 -> -0.3 + ln 2 = 0.393
    # order: 10 (2.0), 13 (1.693), 11 (1.5), 12 (1.2), 14 (0.5), 16 (0.393), 15 (0.0), 17 (-1.0)
    out = rerank(ROWS, LOGITS, 8, boosts=[Boost(mask(13, 16), 2.0)])
    assert out.rows.tolist() == [10, 13, 11, 12, 14, 16, 15, 17]
    np.testing.assert_allclose(out.scores, [2.0, 1.0 + LN2, 1.5, 1.2, 0.5, -0.3 + LN2, 0.0, -1.0])
    assert reasons_of(out)[13] == ["boost:0"] and reasons_of(out)[16] == ["boost:0"]
    assert reasons_of(out)[10] == []


def test_weight_below_one_demotes() -> None:
    # weight 0.5 on row 10: 2.0 - ln 2 = 1.307 -> after 11 (1.5), before 12 (1.2)
    out = rerank(ROWS, LOGITS, 3, boosts=[Boost(mask(10), 0.5)])
    assert out.rows.tolist() == [11, 10, 12]


def test_multiplicative_boost_on_counts_multiplies_and_ties_keep_the_input_order() -> None:
    # weight 2 on 13, 16: 13 -> 80 (ties with 10, which came first), 16 -> 20 (ties with 15, which came first)
    out = rerank(ROWS, COUNTS, 8, logits=False, boosts=[Boost(mask(13, 16), 2.0)])
    assert out.rows.tolist() == [10, 13, 11, 12, 14, 15, 16, 17]
    assert out.scores.tolist() == [80.0, 80.0, 60.0, 50.0, 30.0, 20.0, 20.0, 5.0]


def test_additive_boost() -> None:
    # +0.6 on 12, 15: 12 -> 1.8, 15 -> 0.6 (above 14's 0.5)
    # order: 10 (2.0), 12 (1.8), 11 (1.5), 13 (1.0), 15 (0.6), 14 (0.5)
    out = rerank(ROWS, LOGITS, 6, boosts=[Boost(mask(12, 15), 0.6, mode="add")])
    assert out.rows.tolist() == [10, 12, 11, 13, 15, 14]
    np.testing.assert_allclose(out.scores, [2.0, 1.8, 1.5, 1.0, 0.6, 0.5])


def test_boosts_compose_in_order() -> None:
    # counts, row 13 (40): x2 then +25 = 105; +25 then x2 = 130
    times_then_plus = [Boost(mask(13), 2.0), Boost(mask(13), 25.0, mode="add")]
    out = rerank(ROWS, COUNTS, 1, logits=False, boosts=times_then_plus)
    assert out.rows.tolist() == [13] and out.scores.tolist() == [105.0]
    assert out.reasons == [["boost:0", "boost:1"]]
    out = rerank(ROWS, COUNTS, 1, logits=False, boosts=times_then_plus[::-1])
    assert out.scores.tolist() == [130.0]


# --- promotions --------------------------------------------------------------------------------------------


def test_promotion_share_reserves_ceil_share_k_slots() -> None:
    # share 0.3, k=5: ceil(1.5) = 2 slots for {15, 16, 17}; the natural top 5 (10..14) holds none, so the two
    # best matching (15, 16) replace the two lowest others (13, 14); ordered by score, not put on top
    out = rerank(ROWS, LOGITS, 5, promotions=[Promotion(mask(15, 16, 17), 0.3)])
    assert out.rows.tolist() == [10, 11, 12, 15, 16]
    assert reasons_of(out)[15] == ["promotion:0"] and reasons_of(out)[16] == ["promotion:0"]


def test_matching_item_that_makes_the_list_anyway_counts_toward_the_reservation() -> None:
    # 2 slots for {11, 16, 17}: 11 is in the top 5 anyway (counts 1), 16 takes the 2nd; 14 drops out
    out = rerank(ROWS, LOGITS, 5, promotions=[Promotion(mask(11, 16, 17), 0.3)])
    assert out.rows.tolist() == [10, 11, 12, 13, 16]
    assert reasons_of(out)[11] == ["promotion:0"]


def test_promotion_with_too_few_matching_items_gives_the_leftover_to_the_rest() -> None:
    # share 1.0 reserves 5 slots for {16} alone: 16 gets one, the 4 others are the best of the rest
    out = rerank(ROWS, LOGITS, 5, promotions=[Promotion(mask(16), 1.0)])
    assert out.rows.tolist() == [10, 11, 12, 13, 16]


def test_share_rounding_ignores_float_noise() -> None:
    # 0.1 * 30 = 3.0000000000000004 in floats: 3 slots, not 4; candidates 0..29, matching {26, 27, 28, 29}
    rows = np.arange(30, dtype=np.int64)
    scores = -np.arange(30, dtype=np.float64)
    out = rerank(rows, scores, 30 // 3, promotions=[Promotion(mask(26, 27, 28, 29), 0.3)])  # ceil(0.3*10) = 3
    assert out.rows.tolist() == [0, 1, 2, 3, 4, 5, 6, 26, 27, 28]


def test_pool_assisted_promotion_merges_and_deduplicates() -> None:
    # 2 slots (ceil(0.4 * 5)) for {16, 30, 31}. Only 16 is a candidate; the promoted pool adds 30 (0.4) and 31
    # (-2.0) and repeats 16 (its candidate score -0.3 is kept, not 9.0). Best matching: 30 (0.4), 16 (-0.3).
    # The rest: 10, 11, 12. Order by score: 10, 11, 12, 30, 16.
    promotion = Promotion(mask(16, 30, 31), 0.4)
    pool = (np.array([16, 30, 31]), np.array([9.0, 0.4, -2.0]))
    out = rerank(ROWS, LOGITS, 5, promotions=[promotion], promoted_pools=[pool])
    assert out.rows.tolist() == [10, 11, 12, 30, 16]
    np.testing.assert_allclose(out.scores, [2.0, 1.5, 1.2, 0.4, -0.3])
    assert reasons_of(out)[30] == ["promotion:0"]
    # without the pool only 16 matches: the reservation shrinks to 1
    assert rerank(ROWS, LOGITS, 5, promotions=[promotion]).rows.tolist() == [10, 11, 12, 13, 16]


def test_two_promotions_reserve_in_order_capped_at_k() -> None:
    # k=3: promotion 0 (share 0.5 -> 2 slots) gets {16, 17}; promotion 1 (share 1 -> 3, capped to the 1 left)
    # gets {15}; nothing left for the rest
    promotions = [Promotion(mask(16, 17), 0.5), Promotion(mask(14, 15), 1.0)]
    out = rerank(ROWS, LOGITS, 3, promotions=promotions)
    assert out.rows.tolist() == [14, 16, 17]
    assert out.reasons == [["promotion:1"], ["promotion:0"], ["promotion:0"]]


# --- diversity ---------------------------------------------------------------------------------------------

CATEGORIES: dict[int, tuple[Hashable, ...]] = {
    10: ("a",),
    11: ("a", "b"),  # multi-valued: blocked by 10's "a"
    12: ("b",),
    13: ("c",),
    14: (),  # no value: never limited
    15: ("c", "d"),  # blocked by 13's "c"
    16: ("d",),
    17: ("e",),
}


def test_diversity_max_one_per_category_with_multi_valued_items() -> None:
    # walk: 10 (a) take; 11 (a, b) skip: a; 12 (b) take; 13 (c) take; 14 () take; 15 (c, d) skip: c; 16 (d) take
    out = rerank(ROWS, LOGITS, 5, diversity=values_of(CATEGORIES))
    assert out.rows.tolist() == [10, 12, 13, 14, 16]
    assert out.reasons == [[], [], [], [], []]


def test_diversity_fills_with_skipped_items_when_the_pool_runs_out() -> None:
    # the walk yields 10, 12, 13, 14, 16, 17 (6 items); k=8 -> append the skipped 11, 15 in order
    out = rerank(ROWS, LOGITS, 8, diversity=values_of(CATEGORIES))
    assert out.rows.tolist() == [10, 12, 13, 14, 16, 17, 11, 15]
    assert reasons_of(out)[11] == ["diversity:relaxed"] and reasons_of(out)[15] == ["diversity:relaxed"]
    assert reasons_of(out)[17] == []


def test_diversity_cap_of_two() -> None:
    # everything in "x" except 13 ("y"): cap 2 -> 10, 11 (x twice), 13 (y), then x is full: fill 12, 14
    table: dict[int, tuple[Hashable, ...]] = {r: ("x",) for r in ROWS.tolist()}
    table[13] = ("y",)
    diversity = Diversity(max_per_list=2, values=lambda rows: [table[int(r)] for r in rows])
    out = rerank(ROWS, LOGITS, 5, diversity=diversity)
    assert out.rows.tolist() == [10, 11, 13, 12, 14]


def test_reserved_items_respect_diversity_where_possible() -> None:
    # 1 slot (ceil(0.2 * 5)) for {12, 16}; cap 1. Walk: 10 (a), 11 (b), 13 (c), 14 (d) are taken while the
    # free slots cover the reservation; then 12 (a) is blocked, 15 (e) waits, 16 (f) matches and fits -> 16
    table: dict[int, tuple[Hashable, ...]] = {10: ("a",), 11: ("b",), 12: ("a",), 13: ("c",), 14: ("d",)}
    table |= {15: ("e",), 16: ("f",), 17: ("g",)}
    out = rerank(ROWS, LOGITS, 5, promotions=[Promotion(mask(12, 16), 0.2)], diversity=values_of(table))
    assert out.rows.tolist() == [10, 11, 13, 14, 16]


def test_a_reserved_item_relaxes_the_cap_when_no_matching_item_fits() -> None:
    # 1 slot for {12}, cap 1, k=3: 10 (a), 11 (b) taken; 12 (a) blocked, 13 (c) waits (no free slot left);
    # no matching item fits the cap, so 12 is taken anyway, in score order
    table: dict[int, tuple[Hashable, ...]] = {10: ("a",), 11: ("b",), 12: ("a",), 13: ("c",), 14: ("d",)}
    table |= {15: ("e",), 16: ("f",), 17: ("g",)}
    out = rerank(ROWS, LOGITS, 3, promotions=[Promotion(mask(12), 0.2)], diversity=values_of(table))
    assert out.rows.tolist() == [10, 11, 12]
    assert reasons_of(out)[12] == ["promotion:0", "diversity:relaxed"]


def test_diversity_values_are_asked_lazily_never_twice_for_a_row() -> None:
    # 300 candidates, 3 values round-robin, cap 1, k=5: the walk needs the first ranks, then fills
    rows = np.arange(300, dtype=np.int64)
    scores = -np.arange(300, dtype=np.float64)
    asked: list[int] = []

    def values(chunk: np.ndarray) -> list[tuple[Hashable, ...]]:
        asked.extend(chunk.tolist())
        return [(int(r) % 3,) for r in chunk]

    out = rerank(rows, scores, 5, diversity=Diversity(1, values))
    # 0, 1, 2 (one per value); then every rank is blocked: fill with 3, 4
    assert out.rows.tolist() == [0, 1, 2, 3, 4]
    assert len(asked) == len(set(asked)) == 300  # the walk looked at every rank before relaxing
    asked.clear()
    out = rerank(rows, scores, 3, diversity=Diversity(1, values))
    assert out.rows.tolist() == [0, 1, 2] and asked == list(range(32))  # one chunk: max(32, 4 k) ranks


# --- pins --------------------------------------------------------------------------------------------------


def test_pins_with_collisions_and_out_of_range_positions() -> None:
    # k=5: 17 -> position 2; 16 wants 2 (taken) -> 3; 15 at 9 > k: ignored (stays a normal candidate);
    # 11 -> 4. The rest (10, 12, 13, ... without 17, 16, 11) fills positions 1 and 5: 10, 12.
    out = rerank(ROWS, LOGITS, 5, pins=[(17, 2), (16, 2), (15, 9), (11, 4)])
    assert out.rows.tolist() == [10, 17, 16, 11, 12]
    np.testing.assert_allclose(out.scores, [2.0, -1.0, -0.3, 1.5, 1.2])
    assert out.reasons == [[], ["pin"], ["pin"], ["pin"], []]


def test_a_collision_pushed_past_k_is_dropped_and_the_row_stays_a_candidate() -> None:
    # 12 -> 5; 13 wants 5 (taken) -> 6 > k: ignored. Rest without 12: 10, 11, 13, 14 -> positions 1..4.
    out = rerank(ROWS, LOGITS, 5, pins=[(12, 5), (13, 5)])
    assert out.rows.tolist() == [10, 11, 13, 14, 12]


def test_pinned_non_candidate_scores_nan_and_a_row_pinned_twice_keeps_its_first_pin() -> None:
    out = rerank(ROWS, LOGITS, 3, pins=[(39, 1), (39, 3), (12, 2)])
    assert out.rows.tolist() == [39, 12, 10]
    assert math.isnan(out.scores[0]) and out.scores[1:].tolist() == [1.2, 2.0]


def test_pins_compact_when_the_pool_runs_out() -> None:
    # 2 candidates, pin at 4 of k=5: positions 1, 2 from the pool, then the pin moves up to 3
    out = rerank(ROWS[:2], LOGITS[:2], 5, pins=[(39, 4)])
    assert out.rows.tolist() == [10, 11, 39]


def test_pinned_item_counts_toward_its_promotion() -> None:
    # 1 slot (ceil(0.2 * 5)) for {16, 17}: 17 pinned at 1 fills it, so the rest is the plain ranking
    out = rerank(ROWS, LOGITS, 5, promotions=[Promotion(mask(16, 17), 0.2)], pins=[(17, 1)])
    assert out.rows.tolist() == [17, 10, 11, 12, 13]
    assert out.reasons[0] == ["promotion:0", "pin"]


# --- rotation ----------------------------------------------------------------------------------------------


def test_rotation_factor_zero_pushes_demoted_after_all_others_in_their_order() -> None:
    out = rerank(ROWS, LOGITS, 8, rotation=Rotation(np.array([12, 10, 99]), 0.0))
    assert out.rows.tolist() == [11, 13, 14, 15, 16, 17, 10, 12]
    assert out.scores[-2:].tolist() == [-np.inf, -np.inf]
    assert out.reasons[-2:] == [["rotation"], ["rotation"]]
    counts = rerank(ROWS, COUNTS, 8, logits=False, rotation=Rotation(np.array([10, 12]), 0.0))
    assert counts.rows.tolist()[-2:] == [10, 12] and counts.scores[-2:].tolist() == [0.0, 0.0]


def test_rotation_factor_half() -> None:
    # 10 -> 2.0 - ln 2 = 1.307, 12 -> 1.2 - ln 2 = 0.507 (just above 14's 0.5)
    # order: 11 (1.5), 10 (1.307), 13 (1.0), 12 (0.507), 14 (0.5)
    out = rerank(ROWS, LOGITS, 5, rotation=Rotation(np.array([10, 12]), 0.5))
    assert out.rows.tolist() == [11, 10, 13, 12, 14]
    np.testing.assert_allclose(out.scores, [1.5, 2.0 - LN2, 1.0, 1.2 - LN2, 0.5])
    # counts: 10 -> 40, 12 -> 25: 11 (60), 13 (40), ... ties keep the pool order: 10 came first
    counts = rerank(ROWS, COUNTS, 5, logits=False, rotation=Rotation(np.array([10, 12]), 0.5))
    assert counts.rows.tolist() == [11, 10, 13, 14, 12]


# --- MMR ---------------------------------------------------------------------------------------------------

MMR_ROWS = ROWS[:6]  # 10, 11, 12 in cluster A; 13, 14 in B; 15 in C
MMR_SCORES = np.array([2.0, 1.5, 1.2, 1.0, 0.5, 0.0])
CLUSTER = {10: [2, 0, 0], 11: [1, 0, 0], 12: [3, 0, 0], 13: [0, 1, 0], 14: [0, 5, 0], 15: [0, 0, 1]}


def cluster_vectors(rows: np.ndarray) -> np.ndarray:
    return np.array([CLUSTER[int(r)] for r in rows], dtype=np.float32)  # [len(rows), 3]


def test_mmr_with_three_clusters() -> None:
    # rel = (s - 0) / 2 = [1, .75, .6, .5, .25, 0]; lambda .5: objective = .5 rel - .5 max_sim
    # 1: max_sim 0            -> .5, .375, .3, .25, .125, 0       -> 10
    # 2: A has sim 1          -> 11 -.125, 12 -.2, 13 .25, 14 .125, 15 0 -> 13
    # 3: A, B have sim 1      -> 11 -.125, 12 -.2, 14 -.375, 15 0 -> 15
    # 4: all have sim 1       -> 11 -.125, 12 -.2, 14 -.375       -> 11
    out = rerank(MMR_ROWS, MMR_SCORES, 4, mmr=Mmr(cluster_vectors, 0.5))
    assert out.rows.tolist() == [10, 13, 15, 11]
    assert out.scores.tolist() == [2.0, 1.0, 0.0, 1.5]  # adjusted scores, in MMR order


def test_mmr_lambda_one_is_pure_relevance() -> None:
    out = rerank(MMR_ROWS, MMR_SCORES, 4, mmr=Mmr(cluster_vectors, 1.0))
    assert out.rows.tolist() == [10, 11, 12, 13]


def test_mmr_with_a_promotion() -> None:
    # 1 slot (ceil(0.25 * 4)) for {14}: MMR picks 10, 13, 15 while free slots remain; the last slot is
    # reserved, so 14 (not 11) takes it
    out = rerank(
        MMR_ROWS, MMR_SCORES, 4, mmr=Mmr(cluster_vectors, 0.5), promotions=[Promotion(mask(14), 0.25)]
    )
    assert out.rows.tolist() == [10, 13, 15, 14]
    assert out.reasons[-1] == ["promotion:0"]


def test_mmr_with_diversity() -> None:
    # cap 1 on "x" for 13 and 15: MMR would pick 10, 13, 15; 15 is blocked by 13 -> next best is 11 (-.125)
    table: dict[int, tuple[Hashable, ...]] = {10: (), 11: (), 12: (), 13: ("x",), 14: (), 15: ("x",)}
    out = rerank(MMR_ROWS, MMR_SCORES, 3, mmr=Mmr(cluster_vectors, 0.5), diversity=values_of(table))
    assert out.rows.tolist() == [10, 13, 11]


# --- everything together -----------------------------------------------------------------------------------


def test_all_rules_together() -> None:
    # boost 0: x2 on 15, 17 -> 15: 0 + ln 2 = .693, 17: -1 + ln 2 = -.307
    # boost 1: +.25 on 11   -> 11: 1.75
    # rotation .5 on 10     -> 10: 2 - ln 2 = 1.307
    # promoted pool adds 30 (-0.1)
    # base: 11 (1.75), 10 (1.307), 12 (1.2), 13 (1.0), 15 (.693), 14 (.5), 30 (-.1), 16 (-.3), 17 (-.307)
    # pin 13 at 1 -> 4 slots for the rest; promotion {16, 17, 30} share .4 -> 2 reserved; cap 1 per value
    # walk (4 slots, 2 reserved): 11 (a) take; 10 (b) take -> no free slot left; 12 (a) blocked;
    # 15 (b) blocked; 14 (d) waits; 30 (f) matches: take; 16 (e) matches: take. By score: 11, 10, 30, 16
    table: dict[int, tuple[Hashable, ...]] = {11: ("a",), 10: ("b",), 12: ("a",), 13: ("c",), 15: ("b",)}
    table |= {14: ("d",), 30: ("f",), 16: ("e",), 17: ("e",)}
    out = rerank(
        ROWS,
        LOGITS,
        5,
        boosts=[Boost(mask(15, 17), 2.0), Boost(mask(11), 0.25, mode="add")],
        promotions=[Promotion(mask(16, 17, 30), 0.4)],
        promoted_pools=[(np.array([30]), np.array([-0.1]))],
        pins=[(13, 1)],
        diversity=values_of(table),
        rotation=Rotation(np.array([10]), 0.5),
    )
    assert out.rows.tolist() == [13, 11, 10, 30, 16]
    np.testing.assert_allclose(out.scores, [1.0, 1.75, 2.0 - LN2, -0.1, -0.3])
    assert out.reasons == [["pin"], ["boost:1"], ["rotation"], ["promotion:0"], ["promotion:0"]]


# --- edges and errors --------------------------------------------------------------------------------------


def test_edges() -> None:
    assert rerank(ROWS, LOGITS, 0).rows.tolist() == []
    assert rerank(ROWS[:0], LOGITS[:0], 5).rows.tolist() == []
    assert rerank(ROWS[:3], LOGITS[:3], 5).rows.tolist() == [10, 11, 12]
    # FAISS pads with -1; duplicates keep their first occurrence
    out = rerank(np.array([10, -1, 11, 10]), np.array([1.0, 0.0, 0.5, 9.0]), 5)
    assert out.rows.tolist() == [10, 11] and out.scores.tolist() == [1.0, 0.5]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"k": -1},
        {"boosts": [Boost(mask(10), 0.0)]},
        {"boosts": [Boost(mask(10), -1.0)]},
        {"promotions": [Promotion(mask(10), 0.0)]},
        {"promotions": [Promotion(mask(10), 1.5)]},
        {"promoted_pools": [(ROWS, LOGITS)]},
        {"pins": [(10, 0)]},
        {"diversity": Diversity(0, lambda rows: [() for _ in rows])},
        {"mmr": Mmr(cluster_vectors, 1.5)},
        {"rotation": Rotation(ROWS, -0.5)},
    ],
)
def test_invalid_arguments_raise(kwargs: dict) -> None:
    k = kwargs.pop("k", 5)
    with pytest.raises(ValueError):
        rerank(ROWS, LOGITS, k, **kwargs)


# --- randomized invariants ---------------------------------------------------------------------------------


def reference_pins(pins: Sequence[tuple[int, int]], k: int) -> dict[int, int]:
    """0-based position -> row, per the documented pin rules."""
    placed: dict[int, int] = {}
    for row, position in pins:
        if row in placed.values():
            continue
        at = position - 1
        while at < k and at in placed:
            at += 1
        if at < k:
            placed[at] = row
    return placed


@pytest.mark.parametrize("seed", range(300))
def test_randomized_invariants(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n_rows = 300
    size = int(rng.integers(0, 60))
    rows = rng.choice(n_rows, size=size, replace=False).astype(np.int64)  # [C]
    scores = np.sort(rng.normal(size=size))[::-1]  # [C]
    if size and rng.random() < 0.3:  # FAISS padding and a repeated row (its first score is kept)
        rows = np.concatenate([rows, [rows[0], -1, -1]])
        scores = np.concatenate([scores, [scores[-1] - 1.0, -np.inf, -np.inf]])
    k = int(rng.integers(0, 15))
    multi = bool(rng.integers(0, 2))
    n_values = int(rng.integers(1, 12))
    table = {
        r: tuple(
            f"v{v}"
            for v in rng.choice(n_values, size=int(rng.integers(0 if multi else 1, 3 if multi else 2)))
        )
        for r in range(n_rows)
    }
    cap = int(rng.integers(1, 3))
    diversity = Diversity(cap, lambda rs: [table[int(r)] for r in rs]) if rng.random() < 0.6 else None
    promo_mask = rng.random(n_rows) < rng.uniform(0.05, 0.4)
    promotions = [Promotion(promo_mask, float(rng.uniform(0.05, 1.0)))] if rng.random() < 0.6 else []
    pools = []
    if promotions and rng.random() < 0.5:
        extra = rng.choice(np.flatnonzero(promo_mask), size=min(5, int(promo_mask.sum())), replace=False)
        pools = [(extra.astype(np.int64), rng.normal(size=extra.size) - 1.0)]
    pins = [(int(rng.integers(0, n_rows)), int(rng.integers(1, 20))) for _ in range(int(rng.integers(0, 4)))]
    boosts = [Boost(rng.random(n_rows) < 0.3, float(rng.uniform(0.2, 3.0)))] if rng.random() < 0.5 else []
    rotation = (
        Rotation(rng.choice(n_rows, size=20), float(rng.choice([0.0, 0.5]))) if rng.random() < 0.4 else None
    )
    vectors = rng.normal(size=(n_rows, 4)).astype(np.float32)
    mmr = Mmr(lambda rs: vectors[rs], float(rng.uniform(0, 1))) if rng.random() < 0.3 else None

    out = rerank(
        rows,
        scores,
        k,
        boosts=boosts,
        promotions=promotions,
        promoted_pools=pools,
        pins=pins,
        diversity=diversity,
        mmr=mmr,
        rotation=rotation,
    )
    got = out.rows.tolist()
    placed = reference_pins(pins, k)
    pool = (set(rows.tolist()) - {-1}) | {int(r) for extra, _ in pools for r in extra}
    everything = pool | set(placed.values())

    assert len(got) == len(set(got)), "duplicates"
    assert len(got) == min(k, len(everything))
    assert len(out.scores) == len(got) == len(out.reasons)
    assert set(got) <= everything
    if len(pool - set(placed.values())) >= k:  # the pool fills every position: pins hold exactly
        for at, row in placed.items():
            assert got[at] == row
            assert "pin" in out.reasons[at]
    else:  # compacted: pins keep their relative order
        pinned_seen = [r for r in got if r in placed.values()]
        assert pinned_seen == [placed[at] for at in sorted(placed)]
    for row, score in zip(got, out.scores, strict=True):
        assert math.isnan(score) == (row not in pool)
    if promotions:
        reserved = min(math.ceil(promotions[0].share * k - 1e-9), k)
        matching = [r for r in everything if promo_mask[r]]
        other_pins = sum(not promo_mask[r] for r in placed.values())  # pins outside the promotion take slots
        if len(everything) >= k:
            assert sum(bool(promo_mask[r]) for r in got) >= min(reserved, len(matching), k - other_pins)
    if diversity is not None:
        counts: dict[Hashable, int] = {}
        for r, why in zip(got, out.reasons, strict=True):
            if "pin" in why or "diversity:relaxed" in why:
                continue
            for v in set(table[r]):
                counts[v] = counts.get(v, 0) + 1
        assert all(c <= cap for c in counts.values())
        # single-valued items with enough distinct values and no reservation competing: never relaxed
        if not promotions and not multi:
            per_value: dict[Hashable, int] = {}
            for r in pool - set(placed.values()):
                per_value[table[r][0]] = per_value.get(table[r][0], 0) + 1
            if sum(min(cap, n) for n in per_value.values()) >= k - len(placed):
                assert not any("diversity:relaxed" in why for why in out.reasons)
    if mmr is None and diversity is None and not promotions:  # plain: the rest is sorted by adjusted score
        rest = [s for s, why in zip(out.scores, out.reasons, strict=True) if "pin" not in why]
        assert rest == sorted(rest, reverse=True)


@pytest.mark.parametrize("seed", range(100))
def test_one_promotion_matches_the_reference_set(seed: int) -> None:
    # reference: the r best matching items, plus the best (k - r) of everything else, ordered by score
    rng = np.random.default_rng(1000 + seed)
    size = int(rng.integers(1, 80))
    rows = rng.choice(200, size=size, replace=False).astype(np.int64)
    scores = rng.normal(size=size)  # unsorted on purpose
    promo = rng.random(200) < rng.uniform(0.02, 0.5)
    share = float(rng.uniform(0.01, 1.0))
    k = int(rng.integers(1, 20))
    ranked = [int(rows[i]) for i in np.argsort(-scores, kind="stable")]
    matching = [r for r in ranked if promo[r]]
    reserved = set(matching[: min(math.ceil(share * k - 1e-9), k)])
    rest = [r for r in ranked if r not in reserved][: k - len(reserved)]
    expected = [r for r in ranked if r in reserved or r in rest]
    out = rerank(rows, scores, k, promotions=[Promotion(promo, share)])
    assert out.rows.tolist() == expected
