"""SPRec: negatives are never the target, the bias metrics match the saved recommendations, and the
whole command (SFT, self-play and both baselines, evaluation, report) runs on a tiny random policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from rlrf.evaluation import metrics as m
from rlrf.core.config import load_config
from rlrf.generation.grounding import Grounding
from rlrf.core.io import read_json, read_jsonl
from rlrf.methods.loop import run_loop
from rlrf.methods.sprec import SAMPLERS, answer_text, arms, build_pairs, collect, iteration_users, sampled_negatives, self_play_negatives

torch.set_num_threads(1)


def test_self_play_negatives_are_distinct_grounded_predictions_other_than_the_target():
    target = 7
    predictions = [Grounding(7, "exact", None), Grounding(3, "normalised", None), Grounding(None, "none", 0.1),
                   Grounding(3, "nearest", 0.9), Grounding(5, "nearest", 0.8), Grounding(9, "exact", None)]
    assert self_play_negatives(target, predictions, k=2) == [3, 5]
    assert self_play_negatives(target, predictions, k=9) == [3, 5, 9]
    # a policy that only names the target (or nothing groundable) gives no negative, hence no pair
    assert self_play_negatives(target, [Grounding(7, "exact", None), Grounding(None, "none", None)], k=1) == []


def test_sampled_negatives_avoid_the_target_and_the_history():
    rng = np.random.default_rng(0)
    popularity = np.array([1000, 1, 1, 1, 500, 1, 1, 1, 1, 1])
    for _ in range(200):
        drawn = sampled_negatives(rng, 10, 3, exclude={0, 2}, popularity=popularity)
        assert len(set(drawn)) == 3 and not {0, 2} & set(drawn)
    # popularity sampling favours the popular item it may draw
    counts = np.bincount([sampled_negatives(rng, 10, 1, {0}, popularity)[0] for _ in range(300)], minlength=10)
    assert counts[4] > 200
    assert sampled_negatives(rng, 3, 5, exclude={0, 1, 2}) == []  # nothing left to draw


def test_pairs_put_the_real_next_item_first_and_refuse_the_target_as_negative(ml100k_small):
    from rlrf.generation.generate import Prompt

    cat = ml100k_small.catalog
    user = next(iter(ml100k_small.users))
    target = ml100k_small.users[user].items[-1]
    prompt = Prompt(user, "PROMPT", [1, 2], {"target": cat.ids[target]})
    other = (target + 1) % len(cat)
    (pair,) = build_pairs(ml100k_small, [prompt], {user: [other]}, similarity=lambda i, j: 0.25)
    assert pair["chosen"] == answer_text(cat, target) and pair["rejected"] == answer_text(cat, other)
    assert pair["margin"] == pytest.approx(0.75) and pair["prompt"] == "PROMPT"
    with pytest.raises(AssertionError):
        build_pairs(ml100k_small, [prompt], {user: [target]})


@pytest.fixture
def tiny_sprec_config(tmp_path, tiny_model_dir):
    config = {
        "run_dir": str(tmp_path / "run"),
        "seed": 0,
        "threads": 1,
        "data": {"max_users": 60, "lists": {"max_history": 5}},
        "llm": {"model": str(tiny_model_dir)},
        "generate": {"max_new_tokens": 8, "batch_size": 32, "profile": False},
        "encoder": {"model": "hashing:32"},
        "align": {"trainer_args": {"per_device_train_batch_size": 2, "max_length": 256, "learning_rate": 1e-3}},
        "sft": {"users": 8, "trainer_args": {"per_device_train_batch_size": 4, "max_length": 256}},
        "loop": {"iterations": 1, "eval_users": 5},
        "sprec": {"users_per_iteration": 6, "samples": 2, "min_similarity": -1.0, "ks": [1, 5, 10]},
    }
    path = tmp_path / "sprec.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_config(path)


def test_sprec_end_to_end_on_a_tiny_policy(tiny_sprec_config):
    from rlrf.data.dataset import load_dataset
    from rlrf.report.sprec import write_sprec_report

    cfg = tiny_sprec_config
    run = cfg.run_dir
    metrics = run_sprec(cfg)
    ds = load_dataset(cfg.data, seed=cfg.seed)
    cat = ds.catalog

    assert (run / "sft" / "adapter" / "adapter_config.json").exists()
    assert metrics["sft"]["examples"] == 8
    assert set(metrics["methods"]) == {"sprec", "dpo_random", "dpo_popularity"}
    users = iteration_users(ds, cfg, 0)
    for name, method in metrics["methods"].items():
        assert list(method["evaluations"]) == ["policy_0", "policy_1"]
        pairs = read_jsonl(run / name / "iter_0" / "pairs.jsonl")
        assert pairs and {p["user"] for p in pairs} <= set(users) <= set(ds.splits["train"])
        for p in pairs:  # the real next item is chosen, never rejected
            assert p["chosen"] == answer_text(cat, ds.users[p["user"]].items[-1])
            assert p["chosen"] not in p["rejected_list"]
        # SFT on fresh positives, then DPO from it
        assert (run / name / "iter_0" / "sft_adapter" / "adapter_config.json").exists()
        log = read_json(run / name / "iter_0" / "align_log.json")
        assert log["summary"]["start_adapter"] == str(run / name / "iter_0" / "sft_adapter")
    # self-play negatives are the policy's own grounded predictions
    predicted = {answer_text(cat, g) for g in _grounded(cfg, ds, run / "sprec" / "iter_0" / "next_item.jsonl")}
    assert {p["rejected"] for p in read_jsonl(run / "sprec" / "iter_0" / "pairs.jsonl")} <= predicted
    # the three methods start from one SFT policy, evaluated once
    assert metrics["evaluations"]["sft"] == metrics["methods"]["sprec"]["evaluations"]["policy_0"]
    assert sorted(p.name for p in (run / "eval").iterdir()) == [
        "base", "dpo_popularity__iter_0__adapter", "dpo_random__iter_0__adapter", "sft__adapter", "sprec__iter_0__adapter"]

    # the bias metrics are those of the saved top-K lists
    ev = metrics["methods"]["sprec"]["evaluations"]["policy_1"]
    recs = read_jsonl(run / "eval" / "sprec__iter_0__adapter" / "iter_0" / "recommendations.jsonl")
    assert len(recs) == ev["users"] == 5
    top = np.array([[cat.index(i) for i in r["items"]] + [-1] * (10 - len(r["items"])) for r in recs])
    targets = np.array([cat.index(r["target"]) for r in recs])
    for k in (1, 5, 10):
        assert ev[f"div_ratio@{k}"] == pytest.approx(m.div_ratio(top, k))
        assert ev[f"or_ratio@{k}"] == pytest.approx(m.or_ratio(top, k))
        hr, _ = m.hit_ndcg_at_k(m.target_ranks(top, targets), k)
        assert ev[f"hr@{k}"] == pytest.approx(hr.mean())
    for r in recs:  # never an item the user already has
        assert not set(r["items"]) & {cat.ids[i] for i in ds.users[r["user"]].items[:-1]}
    assert sum(ev["grounding"].values()) == pytest.approx(1.0)
    assert sum(ev["popularity_histogram"]["history"]) == pytest.approx(1.0, abs=1e-3)

    report = write_sprec_report(run, metrics).read_text()
    for label in ("base (no SFT)", "| SFT |", "SPRec iter 1", "DPO-random iter 1", "DPO-popularity iter 1"):
        assert label in report
    assert (run / "sprec_popularity.png").stat().st_size > 0

    # a rerun finds everything done and changes nothing
    before = json.loads((run / "metrics.json").read_text())
    again = run_sprec(cfg)
    assert again["methods"] == before["methods"]


def run_sprec(cfg) -> dict:
    """What `rlrf sprec` does: every arm on the one loop, then their records gathered."""
    arm_metrics = {method.name: run_loop(arm_cfg, method, cfg.loop.iterations, log=lambda _: None)
                   for arm_cfg, method in arms(cfg, show_progress=False)}
    return collect(cfg, arm_metrics)


def test_every_arm_draws_its_negatives_from_a_registered_sampler():
    assert set(SAMPLERS) == {"sprec", "dpo_random", "dpo_popularity"}
    assert [name for name, s in SAMPLERS.items() if s.from_policy] == ["sprec"]
    assert [name for name, s in SAMPLERS.items() if s.by_popularity] == ["dpo_popularity"]


def _grounded(cfg, ds, path):
    from rlrf.methods.sprec import make_grounder

    grounder = make_grounder(cfg, ds)
    return [g.item for g in grounder.ground([r["text"] for r in read_jsonl(path)]) if g.item is not None]
