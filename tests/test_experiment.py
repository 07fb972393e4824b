"""`rlrf experiment rerank` (rlrf/experiments/rerank.py): rows x columns x models, sd over seeds, resume, both protocols.

Tiny everything: 40 ml-100k users, the random tiny Llama as policy (plus a fresh LoRA saved as a fake
aligned iteration 0), the hashing encoder, small rerankers trained for a few epochs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from recmodels.train import read_header
from rlrf.core.config import load_config
from rlrf.core.errors import UserError
from rlrf.experiments.rerank import METRICS, experiment_dir, run_rerank_experiment
from rlrf.core.io import read_jsonl

torch.set_num_threads(1)

LABELS = ["base", "+knowledge (self text)", "+knowledge (no user text)", "+knowledge (base policy)",
          "+knowledge (iter 0 policy)"]


@pytest.fixture(scope="module")
def cfg(tmp_path_factory, tiny_model_dir):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("experiment")
    path = root / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "run_dir": str(root / "run"), "seed": 0, "threads": 1, "data": {"max_users": 40},
        "llm": {"model": str(tiny_model_dir)},
        "generate": {"max_new_tokens": 6, "batch_size": 32},
        "encoder": {"model": "hashing:32", "cache_dir": str(root / "cache")},
        "reward": {"models": ["dlcm", "prm"], "epochs": 3, "patience": 2, "embed_dim": 8, "hidden": 16,
                   "adapter_out": 8, "adapter_hidden": 16},
    }))
    config = load_config(path)
    # a fake aligned iteration 0: a fresh LoRA on the tiny policy, with non-zero B so it changes the output
    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules="all-linear"))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.save_pretrained(config.run_dir / "iter_0" / "adapter")
    return config


def _check_complete(out: dict, seeds: list[int]):
    assert out["seeds"] == seeds
    assert [r["label"] for r in out["rows"]] == LABELS
    assert list(out["models"]) == ["dlcm", "prm"]
    for kind, rows in out["models"].items():
        assert [e["label"] for e in rows.values()] == LABELS
        for entry in rows.values():
            for split in ("test",):
                assert set(entry[split]["mean"]) == set(METRICS) == set(entry[split]["sd"])
                per_seed = entry[split]["per_seed"]
                assert [r["seed"] for r in per_seed] == seeds
                for m in METRICS:  # the sd is the sample sd of the per-seed values
                    values = [r[m] for r in per_seed]
                    assert 0.0 <= entry[split]["mean"][m] <= 1.0
                    assert entry[split]["mean"][m] == pytest.approx(np.mean(values))
                    assert entry[split]["sd"][m] == pytest.approx(np.std(values, ddof=1) if len(values) > 1 else 0.0)
        for key in ("policy_base", "policy_iter_0"):
            assert set(rows[key]["vs"]) == {"self", "none", "base"} | ({"policy_base"} if key == "policy_iter_0" else set())
        for key in ("base", "self"):  # the validation MAP@5 each model was selected with, per seed
            assert len(rows[key]["selected_valid_map@5"]["per_seed"]) == len(seeds)


def test_swap_table_has_every_row_and_column_then_resumes(cfg):
    out = run_rerank_experiment(cfg, seeds=2, show_progress=False, protocol="swap")
    folder = experiment_dir(cfg.run_dir, "swap")
    assert out["protocol"] == "swap" and out["iterations"] == [0]  # found by aligned_iterations
    _check_complete(out, [0, 1])
    assert json.loads((folder / "results.json").read_text()) == json.loads(json.dumps(out))
    # the seeds differ (different init / batch order), so the sd is not identically zero
    sds = [e["test"]["sd"][m] for rows in out["models"].values() for e in rows.values() for m in METRICS]
    assert max(sds) > 0

    table = (folder / "table.md").read_text()
    assert table.count("| row | " + " | ".join(m.upper() for m in METRICS) + " |") == 2
    for kind in ("DLCM", "PRM"):
        assert f"## {kind}" in table
    for label in LABELS:
        assert table.count(f"| {label} | ") == 2
    assert " ± " in table
    assert (folder / "rerank.png").stat().st_size > 1000
    # each knowledge row was scored with its own texts (the cells' fingerprints name the texts' hash)
    cells = json.loads((folder / "cells.json").read_text())
    text_hashes = {row: cells[f"dlcm|{row}|0"]["fingerprint"].rsplit(":", 1)[1]
                   for row in ("self", "policy_base", "policy_iter_0")}
    assert len(set(text_hashes.values())) == 3

    # the run's reward models were trained once (2 models x base/+knowledge x 2 seeds), in rlrf reward's place
    assert len(out["trained_now"]) == 8
    reward_dir = cfg.run_dir / "reward"
    assert (reward_dir / "dlcm" / "seed_1.pt").exists() and (reward_dir / "prm_knowledge" / "model.pt").exists()
    # swap: only the valid and test users' summaries were generated, one greedy text each, per policy
    for tag in ("base", "iter_0"):
        records = read_jsonl(cfg.run_dir / "knowledge" / tag / "iter_0" / "responses.jsonl")
        assert {r["k"] for r in records} == {0} and len(records) == len({r["user"] for r in records})
        assert len(records) <= 8  # 40 users: only the 4 test users' summaries are needed here

    # rerun: nothing trained or evaluated again, same numbers
    again = run_rerank_experiment(cfg, seeds=2, show_progress=False, protocol="swap")
    assert again["trained_now"] == [] and again["cells_computed"] == 0 and again["cells_reused"] == 2 * 5 * 2
    assert again["models"] == out["models"]


def test_retrain_trains_one_knowledge_model_per_policy_and_seed(cfg):
    out = run_rerank_experiment(cfg, iterations=[0], seeds=1, show_progress=False, protocol="retrain")
    folder = experiment_dir(cfg.run_dir, "retrain")
    assert folder.name == "rerank_retrain" and out["protocol"] == "retrain"
    _check_complete(out, [0])
    for tag in ("base", "iter_0"):
        for kind in ("dlcm", "prm"):
            file = folder / "models" / tag / f"{kind}_knowledge" / "seed_0.pt"
            assert str(file) in out["trained_now"]
            assert out["models"][kind][f"policy_{tag}"]["test"]["per_seed"][0]["seed"] == 0
        # retrain needs every user's summary (train users included)
        users = {r["user"] for r in read_jsonl(cfg.run_dir / "knowledge" / tag / "iter_0" / "responses.jsonl")}
        assert len(users) >= 38
    meta = read_header(folder / "models" / "iter_0" / "prm_knowledge" / "seed_0.pt")["meta"]
    assert meta["user_knowledge"].startswith("policy iter_0")
    assert "| +knowledge (iter 0 policy) | " in (folder / "table.md").read_text()


def test_bad_iteration_and_protocol_are_one_line_errors(cfg):
    with pytest.raises(UserError, match="no complete adapter for iteration 3"):
        run_rerank_experiment(cfg, iterations=[3], seeds=1, show_progress=False, protocol="swap")
    with pytest.raises(UserError, match="unknown protocol 'both'"):
        run_rerank_experiment(cfg, seeds=1, show_progress=False, protocol="both")
