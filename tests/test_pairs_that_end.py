"""Pairs that prefer a summary that ends: `score.prefer_finished_within` and `score.reject_looping_within`.

The reward does not see a summary run into `generate.max_new_tokens` and repeat itself, so best-vs-worst
pairs taught the policy to loop (docs/results.md). Among near-equal rewards these options choose a summary
that ended with EOS and reject one that was cut and loops. Both are off by default, and off they leave
every pair as it was.
"""

from __future__ import annotations

import pytest

from rlrf.core.config import ScoreConfig
from rlrf.core.io import atomic_write_jsonl, read_json, read_jsonl
from rlrf.core.layout import RunLayout
from rlrf.reward.score import build_pairs, score_and_pair

PROMPTS = {"u": "P"}
LOOP = ("The user enjoys dramas with strong female leads and quiet endings. "
        "The user enjoys dramas with strong female leads and quiet endings. The user enjoys")
ENDS = "Likes quiet dramas and late-nineties thrillers."
CUT = "Likes quiet dramas, late-nineties thrillers, and the occasional western with a long"


def summaries(*specs: tuple[str, bool, float]) -> tuple[list[dict], dict]:
    """(text, finished, reward) per sample k of user u."""
    responses = [{"user": "u", "iter": 0, "k": k, "text": text, "finished": finished}
                 for k, (text, finished, _) in enumerate(specs)]
    return responses, {("u", k): reward for k, (_, _, reward) in enumerate(specs)}


def pair(responses, rewards, **options) -> dict:
    (p,), _ = build_pairs(responses, rewards, PROMPTS, {"u"}, **options)
    return p


def test_a_summary_that_ended_is_chosen_over_a_slightly_better_one_cut_at_the_cap():
    rs, rewards = summaries((CUT, False, 0.90), (ENDS, True, 0.85), ("x " + ENDS, True, 0.50), (CUT + ".", False, 0.20))
    assert pair(rs, rewards)["chosen_k"] == 0  # off: the best, cut or not
    p = pair(rs, rewards, prefer_finished_within=0.1)
    assert (p["chosen_k"], p["chosen_finished"], p["rejected_k"]) == (1, True, 3)
    assert p["margin"] == pytest.approx(0.85 - 0.20)
    assert pair(rs, rewards, prefer_finished_within=0.01)["chosen_k"] == 0  # 0.05 below the best is too far


def test_zero_tolerance_breaks_exact_ties_only():
    rs, rewards = summaries((CUT, False, 0.7), (ENDS, True, 0.7), (CUT, False, 0.1))
    assert pair(rs, rewards)["chosen_k"] == 0  # ties keep the lower sample index
    assert pair(rs, rewards, prefer_finished_within=0.0)["chosen_k"] == 1


def test_the_chosen_stays_the_best_when_no_summary_near_it_ended():
    rs, rewards = summaries((CUT, False, 0.9), (CUT + " and", False, 0.88), (ENDS, True, 0.3))
    assert pair(rs, rewards, prefer_finished_within=0.1)["chosen_k"] == 0


def test_an_empty_summary_is_never_preferred_for_having_ended():
    rs, rewards = summaries((CUT, False, 0.9), ("", True, 0.9), (ENDS, True, 0.2))
    assert pair(rs, rewards, prefer_finished_within=0.1)["chosen_k"] == 0


def test_something_must_rank_below_the_chosen_so_the_margin_keeps_the_rewards_order():
    # the only summary that ended is also the worst: it cannot be chosen, nothing would rank below it
    rs, rewards = summaries((CUT, False, 0.9), (ENDS, True, 0.88))
    p = pair(rs, rewards, prefer_finished_within=0.1, reject_looping_within=0.1)
    assert (p["chosen_k"], p["rejected_k"]) == (0, 1) and p["margin"] > 0


def test_a_summary_cut_at_the_cap_that_repeats_itself_is_rejected_over_a_slightly_worse_one():
    rs, rewards = summaries((ENDS, True, 0.9), ("x " + ENDS, True, 0.5), (LOOP, False, 0.22), (ENDS + " y", True, 0.20))
    assert pair(rs, rewards)["rejected_k"] == 3
    p = pair(rs, rewards, reject_looping_within=0.05)
    assert (p["rejected_k"], p["rejected_finished"], p["rejected"]) == (2, False, LOOP)
    assert p["margin"] == pytest.approx(0.9 - 0.22)
    assert pair(rs, rewards, reject_looping_within=0.01)["rejected_k"] == 3


def test_only_a_summary_both_cut_and_repeating_counts_as_looping():
    for text, finished in ((CUT, False), (LOOP, True)):  # cut but no repeat; repeats but ended
        rs, rewards = summaries((ENDS, True, 0.9), (text, finished, 0.22), (ENDS + " y", True, 0.20))
        assert pair(rs, rewards, reject_looping_within=0.05)["rejected_k"] == 2


def test_with_several_negatives_the_looping_summary_leads_the_rejected_list():
    rs, rewards = summaries((ENDS, True, 0.9), ("x " + ENDS, True, 0.5), (LOOP, False, 0.22), (ENDS + " y", True, 0.20))
    p = pair(rs, rewards, negatives=3, reject_looping_within=0.05)
    assert p["rejected"] == LOOP and p["rejected_list"] == [LOOP, ENDS + " y", "x " + ENDS]
    assert p["rejected_margins"] == pytest.approx([0.9 - 0.22, 0.9 - 0.20, 0.9 - 0.5])
    assert p["rejected_finished_list"] == [False, True, True]


