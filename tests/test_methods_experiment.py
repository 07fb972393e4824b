"""`rlrf experiment methods`: every method from the same policy_0, each trained with the loss it names,
on the same samples (offline) or the same number of summaries (online), pooled over seeds."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlrf.core.io import read_json, read_jsonl
from rlrf.experiments.methods import ARMS, calibrated_tau, epsilon_distribution, online_steps, run_methods

torch.set_num_threads(1)


@pytest.fixture
def tiny_methods_config(tiny_config, tiny_summary_loop):
    return tiny_config(
        tiny_summary_loop,
        generate={"max_users": 8},
        # one pair per step, so each logged RosePO ε is one pair's
        align={"trainer_args": {"per_device_train_batch_size": 1}},
        loop={"iterations": 1},
    )


def test_the_online_budget_generates_as_many_summaries_as_the_offline_samples():
    # trl: one generation batch of per_device x steps_per_generation completions every
    # steps_per_generation x num_iterations micro-steps
    assert online_steps({"per_device_train_batch_size": 16}, 1024) == (64, 1024)
    assert online_steps({"per_device_train_batch_size": 16}, 1000) == (63, 1008)
    assert online_steps({"per_device_train_batch_size": 8, "gradient_accumulation_steps": 4}, 256) == (8, 256)
    assert online_steps({"per_device_train_batch_size": 16, "num_iterations": 2}, 64) == (8, 64)
    assert online_steps({"per_device_train_batch_size": 4, "gradient_accumulation_steps": 2,
                         "steps_per_generation": 4}, 64) == (8, 64)


def test_rosepo_tau_is_calibrated_so_the_median_pair_gets_half_of_eps_max():
    margins = [0.5, 1.0, 2.0, 4.0, 8.0]
    tau = calibrated_tau(margins)
    assert tau == pytest.approx(2.0 / math.log(2))
    e = epsilon_distribution(margins, eps_max=0.4, tau=tau)
    assert e["quantiles"]["0.5"] == pytest.approx(0.2) and e["max"] == pytest.approx(0.4 * 2 ** -0.25)
    assert sum(e["histogram"]) == 5
    assert epsilon_distribution(margins, eps_max=0.4, tau=0.1)["near_zero"] == 1.0  # the config's τ on these margins


def test_each_method_trains_with_the_loss_it_names_from_the_same_policy_0(tiny_methods_config):
    cfg = tiny_methods_config
    run = cfg.run_dir
    results = run_methods(cfg, seeds=1, show_progress=False, log=lambda *_: None)
    arms = run / "experiments" / "methods" / "seed_0"
    logs = {arm: read_json(arms / arm / "iter_0" / "align_log.json") for arm in ARMS}
    first = {arm: log["summary"] for arm, log in logs.items()}
    # every method starts from policy_0 (the base model here), so its first step's loss tells the loss apart:
    # DPO and DMPO log 2 (DMPO over 3 negatives), S-DPO over 3 negatives log(1 + 3)
    for arm, loss, negatives, value in (("dpo", "dpo", 1, math.log(2)), ("sdpo", "sdpo", 3, math.log(4)),
                                        ("dmpo", "dmpo", 3, math.log(2)), ("rosepo", "rosepo", 1, math.log(2))):
        s = first[arm]
        assert s["loss"] == loss and s["negatives"] == negatives and s["start_adapter"] is None, arm
        assert s["first_loss"] == pytest.approx(value, abs=1e-3), arm
    assert not any("rosepo/epsilon" in e for arm in ("dpo", "sdpo", "dmpo") for e in logs[arm]["steps"])
    # the offline methods train on one set of pairs: best vs the 3 other samples, worst first
    pairs = {arm: read_jsonl(arms / arm / "iter_0" / "pairs.jsonl") for arm in ("dpo", "sdpo", "dmpo", "rosepo")}
    assert pairs["dpo"] and all(p == pairs["dpo"] for p in pairs.values())
    assert all(len(p["rejected_list"]) == 3 and p["rejected_list"][0] == p["rejected"] for p in pairs["dpo"])
    samples = read_jsonl(run / "iter_0" / "responses.jsonl")  # the run's own iteration 0 (what `rlrf run` samples)
    assert {p["user"] for p in pairs["dpo"]} <= {r["user"] for r in samples}
    # RosePO: the trainer's ε per pair is eps_max · exp(−margin / τ) with τ calibrated on these pairs
    tau = results["rosepo"]["0"]["epsilon"]["tau"]
    assert tau == pytest.approx(calibrated_tau([p["margin"] for p in pairs["dpo"]]))
    eps = [0.4 * math.exp(-p["margin"] / tau) for p in pairs["rosepo"]]
    logged = [e["rosepo/epsilon"] for e in logs["rosepo"]["steps"] if "rosepo/epsilon" in e]
    assert len(logged) == 2 and all(round(x, 5) in {round(e, 5) for e in eps} for x in logged)
    assert sum(e > 0.2 for e in eps) == sum(e < 0.2 for e in eps)  # half the pairs above eps_max / 2, half below
    # GRPO and RLOO: their own trainers, groups of generate.n, as many summaries as the offline samples
    offline = results["methods"]["dpo"]["per_seed"]["0"]["summaries"]
    assert offline == len(samples) and offline % 4 == 0
    for arm in ("grpo", "rloo"):
        s, row = first[arm], results["methods"][arm]["per_seed"]["0"]
        assert s["method"] == arm and s["num_generations"] == 4 and s["start_adapter"] is None
        assert all("reward_std" in e for e in logs[arm]["steps"] if "loss" in e)  # an online trainer's log
        assert row["scored_in_training"] == row["summaries"] == math.ceil(offline / 16) * 16
        assert s["steps"] == row["steps"] == math.ceil(offline / 16)
    # one evaluation of policy_0 for all; each method's policy_1 on the same test users, paired
    for arm, row in results["methods"].items():
        d = row["vs_policy_0"]["reward_mean"]
        assert d["runs"] == 1 and d["users"] == 3 and d["ci95"][0] <= d["mean"] <= d["ci95"][1], arm
        for key in ("ended", "repeated", "tokens", "independent_ndcg@5"):
            assert row["vs_policy_0"][key] is not None, (arm, key)
        metrics = read_json(arms / arm / "metrics.json")
        assert metrics["evaluations"]["policy_0"] == read_json(arms / "dpo" / "metrics.json")["evaluations"]["policy_0"]
        assert metrics["evaluations"]["policy_1"]["users"] == 3
        assert ("vs_dpo" in row) == (arm != "dpo")
    from rlrf.report.methods import markdown

    table = markdown(results)
    assert all(f"| {spec.title} |" in table for spec in ARMS.values()) and "RosePO's ε" in table
    header = next(line for line in table.splitlines() if line.startswith("| method |"))
    assert all(title in header for title in ("mean reward", "NDCG@5 (greedy summary)", "independent evaluator",
                                             "ends on its own", "repeats itself"))  # the reward, the rerank row, the evaluator

    # a rerun trains nothing again and gives the same table
    adapters = {arm: (arms / arm / "iter_0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns for arm in ARMS}
    again = run_methods(cfg, seeds=1, show_progress=False, log=lambda *_: None)
    assert adapters == {arm: (arms / arm / "iter_0" / "adapter" / "adapter_model.safetensors").stat().st_mtime_ns
                        for arm in ARMS}
    assert again["methods"]["sdpo"]["vs_policy_0"] == results["methods"]["sdpo"]["vs_policy_0"]


def test_seeds_sample_and_train_apart_and_pool_against_the_same_policy_0(tiny_methods_config):
    cfg = tiny_methods_config
    results = run_methods(cfg, ["dpo", "sdpo", "rloo"], seeds=2, online_seeds=1, show_progress=False,
                          log=lambda *_: None)
    run = cfg.run_dir
    seed_0 = read_jsonl(run / "iter_0" / "responses.jsonl")
    seed_1 = read_jsonl(run / "experiments" / "methods" / "seed_1" / "iter_0" / "responses.jsonl")
    assert {(r["user"], r["k"]) for r in seed_0} == {(r["user"], r["k"]) for r in seed_1}  # the same users
    assert [r["text"] for r in seed_0] != [r["text"] for r in seed_1]  # sampled with their own seed
    from safetensors.torch import load_file

    trained = [load_file(run / "experiments" / "methods" / f"seed_{s}" / "sdpo" / "iter_0" / "adapter"
                         / "adapter_model.safetensors") for s in (0, 1)]
    assert any(not torch.equal(trained[0][k], trained[1][k]) for k in trained[0])  # each seed trains its own
    sdpo = results["methods"]["sdpo"]
    assert results["seeds"] == [0, 1] and len(sdpo["per_seed"]) == 2
    assert sdpo["vs_policy_0"]["reward_mean"]["runs"] == 2 and sdpo["vs_policy_0"]["reward_mean"]["users"] == 2 * 3
    assert sdpo["vs_dpo"]["reward_mean"]["runs"] == 2
    # --online-seeds 1: RLOO trains on the first seed only and pools over it, against DPO on that seed
    rloo = results["methods"]["rloo"]
    assert rloo["seeds"] == [0] and sdpo["seeds"] == [0, 1]
    assert not (run / "experiments" / "methods" / "seed_1" / "rloo").exists()
    assert rloo["vs_policy_0"]["reward_mean"]["runs"] == 1 and rloo["vs_dpo"]["reward_mean"]["runs"] == 1
    from rlrf.report.methods import markdown

    assert "| RLOO | 0 |" in markdown(results) and "| S-DPO | 0, 1 |" in markdown(results)
    assert results["samples"]["0"]["reused_run_iteration"] and not results["samples"]["1"]["reused_run_iteration"]
    assert "rosepo" not in results["methods"] and results["rosepo"] == {}
    # a later command over fewer seeds keeps what seed 1's samples took
    took = results["samples"]["1"]["seconds"]
    assert took is not None
    run_methods(cfg, ["dpo"], seeds=1, show_progress=False, log=lambda *_: None)
    again = run_methods(cfg, ["dpo"], seeds=2, show_progress=False, log=lambda *_: None)
    assert again["samples"]["1"]["seconds"] == took
    # --training-seed 1: seed 1 alone, with the numbers it has beside seed 0, pooled over itself only
    alone = run_methods(cfg, ["dpo", "sdpo"], named=[1], show_progress=False, log=lambda *_: None)
    assert alone["seeds"] == [1] and alone["methods"]["sdpo"]["seeds"] == [1]
    assert alone["methods"]["sdpo"]["per_seed"]["1"] == sdpo["per_seed"]["1"]
    assert alone["methods"]["sdpo"]["vs_dpo"]["reward_mean"]["runs"] == 1


def test_the_command_offers_exactly_the_recipes_methods_and_refuses_others(tmp_path):
    from typer.testing import CliRunner

    from rlrf.cli import PreferenceMethod, app

    assert {m.value for m in PreferenceMethod} == set(ARMS)
    result = CliRunner().invoke(app, ["experiment", "methods", "-c", "quickstart", "--run-dir", str(tmp_path / "run"),
                                      "--method", "ppo"])
    assert result.exit_code != 0 and "ppo" in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["experiment", "methods", "-c", "quickstart", "--run-dir", str(tmp_path / "run"),
                                      "--seeds", "1", "--online-seeds", "2"])
    assert result.exit_code == 2 and "--online-seeds" in result.output
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(app, ["experiment", "methods", "-c", "quickstart", "--run-dir", str(tmp_path / "run"),
                                      "--training-seed", "1", "--online-seeds", "2"])
    assert result.exit_code == 2 and "--online-seeds" in result.output  # one named seed, so at most 1
    assert not (tmp_path / "run").exists()
