"""`rlrf rank`: the candidate-ranking task, its metrics, each arm's data and loss, RosePO's oracle."""

import json
import math

import numpy as np
import pytest

from rlrf.core.io import read_json, read_jsonl
from rlrf.evaluation import metrics as m
from rlrf.methods.rank_arms import ARMS, arm_align, build_pairs, negatives_of
from rlrf.methods.rank_context import build_context
from rlrf.methods.rank_evaluation import popular_pick, score_answers
from rlrf.methods.rank_examples import (
    Answer, RankExample, TitleKeys, draw_candidates, ground_answer, hallucination_negative, margin_for_epsilon,
    oracle_epsilon, popular_negative, seeded_rng, self_hard_negative,
)


@pytest.fixture
def tiny_rank_config(tiny_config):
    return tiny_config(
        data={"max_users": 60},
        sasrec={"epochs": 1, "show_progress": False, "hidden_size": 16},
        generate={"max_new_tokens": 8, "batch_size": 32, "profile": False, "max_prompt_tokens": 2048},
        align={"beta": 0.1, "trainer_args": {"per_device_train_batch_size": 2, "max_length": 2048,
                                             "learning_rate": 1e-3, "logging_steps": 1}},
        sft={"trainer_args": {"per_device_train_batch_size": 4, "max_length": 2048, "max_steps": 2}},
        rank={"sft_examples": 8, "pair_examples": 4, "steps": 2, "eval_users": 4, "windows": 2, "bootstrap": 200,
              "arms": ["sft", "dpo", "sdpo", "dmpo_pairwise", "rosepo_popularity", "trl"]},
    )


def test_every_candidate_list_holds_the_target_once_and_nothing_the_user_saw(tiny_rank_config, ml100k_small):
    cfg = tiny_rank_config.model_copy(update={"rank": tiny_rank_config.rank.model_copy(update={
        "sft_examples": None, "eval_users": None})})
    ctx = build_context(cfg, ml100k_small)
    again = build_context(cfg, ml100k_small)
    assert ctx.eval_examples == again.eval_examples and ctx.sft_examples == again.sft_examples  # fixed by the seed
    assert {ex.user for ex in ctx.sft_examples} <= set(ml100k_small.splits["train"])
    assert {ex.user for ex in ctx.eval_examples} <= set(ml100k_small.splits["valid"] + ml100k_small.splits["test"])
    for ex in ctx.sft_examples + ctx.eval_examples:
        items = ml100k_small.users[ex.user].items
        assert len(ex.candidates) == 20 and ex.candidates.count(ex.target) == 1
        assert not set(ex.history) & set(ex.candidates)  # no shown item among the candidates
        assert set(ex.candidates) - {ex.target} <= set(range(len(ml100k_small.catalog))) - set(items)  # never seen
        assert len({ctx.keys.keys[i] for i in ex.candidates}) == 20  # distinct titles: an answer names one
        assert 1 <= len(ex.history) <= 10
    last = {ex.user: ex for ex in ctx.eval_examples}
    for u, ex in last.items():
        items = ml100k_small.users[u].items
        assert ex.target == items[-1] and list(ex.history) == items[:-1][-10:]
    positions = [ex.candidates.index(ex.target) for ex in ctx.sft_examples]
    assert len(set(positions)) > 5  # shuffled, not always in one slot


def test_draw_candidates_refuses_a_catalogue_too_small():
    class Cat:
        titles, years = ["A", "B", "C"], [None, None, None]

    with pytest.raises(ValueError, match="only 2 candidates"):
        draw_candidates(seeded_rng(0), TitleKeys(Cat()), 0, {1}, 3)


def _cat():
    class Cat:
        titles = ["Matrix, The", "Toy Story", "Heat", "Fargo", "Alien"]
        years = [1999, 1995, 1995, 1996, 1979]
    return Cat()


def test_answers_are_grounded_within_the_list_exactly_then_normalised_then_contained():
    keys = TitleKeys(_cat())
    cands = (0, 1, 2, 3)
    assert ground_answer("Toy Story (1995)", cands, keys) == Answer(1, "exact")
    assert ground_answer("The Matrix", cands, keys) == Answer(0, "normalised")
    assert ground_answer("the matrix (1999)", cands, keys) == Answer(0, "normalised")
    assert ground_answer("The Matrix (2003)", cands, keys).item is None  # the year disagrees
    assert ground_answer("I think they will watch Fargo next", cands, keys) == Answer(3, "contains")
    assert ground_answer("Fargo or Heat", cands, keys) == Answer(None, "none")  # two candidates: not one answer
    assert ground_answer("Alien (1979)", cands, keys) == Answer(None, "outside", 4)  # a catalogue item not listed
    assert ground_answer('The user will watch the movie "Fargo" (1996).', cands, keys) == Answer(3, "normalised")
    assert ground_answer('The user will watch "Alien" next', cands, keys) == Answer(None, "outside", 4)
    assert ground_answer("Toy Stor", cands, keys) == Answer(None, "none")  # near-misses are not repaired
    assert ground_answer("", cands, keys) == Answer(None, "none")


