"""Metric conventions (DESIGN.md "Metric conventions"), each checked on a case worked by hand.

Every expected value is written out as arithmetic in the comment next to it; log2(3) ≈ 1.58496,
so 1/log2(3) ≈ 0.63093, 1/log2(4) = 0.5, 1/log2(5) ≈ 0.43068, 1/log2(6) ≈ 0.38685.
"""

import numpy as np
import pytest
import torch

from rlrf.evaluation.metrics import (
    div_ratio,
    hit_ndcg_at_k,
    hr_at_k,
    map_at_k,
    mean_popularity,
    mgu_dgu,
    mrr_at_k,
    ndcg_at_k,
    or_ratio,
    popularity_histogram,
    ranking_metrics,
    target_ranks,
)

approx = pytest.approx


# ------------------------------------------------------------------------------ ranking metrics


def test_ndcg_binary_labels():
    # Scores already descending, so ranked labels = 0, 1, 0, 1.
    scores = [[0.9, 0.8, 0.7, 0.6]]
    labels = [[0, 1, 0, 1]]
    # DCG@4 = 1/log2(3) + 1/log2(5) = 0.63093 + 0.43068 = 1.06161
    # IDCG@4 (ideal 1, 1, 0, 0) = 1/log2(2) + 1/log2(3) = 1.63093  -> 0.65093
    assert ndcg_at_k(scores, labels, 4) == approx([0.65093], abs=1e-5)
    # DCG@2 = 0.63093; IDCG@2 = 1.63093 -> 0.38685
    assert ndcg_at_k(scores, labels, 2) == approx([0.38685], abs=1e-5)


def test_ndcg_graded_labels_use_gain_2_pow_rel_minus_1():
    # Ranked labels 1, 2, 0 -> gains 2^1-1 = 1, 2^2-1 = 3, 0.
    scores = [[3.0, 2.0, 1.0]]
    labels = [[1, 2, 0]]
    # DCG@3 = 1/1 + 3/log2(3) = 1 + 1.89279 = 2.89279
    # IDCG@3 (ideal 2, 1, 0) = 3/1 + 1/log2(3) = 3.63093  -> 2.89279 / 3.63093 = 0.79671
    assert ndcg_at_k(scores, labels, 3) == approx([0.79671], abs=1e-5)
    # NDCG@1 = gain(1) / gain(2) = 1/3
    assert ndcg_at_k(scores, labels, 1) == approx([1 / 3])


def test_ties_are_broken_by_original_position_earlier_first():
    # All scores equal: the order is the input order, so the relevant item is at rank 3.
    scores = [[0.5, 0.5, 0.5]]
    labels = [[0, 0, 1]]
    assert hr_at_k(scores, labels, 2) == approx([0.0])
    assert hr_at_k(scores, labels, 3) == approx([1.0])
    assert mrr_at_k(scores, labels, 3) == approx([1 / 3])
    # DCG@3 = 1/log2(4) = 0.5; IDCG@3 = 1 -> 0.5
    assert ndcg_at_k(scores, labels, 3) == approx([0.5])
    # The same tie with the relevant item first ranks it first.
    assert ndcg_at_k(scores, [[1, 0, 0]], 3) == approx([1.0])


def test_partial_tie_keeps_input_order_among_equal_scores():
    # Scores 1, 2, 2 -> order: position 1 (2, earlier), position 2 (2), position 0 (1).
    # The relevant item (position 2) is at rank 2 -> MRR = 1/2, HR@1 = 0.
    scores = [[1.0, 2.0, 2.0]]
    labels = [[0, 0, 1]]
    assert mrr_at_k(scores, labels, 3) == approx([0.5])
    assert hr_at_k(scores, labels, 1) == approx([0.0])


def test_k_larger_than_the_list_uses_the_whole_list():
    scores = [[0.2, 0.1]]
    labels = [[0, 1]]
    # Relevant item at rank 2 of 2.
    # NDCG = (1/log2(3)) / 1 = 0.63093; HR = 1; MRR = 1/2
    # MAP = P@2 · 1 / min(10, 1 relevant) = (1/2) / 1 = 0.5
    assert ndcg_at_k(scores, labels, 10) == approx([0.63093], abs=1e-5)
    assert hr_at_k(scores, labels, 10) == approx([1.0])
    assert mrr_at_k(scores, labels, 10) == approx([0.5])
    assert map_at_k(scores, labels, 10) == approx([0.5])


