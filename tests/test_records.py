"""The typed records read back every record rlrf writes and write it out again byte for byte."""

from __future__ import annotations

import json
from dataclasses import fields

import pytest

from rlrf.core import records as rec

# lines as rlrf writes them (a quickstart run's files, texts shortened)
RESPONSE = ('{"user": "14", "iter": 0, "k": 0, "text": "This user\'s preference is a mix", "n_tokens": 32, '
            '"prompt_hash": "7e20e94bbd416fbe", "finished": false}')
FLAGGED_ITEM = '{"item": "7", "iter": 0, "k": 0, "text": "", "n_tokens": 0, "prompt_hash": "ab", "finished": true, "flag": "empty"}'
NEXT_ITEM = ('{"user": "3", "iter": 1, "k": 2, "text": "Heat (1995)", "n_tokens": 5, "prompt_hash": "cd", '
             '"finished": true, "target": "747"}')
SCORE = ('{"user": "14", "iter": 0, "k": 0, "ndcg@1": 0.0, "map@1": 0.0, "ndcg@3": 0.2960819109658652, '
         '"map@3": 0.16666666666666666, "ndcg@5": 0.36005461457723403, "map@5": 0.2, "ndcg@7": 0.48134881959833375, '
         '"map@7": 0.2959183673469387, "margin": -0.04573315382003784, "empty": false}')
SPREC_PAIR = ('{"user": "5", "iter": 0, "prompt": "p", "chosen": "Heat (1995)", "rejected": "Up (2009)", '
              '"rejected_list": ["Up (2009)"], "rejected_sources": ["greedy"], "margin": 0.412}')


@pytest.mark.parametrize("cls, line", [(rec.ResponseRecord, RESPONSE), (rec.ResponseRecord, FLAGGED_ITEM),
                                       (rec.ResponseRecord, NEXT_ITEM), (rec.ScoreRecord, SCORE),
                                       (rec.SPRecPairRecord, SPREC_PAIR)])
def test_a_written_line_reads_back_and_writes_out_identically(cls, line):
    assert cls.from_dict(json.loads(line)).to_json() == line


def test_jsonl_records_keep_non_ascii_text_as_the_writers_do():
    line = RESPONSE.replace("a mix", "un mélange")
    assert "mélange" in rec.ResponseRecord.from_dict(json.loads(line)).to_json()


def test_optional_fields_are_left_out_and_none_fields_written_as_null():
    response = rec.ResponseRecord.from_dict(json.loads(FLAGGED_ITEM))
    assert response.key == "7" and response.user is None and "user" not in response.to_dict()
    align = rec.AlignResult(adapter="a", first_loss=None)
    assert align.to_dict()["first_loss"] is None and "skipped" not in align.to_dict()
    assert rec.ScoreRecord.from_dict(json.loads(SCORE)).reward("map@3") == pytest.approx(1 / 6)


def test_every_record_names_each_json_key_once():
    for cls in (rec.ListRecord, rec.ResponseRecord, rec.ScoreRecord, rec.PairRecord, rec.SPRecPairRecord,
                rec.AlignResult, rec.PerUser, rec.Evaluation, rec.IterationRecord):
        keys = [f.metadata.get("key", f.name) for f in fields(cls)]
        assert len(keys) == len(set(keys)), cls.__name__


def test_pairs_as_the_score_stage_builds_them_round_trip():
    from rlrf.reward.score import build_pairs

    responses = [{"user": u, "iter": 0, "k": k, "text": f"{u}{k}", "finished": k != 2} for u in ("a", "b") for k in range(3)]
    scores = {(r["user"], r["k"]): float(r["k"]) for r in responses}
    for negatives in (1, 2):
        pairs, _ = build_pairs(responses, scores, {"a": "pa", "b": "pb"}, {"a", "b"}, negatives=negatives)
        assert len(pairs) == 2
        for pair in pairs:
            line = json.dumps(pair, ensure_ascii=False)
            assert rec.PairRecord.from_dict(pair).to_json() == line


def test_lists_as_the_data_stage_writes_them_round_trip():
    from rlrf.data.lists import RerankList

    for user in ("3", "Zoë"):  # lists.jsonl escapes non-ASCII ids
        lst = RerankList(user, [299, 301], [2.0, None], [5, 9, 1], [1, 0, 0])
        assert rec.ListRecord.from_dict(json.loads(lst.to_json())).to_json() == lst.to_json()


def test_an_evaluation_as_the_loop_records_it_round_trips_in_key_order():
    from rlrf.methods.rlrf4rec import summarize_rewards

    responses = [{"user": u, "k": k, "text": "a b c d e f", "n_tokens": 6} for u in ("u1", "u2") for k in range(2)]
    scored = {(r["user"], r["k"]): {"ndcg@5": 0.5 + 0.1 * r["k"], "map@5": 0.25, "empty": False} for r in responses}
    greedy = [{"user": u, "k": 0, "text": "a b c d e f", "n_tokens": 6} for u in ("u1", "u2")]
    independent = {"ndcg@5": [0.1, 0.2], "map@5": [0.3, 0.4]}
    evaluation = summarize_rewards(responses, scored, greedy, {(u, 0): scored[(u, 0)] for u in ("u1", "u2")},
                                   independent, "ndcg@5", {"u1": "a b c d e", "u2": "x"})
    typed = rec.Evaluation.from_dict(evaluation)
    assert json.dumps(typed.to_dict()) == json.dumps(evaluation)
    assert typed.per_user.copied == [0.5, 0.0] and typed.independent_map_5 == pytest.approx(0.35)
    iteration = {"pairs": {"users": 8, "pairs": 8}, "adapter": "iter_0/adapter", "seconds": 29.0}
    assert rec.IterationRecord.from_dict(iteration).to_dict() == iteration
    assert rec.IterationRecord.from_dict({"pairs": {"prompts": 4}, "adapter": None}).trained_on == 4


def test_an_evaluation_records_per_user_whether_the_greedy_summary_ends_and_repeats():
    from rlrf.methods.rlrf4rec import summarize_rewards

    texts = {"u1": ("They love horror. They love horror.", True), "u2": ("They like comedies and", False),
             "u3": ("They like comedies.", False)}
    users = sorted(texts)
    responses = [{"user": u, "k": 0, "text": "t", "n_tokens": 1} for u in users]
    scored = {(u, 0): {"ndcg@5": 0.5, "map@5": 0.25, "empty": False} for u in users}
    greedy = [{"user": u, "k": 0, "text": t, "n_tokens": 5, "finished": f} for u, (t, f) in texts.items()]
    evaluation = summarize_rewards(responses, scored, greedy, scored, None, "ndcg@5")
    assert evaluation["per_user"]["ended"] == [1, 0, 1] and evaluation["per_user"]["repeated"] == [1, 0, 0]
    assert evaluation["ended"] == pytest.approx(2 / 3) and evaluation["repeated"] == pytest.approx(1 / 3)
    assert list(evaluation)[-4:] == ["empty", "flagged", "rewards", "per_user"]  # the new keys sit with the means
