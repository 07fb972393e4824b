"""`rlrf run`: the RLRF4Rec loop end to end on a tiny random-weight policy, and its resume after a kill."""

from __future__ import annotations

import json

import pytest
import torch

from rlrf.methods.loop import run_loop
from rlrf.report import write_report
from rlrf.methods.rlrf4rec import RLRF4Rec
from rlrf.core.io import read_json, read_jsonl
from rlrf.core.layout import RunLayout

torch.set_num_threads(1)


@pytest.fixture
def tiny_run_config(tiny_config, tiny_summary_loop):
    return tiny_config(
        tiny_summary_loop,
        sasrec={"epochs": 1, "hidden_size": 16, "n_layers": 1, "n_heads": 1, "batch_size": 512, "show_progress": False},
        generate={"max_users": 16},
        align={"trainer_args": {"per_device_train_batch_size": 2}},
        loop={"iterations": 2},
    )


def test_two_iterations_end_to_end_then_resume_after_a_kill(tiny_run_config):
    cfg = tiny_run_config
    run = cfg.run_dir
    metrics = run_loop(cfg, RLRF4Rec(show_progress=False), iterations=2, layout=RunLayout(cfg.run_dir), seed=cfg.seed,
                       log=lambda _: None)

    # the base policy and the policy after each iteration, all on the same held-out test users
    assert list(metrics["evaluations"]) == ["policy_0", "policy_1", "policy_2"]
    for ev in metrics["evaluations"].values():
        assert ev["users"] == 3 and ev["responses"] == 12
        assert ev["reward_mean"] <= ev["reward_best"]
        assert 0.0 <= ev["ndcg@5"] <= 1.0
        assert len(ev["per_user"]["users"]) == ev["users"] == 3
        assert len(ev["per_user"]["independent_ndcg@5"]) == 3  # the same greedy summaries, another reranker
        assert all(0.0 <= c <= 1.0 for c in ev["per_user"]["copied"])  # share of the greedy summary copied from its prompt
    test_users = {r["user"] for r in read_jsonl(run / "eval" / "policy_0" / "iter_0" / "responses.jsonl")}
    reward_file = run / "reward" / "dlcm_knowledge" / "model.pt"
    assert reward_file.is_file()  # the run had no reward model: prepare trained it
    trained_at = reward_file.stat().st_mtime_ns

    lists = {r["user"]: r["labels"] for r in read_jsonl(run / "lists.jsonl")}
    for t in (0, 1):
        # summaries are only spent on training users whose list can rank: liked and other items both present
        generated = {r["user"] for r in read_jsonl(run / f"iter_{t}" / "responses.jsonl")}
        assert generated and all(0 < sum(lists[u]) < len(lists[u]) for u in generated)
        assert not generated & test_users
        pairs = read_jsonl(run / f"iter_{t}" / "pairs.jsonl")
        assert pairs, f"iteration {t} produced no pairs"
        assert not {p["user"] for p in pairs} & test_users  # held-out users never train the policy
        assert all(p["margin"] > 0 and p["chosen"] != p["rejected"] for p in pairs)
        assert (run / f"iter_{t}" / "adapter" / "adapter_config.json").exists()
    # iteration 1 generated with the adapter aligned in iteration 0
    meta = read_json(run / "iter_1" / "responses.meta.json")
    assert meta["adapter"] == str(run / "iter_0" / "adapter")

    # each later policy against policy_0, paired by user, with a bootstrap CI around the mean
    from rlrf.report.rlrf4rec import differences

    diffs = differences(metrics)
    assert list(diffs) == ["policy_1", "policy_2"]
    for d in diffs.values():
        r = d["reward_mean"]
        assert r["users"] == 3 and r["ci95"][0] <= r["mean"] <= r["ci95"][1]
        assert r["better"] + r["worse"] <= 3
    report = write_report(run, metrics).read_text()
    assert report.count("| policy_") == 3 + 2 and "Change against policy_0" in report
    for figure in ("improvement", "per_user_change", "training_loss"):
        assert (run / f"{figure}.png").stat().st_size > 0

    # kill in iteration 1: its adapter and final evaluation never happened, scores.jsonl was torn mid-line
    import shutil

    shutil.rmtree(run / "iter_1" / "adapter")
    del metrics["evaluations"]["policy_2"]
    (run / "metrics.json").write_text(json.dumps(metrics))
    scores = (run / "iter_1" / "scores.jsonl").read_text().splitlines(keepends=True)
    (run / "iter_1" / "scores.jsonl").write_text("".join(scores[: len(scores) // 2]) + scores[-1][:7])

    resumed = run_loop(cfg, RLRF4Rec(show_progress=False), iterations=2, layout=RunLayout(cfg.run_dir), seed=cfg.seed,
                       log=lambda _: None)
    assert list(resumed["evaluations"]) == ["policy_0", "policy_1", "policy_2"]
    assert resumed["evaluations"]["policy_1"] == metrics["evaluations"]["policy_1"]  # not redone
    keys = [(s["user"], s["k"]) for s in read_jsonl(run / "iter_1" / "scores.jsonl")]
    assert len(keys) == len(set(keys)) == len(scores)  # every (user, k) exactly once
    assert (run / "iter_1" / "adapter" / "adapter_config.json").exists()
    assert reward_file.stat().st_mtime_ns == trained_at  # its file exists: loaded, never trained again


def test_grpo_runs_on_the_same_loop_and_evaluation(tiny_run_config):
    cfg = tiny_run_config.model_copy(update={
        "align": tiny_run_config.align.model_copy(update={"method": "grpo"}),
        "online": tiny_run_config.online.model_copy(update={"trainer_args": {
            **tiny_run_config.online.trainer_args, "max_steps": 2, "per_device_train_batch_size": 4,
            "num_generations": 4, "max_completion_length": 12}}),
    })
    metrics = run_loop(cfg, RLRF4Rec(show_progress=False), iterations=1, layout=RunLayout(cfg.run_dir), seed=cfg.seed,
                       log=lambda _: None)
    assert list(metrics["evaluations"]) == ["policy_0", "policy_1"]
    from rlrf.data.lists import load_lists

    lists = load_lists(cfg.run_dir / "lists.jsonl")
    prompts = metrics["iterations"]["0"]["pairs"]["prompts"]
    # generate.max_users training users, less those whose list is all liked or all not: they cannot rank
    assert 0 < prompts <= 16 and prompts == read_json(cfg.run_dir / "iter_0" / "align_log.json")["summary"]["prompts"]
    assert sum(0 < sum(lst.labels) < len(lst.labels) for lst in lists.values()) >= prompts
    assert not (cfg.run_dir / "iter_0" / "responses.jsonl").exists()  # the trainer sampled its own
    log = read_json(cfg.run_dir / "iter_0" / "align_log.json")
    assert log["summary"]["method"] == "grpo" and log["summary"]["steps"] == 2
    assert all("reward_std" in e for e in log["steps"] if "loss" in e)  # the reward's spread, per step
