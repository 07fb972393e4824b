"""Pair building: best vs worst per training user; ties, margins and k negatives."""

from __future__ import annotations

import pytest

from rlrf.evaluation.copying import copied_share
from rlrf.reward.score import build_pairs, guard_changes, pair_rewards


def responses(user: str, texts: list[str]) -> list[dict]:
    return [{"user": user, "iter": 0, "k": k, "text": t} for k, t in enumerate(texts)]


PROMPTS = {"u1": "P1", "u2": "P2", "u3": "P3"}


def test_best_is_chosen_and_worst_rejected():
    rs = responses("u1", ["a", "b", "c", "d"])
    scores = {("u1", 0): 0.2, ("u1", 1): 0.9, ("u1", 2): 0.1, ("u1", 3): 0.5}
    pairs, stats = build_pairs(rs, scores, PROMPTS, {"u1"})
    assert pairs == [{"user": "u1", "iter": 0, "prompt": "P1", "chosen": "b", "rejected": "c",
                      "margin": 0.9 - 0.1, "chosen_k": 1, "rejected_k": 2,
                      "chosen_finished": True, "rejected_finished": True}]
    assert stats.pairs == 1 and stats.users == 1


def test_pairs_record_which_texts_were_cut_at_the_length_cap():
    rs = responses("u1", ["a", "b", "c", "d"])
    for r, finished in zip(rs, [True, False, True, False]):
        r["finished"] = finished
    scores = {("u1", 0): 0.2, ("u1", 1): 0.9, ("u1", 2): 0.1, ("u1", 3): 0.5}
    (pair,), _ = build_pairs(rs, scores, PROMPTS, {"u1"}, negatives=3)
    assert (pair["chosen_finished"], pair["rejected_finished"]) == (False, True)  # b was cut, c was not
    assert pair["rejected_finished_list"] == [True, True, False]  # c, a, d


def test_tied_users_are_skipped_and_counted():
    rs = responses("u1", ["a", "b"]) + responses("u2", ["c", "d"])
    scores = {("u1", 0): 0.5, ("u1", 1): 0.5, ("u2", 0): 0.3, ("u2", 1): 0.7}
    pairs, stats = build_pairs(rs, scores, PROMPTS, {"u1", "u2"})
    assert [p["user"] for p in pairs] == ["u2"]
    assert stats.skipped_tie == 1


def test_margin_below_threshold_is_skipped():
    rs = responses("u1", ["a", "b"]) + responses("u2", ["c", "d"])
    scores = {("u1", 0): 0.50, ("u1", 1): 0.55, ("u2", 0): 0.1, ("u2", 1): 0.7}
    pairs, stats = build_pairs(rs, scores, PROMPTS, {"u1", "u2"}, min_margin=0.1)
    assert [p["user"] for p in pairs] == ["u2"]
    assert stats.skipped_margin == 1


def test_k_negatives_are_the_k_worst_worst_first_never_the_chosen():
    rs = responses("u1", ["a", "b", "c", "d"])
    scores = {("u1", 0): 0.2, ("u1", 1): 0.9, ("u1", 2): 0.1, ("u1", 3): 0.5}
    (pair,), _ = build_pairs(rs, scores, PROMPTS, {"u1"}, negatives=2)
    assert pair["rejected_list"] == ["c", "a"]
    assert pair["rejected_margins"] == [0.9 - 0.1, 0.9 - 0.2]
    # asking for more negatives than exist gives every response but the chosen one
    (pair,), _ = build_pairs(rs, scores, PROMPTS, {"u1"}, negatives=10)
    assert pair["rejected_list"] == ["c", "a", "d"]


def test_only_training_users_make_pairs():
    rs = responses("u1", ["a", "b"]) + responses("u3", ["c", "d"])
    scores = {("u1", 0): 0.1, ("u1", 1): 0.7, ("u3", 0): 0.1, ("u3", 1): 0.7}
    pairs, stats = build_pairs(rs, scores, PROMPTS, {"u1"})
    assert [p["user"] for p in pairs] == ["u1"]
    assert stats.skipped_not_train == 1


def test_empty_best_response_is_not_imitated():
    rs = responses("u1", ["   ", "b"])
    scores = {("u1", 0): 0.9, ("u1", 1): 0.1}
    pairs, stats = build_pairs(rs, scores, PROMPTS, {"u1"})
    assert pairs == [] and stats.skipped_empty_best == 1


def test_equal_rewards_keep_the_lower_sample_index_first():
    rs = responses("u1", ["a", "b", "c"])
    scores = {("u1", 0): 0.4, ("u1", 1): 0.9, ("u1", 2): 0.4}
    (pair,), _ = build_pairs(rs, scores, PROMPTS, {"u1"})
    assert (pair["chosen"], pair["rejected"]) == ("b", "c")


def test_copy_penalty_turns_a_pair_against_the_summary_that_restates_its_prompt():
    prompt = "Movies this user watched:\n- Conspiracy Theory (1997); Action, Mystery, Romance, Thriller | rated 3"
    copy = "- Conspiracy Theory (1997); Action, Mystery, Romance, Thriller | rated 3"
    own = "Likes tense thrillers with a romantic subplot, mostly late-nineties studio films."
    responses = [{"user": "u", "iter": 0, "k": 0, "text": copy}, {"user": "u", "iter": 0, "k": 1, "text": own}]
    scored = {("u", 0): {"margin": 1.2}, ("u", 1): {"margin": 1.0}}
    assert copied_share(copy, prompt) == 1.0 and copied_share(own, prompt) == 0.0
    plain = pair_rewards(responses, scored, {"u": prompt}, "margin")
    assert plain == {("u", 0): 1.2, ("u", 1): 1.0}
    guarded = pair_rewards(responses, scored, {"u": prompt}, "margin", copy_penalty=0.5)
    assert guarded == {("u", 0): pytest.approx(0.7), ("u", 1): 1.0}
    pairs, _ = build_pairs(responses, guarded, {"u": prompt}, {"u"})
    assert (pairs[0]["chosen"], pairs[0]["rejected"]) == (own, copy)
    unguarded, _ = build_pairs(responses, plain, {"u": prompt}, {"u"})
    assert guard_changes(pairs, unguarded) == {"chosen": 1, "rejected": 1}
    assert guard_changes(unguarded, unguarded) == {"chosen": 0, "rejected": 0}


def test_copied_share_counts_word_five_grams_found_in_the_prompt():
    prompt = "Describe this user's preferences in a short paragraph."
    assert copied_share("Describe this user's preferences in a short paragraph: loves noir.", prompt) == pytest.approx(5 / 7)
    assert copied_share("too short", prompt) == 0.0