def test_hr_at_1_valid_ratio_and_out_of_list_on_hand_built_answers():
    assert m.hit_at_1([3, -1, 2, 5], [3, 4, 5, 5]).tolist() == [1.0, 0.0, 0.0, 1.0]
    assert m.hit_at_1([-1], [-1]).tolist() == [0.0]  # an invalid answer never hits
    assert m.valid_ratio([3, -1, 2, 5]) == 0.75 and m.valid_ratio([]) == 0.0
    assert m.out_of_list_share([True, False, False, False]) == 0.25
    exs = [RankExample("a", "a", (), 1, (0, 1, 2)), RankExample("b", "b", (), 2, (0, 1, 2)),
           RankExample("c", "c", (), 0, (0, 1, 2))]
    out = score_answers(exs, [Answer(1, "exact"), Answer(0, "normalised"), Answer(None, "outside", 4)])
    assert out["hr@1"] == pytest.approx(1 / 3) and out["valid_ratio"] == pytest.approx(2 / 3)
    assert out["out_of_list"] == pytest.approx(1 / 3)
    assert out["per_user"] == {"users": ["a", "b", "c"], "hr@1": [1.0, 0.0, 0.0], "valid": [1.0, 1.0, 0.0],
                               "outside": [0.0, 0.0, 1.0]}
    assert out["grounding"]["exact"] == pytest.approx(1 / 3)


def test_rosepo_epsilon_from_the_oracle_on_a_hand_built_case():
    from rlrf.alignment.losses import rosepo_epsilon
    import torch

    sigma = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    assert oracle_epsilon(2.0, 0.0, temperature=1.0, cap=0.4) == pytest.approx(sigma(-2.0))  # 0.1192
    assert oracle_epsilon(2.0, 0.0, temperature=4.0, cap=0.4) == pytest.approx(sigma(-0.5))
    assert oracle_epsilon(0.0, 5.0, temperature=1.0, cap=0.4) == 0.4  # the oracle prefers the rejected: capped
    assert oracle_epsilon(0.0, float("-inf"), temperature=1.0, cap=0.4) == 1e-6  # never-seen item: floored
    with pytest.raises(ValueError):
        oracle_epsilon(0.0, 0.0, temperature=1.0, cap=0.5)
    for eps in (1e-6, 0.05, 0.1192, 0.4):  # the trainer reads ε back from the margin exactly
        margin = margin_for_epsilon(eps, eps_max=0.4, tau=0.1)
        assert float(rosepo_epsilon(torch.tensor([margin]), eps_max=0.4, tau=0.1)) == pytest.approx(eps, rel=1e-5)


def test_rosepo_rejected_strategies_draw_what_they_claim():
    keys = TitleKeys(_cat())
    ex = RankExample("u@3", "u", (4,), 1, (2, 1, 0, 3))
    popularity = np.array([50, 90, 10, 50, 99])
    assert popular_negative(ex, popularity) == 0  # the most popular WRONG candidate (Toy Story is the target)
    assert popular_pick(ex, popularity) == 1
    assert popular_negative(RankExample("u", "u", (), 1, (2, 1, 3, 0)), popularity) == 3  # a tie: shown first
    assert self_hard_negative(Answer(3, "exact"), ex) == 3  # the SFT policy's own wrong answer
    assert self_hard_negative(Answer(1, "exact"), ex) is None  # it answered right: no self-hard negative
    assert self_hard_negative(Answer(None, "none"), ex) is None
    ex2 = RankExample("u@3", "u", (), 1, (2, 1, 0))
    for seed in range(5):
        got = hallucination_negative(seeded_rng(seed), ex2, keys, never={4})
        assert got == 3  # not listed, not the user's: the one catalogue title left


