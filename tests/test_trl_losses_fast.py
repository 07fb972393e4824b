"""trl's own DPO loss types (`align.loss: ipo`, hinge, ...) on the fast path (rlrf/alignment/trainer.py):
trl's loss code fed the fast path's log-probs gives the loss, the LoRA gradients and the metrics of
trl's full-sequence path; what it cannot cover falls back to trl's forward and says so."""

from __future__ import annotations

import math
import os

import pytest
import torch

from rlrf.alignment.collator import PreferenceCollator
from rlrf.core.config import LLMConfig
from rlrf.generation.policy import load_policy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

BETA = 0.1
TEXTS = [
    "Enjoys Sci-Fi and Thriller movies like Star Wars (1977).",
    "Likes Comedy and Romance, Drama from the nineties.",
    "Prefers Action Adventure movies with War themes.",
    "Watches Animation and Children's movies, Musical too.",
]


def _trainer(tmp_path, model_dir, tokenizer, loss_type, *, fast_path=True, loss_weights=None, mixed_bf16=False,
             loss_name=None, **dpo_args):
    """A PreferenceTrainer on three examples whose prompts and completions differ in length (padded
    batches), with trl's `loss_type` list as dpo.py builds it, and one batch of all three."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig

    from rlrf.alignment.trainer import PreferenceTrainer

    torch.manual_seed(0)  # the same LoRA initialisation for every trainer
    policy = load_policy(LLMConfig(model=str(model_dir)), merge_adapter=False)
    messages = [[{"role": "user", "content": f"Describe this user: {u} Star Wars (1977)" * (u + 1)}] for u in range(3)]
    records = [{"prompt": tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True),
                "chosen": TEXTS[u], "rejected": TEXTS[(u + 1) % len(TEXTS)] * (2 - u), "margin": 0.2}
               for u, m in enumerate(messages)]
    args = DPOConfig(output_dir=str(tmp_path / f"w{fast_path}"), max_length=256, report_to=[], use_cpu=True,
                     bf16=False, gradient_checkpointing=False, remove_unused_columns=False, save_strategy="no",
                     beta=BETA, loss_type=list(loss_type), loss_weights=loss_weights, **dpo_args)
    collator = PreferenceCollator(pad_token_id=tokenizer.pad_token_id, negatives=1, max_length=256)
    trainer = PreferenceTrainer(
        model=policy.model, args=args, train_dataset=Dataset.from_list(records), processing_class=policy.tokenizer,
        data_collator=collator, peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"),
        loss_name=loss_name or loss_type[0], negatives=1, sft_weight=0.0, rosepo_eps_max=0.4, rosepo_tau=0.1,
        fast_path=fast_path, mixed_bf16=mixed_bf16)
    trainer.model.train()
    batch = collator([trainer.train_dataset[i] for i in range(3)])
    assert (batch["attention_mask"] == 0).any() and (batch["completion_attention_mask"] == 0).any()
    return trainer, batch


def _train_lora(trainer):
    with torch.no_grad():  # make the LoRA do something: the policy moves off the reference
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3, generator=torch.Generator().manual_seed(sum(map(ord, name))))


def _steps(trainer, batch, n_steps=2, max_update=0.05):
    """(loss, LoRA gradients) of `n_steps` gradient steps on `batch`, each moving no LoRA parameter by
    more than `max_update` (IPO's gradients are ~50x DPO's: a fixed learning rate would throw the
    random model into a regime where float32 rounding, not the code, decides the next step)."""
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    results = []
    for _ in range(n_steps):
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(batch))
        loss.backward()
        grads = torch.cat([p.grad.flatten() for p in params])
        results.append((loss.detach(), grads))
        with torch.no_grad():
            for p in params:
                p -= max_update / grads.abs().max() * p.grad
    return results


@pytest.mark.parametrize("loss_type, loss_weights, dpo_args", [
    (["ipo"], None, {}), (["hinge"], None, {}), (["apo_zero"], None, {}), (["robust"], None, {"label_smoothing": 0.2}),
    (["ipo", "sft"], [1.0, 0.5], {}),  # dpo.py's list for align.loss ipo + align.sft_weight 0.5
    (["sigmoid"], None, {"use_weighting": True}), (["sigmoid"], None, {"f_divergence_type": "js_divergence"}),
])
def test_trl_loss_on_the_fast_path_gives_trls_full_path_loss_gradients_and_metrics(
        tmp_path, tiny_model_dir, tiny_tokenizer, loss_type, loss_weights, dpo_args):
    runs = []
    for fast_path in (False, True):
        trainer, batch = _trainer(tmp_path, tiny_model_dir, tiny_tokenizer, loss_type, fast_path=fast_path,
                                  loss_weights=loss_weights, **dpo_args)
        assert trainer.fast_path == fast_path
        assert trainer.trl_forward == ("fast path" if fast_path else "trl's full-sequence forward (fast path off)")
        _train_lora(trainer)
        runs.append((_steps(trainer, batch), trainer._metrics["train"]))
    (full_steps, full_metrics), (fast_steps, fast_metrics) = runs
    for (full_loss, full_grads), (fast_loss, fast_grads) in zip(full_steps, fast_steps):
        scale = full_grads.abs().max().item()
        assert scale > 1e-6  # a real gradient, not zeros on both sides
        # 1e-5, or 1e-5 of the value where it is small (WPO's weights are ~1e-6 on this model)
        torch.testing.assert_close(fast_loss, full_loss, rtol=1e-5, atol=1e-5 * min(1.0, full_loss.abs().item()))
        torch.testing.assert_close(fast_grads, full_grads, rtol=1e-5, atol=1e-5 * min(1.0, scale))
    assert full_steps[0][0] != full_steps[1][0]  # the second step ran on the updated LoRA
    assert sorted(fast_metrics) == sorted(full_metrics)  # trl's metrics, all of them, from its own code
    for key in full_metrics:
        assert fast_metrics[key] == pytest.approx(full_metrics[key], rel=1e-4, abs=1e-5), key


@pytest.mark.parametrize("mixed", [False, True])
def test_at_the_initial_adapter_each_trl_loss_type_gives_its_own_value(tmp_path, tiny_model_dir, tiny_tokenizer,
                                                                       mixed):
    """Policy = reference (bitwise: one function, the adapter disabled), so every log-ratio is 0 and
    each loss type's formula gives a different, known number: the name is not ignored."""
    expected = {"sigmoid": math.log(2), "ipo": (1 / (2 * BETA)) ** 2, "hinge": 1.0, "apo_zero": 1.0}
    losses = {}
    for loss_type in expected:
        trainer, batch = _trainer(tmp_path / loss_type, tiny_model_dir, tiny_tokenizer, [loss_type], mixed_bf16=mixed)
        assert trainer.fast_path and trainer.mixed_bf16 == mixed
        with torch.no_grad():
            losses[loss_type] = trainer.compute_loss(trainer.model, dict(batch)).item()
            # the precomputed reference (another batch size) reads the same numbers from the batch
            trainer.precompute_reference(batch_size=2)
            batch = trainer.data_collator([trainer.train_dataset[i] for i in range(3)])
            assert trainer.compute_loss(trainer.model, batch).item() == pytest.approx(losses[loss_type], abs=1e-5)
    assert losses == pytest.approx(expected, abs=1e-5)
    assert losses["ipo"] != pytest.approx(losses["sigmoid"])