def test_a_list_with_no_relevant_item_scores_zero_everywhere():
    scores = [[0.3, 0.2, 0.1]]
    labels = [[0, 0, 0]]
    for metric in (ndcg_at_k, map_at_k, hr_at_k, mrr_at_k):
        assert metric(scores, labels, 3) == approx([0.0])
    assert map_at_k(scores, labels, 3, denominator="hits") == approx([0.0])


def test_map_default_denominator_is_min_of_k_and_relevant_in_list():
    scores = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    labels = [[1, 0, 1, 0, 1]]  # 3 relevant items
    # K=3: top-3 labels 1, 0, 1 -> P@1 = 1, P@3 = 2/3, sum = 5/3.
    # min(3, 3) = 3 -> 5/9 = 0.55556
    assert map_at_k(scores, labels, 3) == approx([5 / 9])
    # K=5: sum = 1 + 2/3 + 3/5 = 34/15; min(5, 3) = 3 -> 34/45 = 0.75556
    assert map_at_k(scores, labels, 5) == approx([34 / 45])


def test_map_hits_denominator_is_number_of_hits_in_top_k():
    scores = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    labels = [[1, 0, 1, 0, 1]]
    # K=3: sum = 5/3 (as above); 2 hits in the top 3 -> 5/6 = 0.83333
    assert map_at_k(scores, labels, 3, denominator="hits") == approx([5 / 6])


def test_map_denominators_differ_when_relevant_items_fall_below_k():
    scores = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    labels = [[1, 0, 1, 1, 1]]  # 4 relevant items
    # K=2: top-2 labels 1, 0 -> sum = P@1 = 1.
    # "min": min(2, 4) = 2 -> 1/2; "hits": 1 hit -> 1/1
    assert map_at_k(scores, labels, 2) == approx([0.5])
    assert map_at_k(scores, labels, 2, denominator="hits") == approx([1.0])
    # Relevant items exist but none in the top 1 of [0, 0, 1]: both give 0.
    assert map_at_k([[3.0, 2.0, 1.0]], [[0, 0, 1]], 1) == approx([0.0])
    assert map_at_k([[3.0, 2.0, 1.0]], [[0, 0, 1]], 1, denominator="hits") == approx([0.0])


def test_map_treats_graded_labels_as_relevant_when_positive():
    # Labels 2, 0, 1 are relevant, not, relevant: K=3 sum = 1 + 2/3 = 5/3; min(3, 2) = 2 -> 5/6
    assert map_at_k([[3.0, 2.0, 1.0]], [[2, 0, 1]], 3) == approx([5 / 6])


def test_padded_positions_are_never_ranked_nor_relevant():
    # Position 1 is padding with the highest score and label 1: it must be ignored.
    # Real items ranked: position 2 (0.5, label 0), position 0 (0.1, label 1) -> relevant at rank 2.
    scores = [[0.1, 0.9, 0.5]]
    labels = [[1, 1, 0]]
    mask = [[True, False, True]]
    # NDCG@3 = (1/log2(3)) / 1 = 0.63093 (IDCG counts only the one real relevant item)
    assert ndcg_at_k(scores, labels, 3, mask=mask) == approx([0.63093], abs=1e-5)
    assert hr_at_k(scores, labels, 1, mask=mask) == approx([0.0])
    assert mrr_at_k(scores, labels, 3, mask=mask) == approx([0.5])
    # MAP@3 = P@2 / min(3, 1) = 0.5
    assert map_at_k(scores, labels, 3, mask=mask) == approx([0.5])


def test_padding_takes_no_rank_from_real_items():
    # Padding with a higher score does not push the real relevant item off rank 1.
    scores = [[0.1, 0.9]]
    labels = [[1, 0]]
    mask = [[True, False]]
    assert hr_at_k(scores, labels, 1, mask=mask) == approx([1.0])
    assert mrr_at_k(scores, labels, 1, mask=mask) == approx([1.0])


def test_hr_and_mrr_per_list():
    scores = [[0.9, 0.8, 0.7], [0.9, 0.8, 0.7], [0.9, 0.8, 0.7]]
    labels = [[1, 0, 1], [0, 1, 0], [0, 0, 0]]
    # first relevant at rank 1, rank 2, none
    assert hr_at_k(scores, labels, 1) == approx([1.0, 0.0, 0.0])
    assert hr_at_k(scores, labels, 2) == approx([1.0, 1.0, 0.0])
    assert mrr_at_k(scores, labels, 3) == approx([1.0, 0.5, 0.0])
    assert mrr_at_k(scores, labels, 1) == approx([1.0, 0.0, 0.0])