def test_each_arm_builds_its_own_preference_data(tiny_rank_config, ml100k_small):
    cfg = tiny_rank_config
    ctx = build_context(cfg, ml100k_small)
    ids = ml100k_small.catalog.ids
    texts = ctx.keys.texts

    class Prompts:  # the prompt text only names what the pair is about (the real one needs a tokenizer)
        def ranking(self, ex):
            return type("P", (), {"text": f"rank {ex.key}"})()

        def pairwise(self, ex, first, second):
            return type("P", (), {"text": f"pair {ex.key}: {texts[first]} | {texts[second]}"})()

    sdpo, _ = build_pairs("sdpo", cfg, ctx, Prompts(), None, seed=cfg.seed, align=arm_align(cfg, "sdpo"))
    dpo, _ = build_pairs("dpo", cfg, ctx, Prompts(), None, seed=cfg.seed, align=arm_align(cfg, "dpo"))
    dmpo, stats = build_pairs("dmpo_pairwise", cfg, ctx, Prompts(), None, seed=cfg.seed,
                              align=arm_align(cfg, "dmpo_pairwise"))
    assert len(sdpo) == len(dpo) == 4 and len(dmpo) == 4 * 3 == stats["pairs"]
    for ex, s, d in zip(ctx.pair_examples, sdpo, dpo):
        negs = [ml100k_small.catalog.index(i) for i in s["rejected_items"]]
        assert len(set(negs)) == 3 and ex.target not in negs and set(negs) <= set(ex.candidates)
        assert s["chosen"] == texts[ex.target] and d["rejected_list"] == s["rejected_list"][:1]  # DPO: S-DPO's first
        # DMPO's own form: one pairwise instruction per S-DPO negative, target first in the chosen order
        own = [p for p in dmpo if p["user"] == ex.key]
        assert sorted(p["rejected_items"][0] for p in own) == sorted(ids[i] for i in negs)
        for p in own:
            neg = texts[ml100k_small.catalog.index(p["rejected_items"][0])]
            assert p["chosen"] == f"{texts[ex.target]}, {neg}" and p["rejected"] == f"{neg}, {texts[ex.target]}"
            assert p["prompt"] in (f"pair {ex.key}: {texts[ex.target]} | {neg}", f"pair {ex.key}: {neg} | {texts[ex.target]}")
    # self-hard: the SFT answer when wrong, a uniform candidate (marked) when it named the target
    ex = ctx.pair_examples[0]
    wrong = next(i for i in ex.candidates if i != ex.target)
    assert negatives_of("rosepo_self", cfg, ctx, ex, cfg.seed, Answer(wrong, "exact")) == ([wrong], "self")
    negs, source = negatives_of("rosepo_self", cfg, ctx, ex, cfg.seed, Answer(ex.target, "exact"))
    assert source == "uniform_fallback" and negs[0] in ex.candidates and negs[0] != ex.target
    negs, source = negatives_of("rosepo_hallucination", cfg, ctx, ex, cfg.seed)
    assert source == "hallucination" and negs[0] not in ex.candidates


def test_each_arms_align_section_carries_its_loss_and_the_shared_step_budget(tiny_rank_config):
    cfg = tiny_rank_config
    for arm, loss in {"dpo": "dpo", "sdpo": "sdpo", "dmpo": "dmpo", "dmpo_pairwise": "dmpo", "rosepo_self": "rosepo",
                      "trl": "ipo"}.items():
        a = arm_align(cfg, arm)
        assert a.loss == loss and a.trainer_args["max_steps"] == 2 and a.rosepo_eps_max == cfg.rank.eps_cap
        assert {k: v for k, v in a.trainer_args.items() if k != "max_steps"} == cfg.align.trainer_args
    assert cfg.align.loss == "dpo" and "max_steps" not in cfg.align.trainer_args  # the run's own section is untouched
    assert set(ARMS) == set(type(cfg.rank).model_fields["arms"].annotation.__args__[0].__args__)