def test_what_the_fast_path_cannot_feed_trl_runs_trls_forward_and_says_so(tmp_path, tiny_model_dir, tiny_tokenizer):
    trainer, batch = _trainer(tmp_path, tiny_model_dir, tiny_tokenizer, ["ipo"], ld_alpha=0.5)
    assert not trainer.fast_path and trainer.trl_forward == "trl's full-sequence forward (ld_alpha)"
    assert torch.isfinite(trainer.compute_loss(trainer.model, dict(batch)))
    ours, _ = _trainer(tmp_path / "dpo", tiny_model_dir, tiny_tokenizer, ["sigmoid"], loss_name="dpo")
    assert ours.fast_path and ours.trl_forward is None  # rlrf's own loss: no trl forward to name


def test_rlrf_align_with_a_trl_loss_list_trains_as_trls_forward_does_and_logs_which_ran(tmp_path, tiny_model_dir,
                                                                                       tiny_tokenizer, monkeypatch):
    """`align.loss: ipo` + `align.sft_weight` (trl's loss list [ipo, sft]), the reference precomputed:
    the same step losses with the fast path as with trl's forward (``RLRF_FAST_TRAIN=0``)."""
    import json

    from rlrf.alignment.dpo import run_align
    from rlrf.core.config import RunConfig
    from rlrf.core.io import read_json

    runs = {}
    for fast_train in ("1", "0"):
        monkeypatch.setenv("RLRF_FAST_TRAIN", fast_train)
        cfg = RunConfig.model_validate({
            "run_dir": str(tmp_path / fast_train / "run"), "threads": 1, "llm": {"model": str(tiny_model_dir)},
            "lora": {"r": 4, "lora_alpha": 8},
            "align": {"loss": "ipo", "sft_weight": 0.5, "trainer_args": {
                "max_steps": 3, "per_device_train_batch_size": 2, "max_length": 128, "learning_rate": 1e-3}}})
        pairs = cfg.run_dir / "iter_0" / "pairs.jsonl"
        pairs.parent.mkdir(parents=True)
        pairs.write_text("".join(json.dumps({
            "user": str(u), "iter": 0, "prompt": tiny_tokenizer.apply_chat_template(
                [{"role": "user", "content": f"Describe user {u}: " + TEXTS[u] * (u + 1)}], tokenize=False,
                add_generation_prompt=True),
            "chosen": TEXTS[u], "rejected": TEXTS[(u + 1) % len(TEXTS)], "margin": 0.1}) + "\n" for u in range(4)))
        summary = run_align(cfg, 0, show_progress=False)
        steps = read_json(cfg.run_dir / "iter_0" / "align_log.json")["steps"]
        runs[fast_train] = summary, [e["loss"] for e in steps if "loss" in e]
    (fast, fast_losses), (full, full_losses) = runs["1"], runs["0"]
    assert fast["trl_forward"] == "fast path"
    assert full["trl_forward"] == "trl's full-sequence forward (fast path off)"
    assert len(fast_losses) == 3 and fast_losses[0] > 20  # IPO's (0 - 1/(2β))² = 25 plus the SFT term at the start
    assert fast_losses == pytest.approx(full_losses, rel=2e-6)  # float32 rounding (~29, within ~1e-5)