def test_torch_tensors_are_accepted():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.6]], requires_grad=True)
    labels = torch.tensor([[0, 1, 0, 1]])
    mask = torch.tensor([[True, True, True, True]])
    # Same case as test_ndcg_binary_labels: 0.65093
    assert ndcg_at_k(scores, labels, 4, mask=mask) == approx([0.65093], abs=1e-5)


def test_ranking_metrics_means_over_lists_including_lists_without_relevant_items():
    scores = [[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]]
    labels = [[1, 0, 0], [0, 0, 0]]
    # List 1 is perfect (every metric 1), list 2 has no relevant item (every metric 0).
    out = ranking_metrics(scores, labels, ks=(1, 3))
    assert set(out) == {f"{m}@{k}" for m in ("ndcg", "map", "hr", "mrr") for k in (1, 3)}
    assert out == approx({key: 0.5 for key in out})
    assert all(isinstance(v, float) for v in out.values())


def test_ranking_metrics_map_denominator_option():
    # One list, labels 1, 0, 1, 1, 1 at K=2: "min" 1/2, "hits" 1 (see the MAP test above).
    scores = [[5.0, 4.0, 3.0, 2.0, 1.0]]
    labels = [[1, 0, 1, 1, 1]]
    assert ranking_metrics(scores, labels, ks=(2,))["map@2"] == approx(0.5)
    assert ranking_metrics(scores, labels, ks=(2,), map_denominator="hits")["map@2"] == approx(1.0)


@pytest.mark.parametrize(
    "call",
    [
        lambda: ndcg_at_k([[1.0, 2.0]], [[1, 0, 0]], 2),  # shape mismatch
        lambda: ndcg_at_k([1.0, 2.0], [1, 0], 2),  # not [n_lists, L]
        lambda: ndcg_at_k([[1.0, 2.0]], [[1, 0]], 2, mask=[[True]]),
        lambda: ndcg_at_k([[1.0, 2.0]], [[1, 0]], 0),  # k < 1
        lambda: ndcg_at_k([[1.0, 2.0]], [[-1, 0]], 2),  # negative label
        lambda: map_at_k([[1.0, 2.0]], [[1, 0]], 2, denominator="all"),
        lambda: ranking_metrics(np.zeros((0, 3)), np.zeros((0, 3))),
    ],
)
def test_bad_ranking_inputs_raise(call):
    with pytest.raises(ValueError):
        call()


# --------------------------------------------------------------------------- one-target metrics


def test_hit_ndcg_for_one_target():
    ranks = [0, 1, 4, 5, -1, None]
    hr, ndcg = hit_ndcg_at_k(ranks, 5)
    # rank < 5 is a hit; rank 5, -1 and None are not.
    assert hr == approx([1, 1, 1, 0, 0, 0])
    # NDCG = 1/log2(r + 2): r=0 -> 1/log2(2) = 1; r=1 -> 1/log2(3) = 0.63093;
    # r=4 -> 1/log2(6) = 0.38685; beyond K or absent -> 0
    assert ndcg == approx([1.0, 0.63093, 0.38685, 0.0, 0.0, 0.0], abs=1e-5)


def test_target_ranks_from_recommended_lists():
    recommended = [[3, 7, 9], [1, 2, 3], [5, -1, -1], [8, 8, 2]]
    targets = [7, 4, -1, 8]
    # 7 at position 1; 4 absent; an empty slot (-1) never matches a -1 target; 8 first at 0.
    assert target_ranks(recommended, targets).tolist() == [1, -1, -1, 0]


# -------------------------------------------------------------------------------- bias metrics


def test_div_ratio():
    recs = [[1, 1, 2], [3, 4, 1]]
    # K=3: distinct {1, 2, 3, 4} = 4 over 3 · 2 = 6 slots -> 2/3
    assert div_ratio(recs, 3) == approx(2 / 3)
    # K=2: [[1, 1], [3, 4]] -> distinct {1, 3, 4} = 3 over 2 · 2 = 4 -> 3/4
    assert div_ratio(recs, 2) == approx(0.75)