def _scored_iteration(root) -> RunLayout:
    """An iteration whose every summary is already scored: the score stage only rebuilds its pairs."""
    layout = RunLayout(root)
    rs, rewards = summaries((CUT, False, 0.90), (ENDS, True, 0.85), (LOOP, False, 0.22), (ENDS + " y", True, 0.20))
    layout.responses(0).parent.mkdir(parents=True)
    atomic_write_jsonl(layout.responses(0), rs)
    atomic_write_jsonl(layout.prompts(0), [{"user": "u", "iter": 0, "prompt": "P", "prompt_hash": "h"}])
    atomic_write_jsonl(layout.scores(0), [{"user": "u", "iter": 0, "k": k, "ndcg@5": v} for (_, k), v in rewards.items()])
    return layout


def test_the_score_stage_leaves_pairs_and_their_meta_as_they_were_when_off(tmp_path):
    layout = _scored_iteration(tmp_path)
    score_and_pair(layout, 0, None, ScoreConfig(), {"u"}, show_progress=False)
    (p,) = read_jsonl(layout.pairs(0))
    assert (p["chosen_k"], p["rejected_k"]) == (0, 3)
    assert set(read_json(layout.pairs_meta(0))) == {"metric", "copy_penalty", "users", "pairs", "skipped_tie",
                                                   "skipped_margin", "skipped_empty_best", "skipped_not_train",
                                                   "skipped_single"}


def test_the_score_stage_records_what_the_preference_changed(tmp_path):
    layout = _scored_iteration(tmp_path)
    score = ScoreConfig(prefer_finished_within=0.1, reject_looping_within=0.05)
    score_and_pair(layout, 0, None, score, {"u"}, show_progress=False)
    (p,) = read_jsonl(layout.pairs(0))
    assert (p["chosen_k"], p["rejected_k"]) == (1, 2)
    meta = read_json(layout.pairs_meta(0))
    assert (meta["prefer_finished_within"], meta["reject_looping_within"]) == (0.1, 0.05)
    assert meta["changed_by_finish_preference"] == {"chosen": 1, "rejected": 1}


def test_the_config_refuses_a_negative_tolerance():
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        ScoreConfig(prefer_finished_within=-0.1)
    assert ScoreConfig().prefer_finished_within is None and ScoreConfig().reject_looping_within is None


class LengthReward:
    """Rewards a summary by its word count and records every text it was asked to score."""

    def __init__(self):
        self.seen: list[str] = []

    def score(self, users, texts):
        self.seen += texts
        return {"ndcg@5": [len(t.split()) / 100 for t in texts], "empty": [not t.strip() for t in texts]}


CUT_AFTER_A_SENTENCE = "Likes quiet dramas and late-nineties thrillers. Also the occasional western with a long"


def _responses(tmp_path) -> RunLayout:
    layout = RunLayout(tmp_path / "run")
    rs, _ = summaries((CUT_AFTER_A_SENTENCE, False, 0), (LOOP, False, 0), (ENDS, True, 0))
    layout.responses(0).parent.mkdir(parents=True)
    atomic_write_jsonl(layout.responses(0), rs)
    atomic_write_jsonl(layout.prompts(0), [{"user": "u", "iter": 0, "prompt": "P", "prompt_hash": "h"}])
    return layout


def test_trimming_scores_and_trains_a_cut_summary_up_to_its_last_sentence_with_eos(tmp_path):
    layout, reward = _responses(tmp_path), LengthReward()
    score_and_pair(layout, 0, reward, ScoreConfig(trim_to_sentence=True), {"u"}, show_progress=False)
    kept = "Likes quiet dramas and late-nineties thrillers."
    loop_kept = "The user enjoys dramas with strong female leads and quiet endings. " * 2
    assert sorted(reward.seen) == sorted([kept, loop_kept.rstrip(), ENDS])
    (p,) = read_jsonl(layout.pairs(0))
    assert (p["chosen"], p["chosen_finished"]) == (loop_kept.rstrip(), True)  # the longest, now ended
    assert (p["rejected"], p["rejected_finished"]) == (ENDS, True)
    assert read_json(layout.pairs_meta(0))["trimmed"] == 2


def test_flipping_trimming_rescores_only_the_summaries_it_changes(tmp_path):
    layout = _responses(tmp_path)
    score_and_pair(layout, 0, LengthReward(), ScoreConfig(trim_to_sentence=True), {"u"}, show_progress=False)
    untrimmed = LengthReward()
    score_and_pair(layout, 0, untrimmed, ScoreConfig(), {"u"}, show_progress=False)
    assert sorted(untrimmed.seen) == sorted([CUT_AFTER_A_SENTENCE, LOOP])
    (p,) = read_jsonl(layout.pairs(0))
    assert (p["chosen"], p["chosen_finished"]) == (LOOP, False)
    assert not any("trimmed" in row for row in read_jsonl(layout.scores(0)))
