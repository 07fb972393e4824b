"""`align.reference`: which policy iteration t's DPO loss is anchored to (tiny Llama, tests/conftest.py).

previous (default) = the policy before the iteration (base + iteration t−1's adapter); base = the
base model at every iteration, the RLRF4Rec paper's π_ref. Both training paths are checked: the fast
path (rlrf/alignment/fast.py) and the one before it (RLRF_FAST_TRAIN=0)."""

from __future__ import annotations

import json
import math
import os
import shutil

import pytest
import torch

from rlrf.alignment.dpo import run_align
from rlrf.alignment.trainer import PreferenceTrainer
from rlrf.core.config import RunConfig

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

CHOSEN = "Enjoys Sci-Fi and Thriller movies like Star Wars (1977)."
REJECTED = "Watches Animation and Children's movies, Musical too."


def _write_pairs(run_dir, tokenizer, iteration):
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Describe user 1: rated Toy Story (1995)"}],
                                           tokenize=False, add_generation_prompt=True)
    path = run_dir / f"iter_{iteration}" / "pairs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"user": "1", "iter": iteration, "prompt": prompt, "chosen": CHOSEN,
                                "rejected": REJECTED, "margin": 0.5}) + "\n")


def _cfg(run_dir, model_dir, reference):
    return RunConfig.model_validate({
        "run_dir": str(run_dir), "threads": 1, "llm": {"model": str(model_dir)}, "lora": {"r": 4, "lora_alpha": 8},
        "align": {"beta": 0.5, "reference": reference, "trainer_args": {
            "max_steps": 2, "per_device_train_batch_size": 1, "max_length": 128, "learning_rate": 5e-3}},
    })


@pytest.fixture
def reference_logps(monkeypatch):
    """The (chosen, rejected) reference log-probs each `run_align` precomputed, in call order."""
    seen = []
    precompute = PreferenceTrainer.precompute_reference

    def recording(self, batch_size):
        precompute(self, batch_size)
        seen.append(self.train_dataset["ref_logps"][0])

    monkeypatch.setattr(PreferenceTrainer, "precompute_reference", recording)
    return seen


@pytest.mark.parametrize("fast", ["1", "0"])
def test_iteration_one_is_anchored_to_the_base_model_or_to_the_previous_adapter(
        tmp_path, tiny_model_dir, tiny_tokenizer, reference_logps, monkeypatch, fast):
    monkeypatch.setenv("RLRF_FAST_TRAIN", fast)
    first = tmp_path / "first"
    _write_pairs(first, tiny_tokenizer, 0)
    _write_pairs(first, tiny_tokenizer, 1)
    run_align(_cfg(first, tiny_model_dir, "previous"), 0, show_progress=False)  # iteration 0: a fresh LoRA
    base_logps = reference_logps[0]  # a fresh LoRA's reference is the base model, whichever option
    summaries = {}
    for reference in ("previous", "base"):
        run_dir = tmp_path / reference
        shutil.copytree(first, run_dir)
        summaries[reference] = run_align(_cfg(run_dir, tiny_model_dir, reference), 1, show_progress=False)
    previous_logps, base_ref_logps = reference_logps[1], reference_logps[2]

    assert base_ref_logps == pytest.approx(base_logps, abs=1e-5)
    assert summaries["base"]["reference"].endswith("+ no adapter")
    # adapter_0 was trained on this pair against the base: the base still anchors it, so the loss starts below log 2
    assert summaries["base"]["first_loss"] < math.log(2) - 0.01
    assert previous_logps != pytest.approx(base_logps, abs=1e-3)  # adapter_0 moved the policy
    assert summaries["previous"]["reference"].endswith("iter_0/adapter")
    assert summaries["previous"]["first_loss"] == pytest.approx(math.log(2), abs=1e-4)  # policy = reference at the start