def test_or_ratio():
    recs = [[1, 1, 2], [3, 4, 1]]
    # K=3: counts 1:3, 2:1, 3:1, 4:1 -> top three 3 + 1 + 1 = 5 over 6 -> 5/6
    assert or_ratio(recs, 3) == approx(5 / 6)
    # K=2: counts 1:2, 3:1, 4:1 -> 2 + 1 + 1 = 4 over 4 -> 1
    assert or_ratio(recs, 2) == approx(1.0)


def test_empty_slots_are_no_item_but_count_in_the_denominator():
    recs = [[1, -1, -1], [1, 2, -1]]
    # distinct {1, 2} = 2 over 3 · 2 = 6 -> 1/3
    assert div_ratio(recs, 3) == approx(1 / 3)
    # fewer than 3 distinct items: counts 1:2, 2:1 -> 3 over 6 -> 1/2
    assert or_ratio(recs, 3) == approx(0.5)


def test_bias_metrics_reject_lists_shorter_than_k():
    with pytest.raises(ValueError, match="pad lists with -1"):
        div_ratio([[1, 2]], 3)


def test_mgu_dgu_with_multi_genre_and_genreless_items():
    # Genres A, B, C. Item 0: A; item 1: A and B (1/2 each); item 2: C; item 3: none;
    # item 4: A, B and C (1/3 each).
    third = 1 / 3
    genre_matrix = np.array(
        [
            [1.0, 0.0, 0.0],
            [0.5, 0.5, 0.0],
            [0.0, 0.0, 1.0],
            [0.0, 0.0, 0.0],
            [third, third, third],
        ]
    )
    history_items = np.array([0, 0, 2, 2])
    # GH: sum = [2, 0, 2] -> [1/2, 0, 1/2]
    recs = [[1, 3], [1, 4]]
    # GP over items 1, 3, 1, 4: sum = [1/2 + 1/2 + 1/3, 1/2 + 1/2 + 1/3, 1/3] = [4/3, 4/3, 1/3],
    # total 3 (item 3 has no genre and adds nothing) -> [4/9, 4/9, 1/9]
    # GP - GH = [4/9 - 1/2, 4/9 - 0, 1/9 - 1/2] = [-1/18, 8/18, -7/18]
    # MGU = (1/18 + 8/18 + 7/18) / 3 = 16/54 = 8/27 = 0.29630
    # DGU = 8/18 - (-7/18) = 15/18 = 5/6
    mgu, dgu = mgu_dgu(recs, history_items, genre_matrix, 2)
    assert mgu == approx(8 / 27)
    assert dgu == approx(5 / 6)


def test_mgu_dgu_rejects_a_multi_hot_genre_matrix():
    with pytest.raises(ValueError, match="1/m"):
        mgu_dgu([[0]], [0], np.array([[1.0, 1.0]]), 1)


def test_mean_popularity():
    popularity = np.array([10, 5, 1, 0, 2])
    recs = [[0, 1, -1], [2, 0, 4]]
    # K=3: items 0, 1, 2, 0, 4 -> (10 + 5 + 1 + 10 + 2) / 5 = 28/5 = 5.6 (the empty slot is skipped)
    assert mean_popularity(recs, popularity, 3) == approx(5.6)
    # K=1: items 0, 2 -> (10 + 1) / 2 = 5.5
    assert mean_popularity(recs, popularity, 1) == approx(5.5)


def test_popularity_histogram_with_bin_count_spans_the_catalogue():
    popularity = np.array([0, 1, 2, 3, 4, 10])
    # 2 bins over the catalogue range 0..10 -> edges 0, 5, 10 (last bin includes 10).
    # items 0, 1, 5, 5 -> popularity 0, 1, 10, 10 -> counts 2, 2 -> 1/2, 1/2
    fractions, edges = popularity_histogram([0, 1, 5, 5], popularity, 2)
    assert fractions == approx([0.5, 0.5])
    assert edges == approx([0, 5, 10])


def test_popularity_histogram_with_explicit_edges_ignores_empty_slots():
    popularity = np.array([0, 1, 2, 3, 4, 10])
    # items 0, 1, 2, 5 (the -1 is ignored) -> popularity 0, 1, 2, 10
    # bins [0, 1): 1 item; [1, 5): 2 items; [5, 100]: 1 item -> 1/4, 2/4, 1/4
    fractions, _ = popularity_histogram([[0, 1], [2, 5], [-1, -1]], popularity, [0, 1, 5, 100])
    assert fractions == approx([0.25, 0.5, 0.25])