def test_rank_end_to_end_each_arm_trains_with_its_own_loss(tiny_rank_config):
    from rlrf.methods.rank import run_rank

    cfg = tiny_rank_config.model_copy(update={"rank": tiny_rank_config.rank.model_copy(update={"arms": list(ARMS)})})
    run = cfg.run_dir
    metrics = run_rank(cfg, show_progress=False, log=lambda *_: None)
    rows = metrics["rows"]
    assert {"random", "popularity among the candidates", "SASRec", "untuned policy", "SFT", "DPO", "S-DPO",
            "DMPO (shared prompt)", "DMPO (pairwise instructions)", "RosePO self-hard", "RosePO popularity",
            "RosePO hallucination", "trl ipo"} == set(rows)
    assert rows["random"]["hr@1"]["mean"] == pytest.approx(0.05)
    for label, r in rows.items():
        assert r["users"] == 4 and 0 <= r["hr@1"]["mean"] <= r["valid_ratio"]["mean"] <= 1
        assert (label == "SFT") == ("vs_sft" not in r["hr@1"])
    # the first step's loss, before any update (policy = reference), tells which loss ran:
    # DPO log 2; S-DPO with k = 3 negatives log(1 + 3); trl's IPO (0 − 1/(2β))² = 25 at β = 0.1
    first = {arm: read_json(run / arm / "iter_0" / "align_log.json")["summary"] for arm in
             ("dpo", "sdpo", "dmpo_pairwise", "rosepo_popularity", "trl")}
    assert first["dpo"]["loss"] == "dpo" and first["dpo"]["first_loss"] == pytest.approx(math.log(2), abs=1e-3)
    assert first["sdpo"]["negatives"] == 3 and first["sdpo"]["first_loss"] == pytest.approx(math.log(4), abs=1e-3)
    assert first["trl"]["loss"] == "ipo" and first["trl"]["first_loss"] == pytest.approx(25.0, rel=1e-3)
    assert first["dmpo_pairwise"]["pairs"] == 3 * 4 and first["dmpo_pairwise"]["negatives"] == 1
    assert all(s["steps"] == 2 for s in first.values())  # the same optimisation budget
    # RosePO: the trainer's ε is the oracle's, read back from the margin
    log = read_json(run / "rosepo_popularity" / "iter_0" / "align_log.json")
    pairs = read_jsonl(run / "rosepo_popularity" / "iter_0" / "pairs.jsonl")
    eps = [p["epsilon"] for p in pairs]
    assert all(0 < e <= 0.4 for e in eps)
    logged = [s["rosepo/epsilon"] for s in log["steps"] if "rosepo/epsilon" in s]
    assert len(logged) == 2 and np.mean(logged) == pytest.approx(np.mean(eps), rel=1e-3)  # 2 steps x 2 = every pair once
    assert rows["RosePO popularity"]["pairs"][0]["epsilon"]["mean"] == pytest.approx(np.mean(eps))
    # self-hard: the SFT policy's own wrong answers on the same examples (else a marked uniform candidate)
    from rlrf.methods.rank_examples import TitleKeys, ground_answer

    ctx = build_context(cfg)
    answers = {r["user"]: r["text"] for r in read_jsonl(run / "rosepo_self" / "iter_0" / "next_item.jsonl")}
    assert set(answers) == {ex.key for ex in ctx.pair_examples}
    for ex, p in zip(ctx.pair_examples, read_jsonl(run / "rosepo_self" / "iter_0" / "pairs.jsonl")):
        said = ground_answer(answers[ex.key], ex.candidates, ctx.keys).item
        if p["source"] == "self":
            assert ctx.ds.catalog.ids[said] == p["rejected_items"][0] and said != ex.target
        else:
            assert p["source"] == "uniform_fallback" and (said is None or said == ex.target)
    assert (run / "report.md").read_text().count("| S-DPO |") == 1
    assert rows["S-DPO"]["chosen_logps"][0]  # the chosen answer's log-prob over training is recorded


def test_rank_refuses_a_bad_config_before_training(tmp_path):
    from typer.testing import CliRunner

    from rlrf.cli import app

    for body, message in [("rank: {trl_loss: dpo}", "rank.trl_loss: 'dpo' is not a trl loss type"),
                          ("rank: {candidates: 3, negatives: 3}", "rank.negatives: 3 negatives need at least 4"),
                          ("rank: {arms: [sft, magic]}", "key 'rank.arms.1'")]:
        bad = tmp_path / "bad.yaml"
        bad.write_text(body + "\n")
        result = CliRunner().invoke(app, ["rank", "-c", str(bad), "--run-dir", str(tmp_path / "run")])
        assert result.exit_code != 0 and message in result.output, result.output
        assert not (tmp_path / "run" / "sft").exists()


def test_rank_pools_seeds_against_each_seeds_own_sft(tiny_rank_config):
    from rlrf.methods.rank import run_rank

    cfg = tiny_rank_config.model_copy(update={"rank": tiny_rank_config.rank.model_copy(update={
        "arms": ["dpo"], "seeds": [0, 1]})})
    metrics = run_rank(cfg, show_progress=False, log=lambda *_: None)
    run = cfg.run_dir
    for seed in (0, 1):  # one SFT per training seed, every arm from its own seed's SFT
        log = read_json(run / f"seed_{seed}" / "dpo" / "iter_0" / "align_log.json")
        assert log["summary"]["start_adapter"] == str(run / f"seed_{seed}" / "sft" / "adapter")
    dpo = metrics["rows"]["DPO"]
    assert metrics["seeds"] == [0, 1] and dpo["seeds"] == [0, 1] and len(dpo["hr@1"]["per_seed"]) == 2
    assert dpo["hr@1"]["vs_sft"]["runs"] == 2 and dpo["hr@1"]["vs_sft"]["users"] == 2 * 4
    assert sorted(p.name for p in (run / "eval").iterdir()) == ["base", "popularity", "random", "sasrec"]


def test_an_arms_wall_time_is_summed_over_the_processes_that_worked_on_it(tmp_path):
    from rlrf.core.layout import RunLayout
    from rlrf.core.rundir import add_wall_time

    layout = RunLayout(tmp_path / "seed_0" / "dpo")
    layout.root.mkdir(parents=True)
    assert add_wall_time(layout, 300.04) == 300.0  # the process the OOM killer stopped
    assert add_wall_time(layout, 1.2) == 301.2     # the resume found every stage cached
    assert json.loads(layout.wall_time.read_text()) == {"seconds": 301.2}
