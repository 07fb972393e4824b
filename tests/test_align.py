"""`rlrf align` on the tiny random-weight Llama (tests/conftest.py): real trl + peft, seconds per test."""

from __future__ import annotations

import json
import math
import os

import pytest
import torch

from rlrf.alignment.adapters import previous_adapter
from rlrf.alignment.collator import PreferenceCollator
from rlrf.alignment.dpo import run_align
from rlrf.core.layout import RunLayout, adapter_complete
from rlrf.core.config import LLMConfig, RunConfig
from rlrf.core.errors import UserError
from rlrf.generation.policy import load_policy

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)

TEXTS = [
    "Enjoys Sci-Fi and Thriller movies like Star Wars (1977).",
    "Likes Comedy and Romance, Drama from the nineties.",
    "Prefers Action Adventure movies with War themes.",
    "Watches Animation and Children's movies, Musical too.",
    "Horror Mystery Film-Noir fan, dislikes Documentary.",
]


def _prompt(tokenizer, user) -> str:
    messages = [{"role": "user", "content": f"Describe this user's preferences: user {user} rated Toy Story (1995)"}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _write_pairs(run_dir, tokenizer, n=4, negatives=1, iteration=0):
    path = run_dir / f"iter_{iteration}" / "pairs.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as f:
        for u in range(n):
            rec = {"user": str(u), "iter": iteration, "prompt": _prompt(tokenizer, u),
                   "chosen": TEXTS[u % len(TEXTS)], "rejected": TEXTS[(u + 1) % len(TEXTS)], "margin": 0.1 * (u + 1)}
            if negatives > 1:
                rec["rejected_list"] = [TEXTS[(u + j) % len(TEXTS)] for j in range(1, negatives + 1)]
                if u == 0:
                    rec["rejected_list"] = rec["rejected_list"][:1]  # fewer negatives than k: masked
            f.write(json.dumps(rec) + "\n")
    return path


ALIGN_KEYS = {"loss", "beta", "sft_weight", "length_alpha", "rosepo_eps_max", "rosepo_tau", "precompute_ref_log_probs", "share_prompt"}


def _cfg(tmp_path, model_dir, **settings):
    """`settings`: align keys, else trl DPOConfig fields (align.trainer_args)."""
    trainer = {"max_steps": 1, "per_device_train_batch_size": 2, "max_length": 128, "learning_rate": 1e-3}
    trainer.update({k: v for k, v in settings.items() if k not in ALIGN_KEYS})
    align = {k: v for k, v in settings.items() if k in ALIGN_KEYS}
    return RunConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "threads": 1, "llm": {"model": str(model_dir)},
        "align": {**align, "trainer_args": trainer}, "lora": {"r": 4, "lora_alpha": 8},
    })


def test_dpo_step_saves_a_loadable_adapter_and_rerun_skips(tmp_path, tiny_model_dir, tiny_tokenizer):
    cfg = _cfg(tmp_path, tiny_model_dir)
    _write_pairs(cfg.run_dir, tiny_tokenizer)
    summary = run_align(cfg, 0, show_progress=False)
    adapter = cfg.run_dir / "iter_0" / "adapter"
    assert summary["steps"] == 1 and not summary["skipped"] and summary["negatives"] == 1
    assert adapter_complete(adapter)
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in adapter.iterdir()}
    adapter_config = json.loads((adapter / "adapter_config.json").read_text())
    assert adapter_config["r"] == 4  # lora.r
    # portable: the base is named as configured, not by a path on this machine (kept aside)
    assert adapter_config["base_model_name_or_path"] == str(tiny_model_dir)
    assert json.loads((adapter / "rlrf_base.json").read_text())["base_model"] == str(tiny_model_dir)
    assert not (adapter / "ref").exists()  # trl's frozen reference copy is not saved
    assert not list((cfg.run_dir / "iter_0").glob(".a*"))  # no temporary folders left
    log = json.loads((cfg.run_dir / "iter_0" / "align_log.json").read_text())
    step = [e for e in log["steps"] if "loss" in e][0]
    assert {"loss", "rewards/accuracies", "rewards/margins", "seconds"} <= set(step)
    assert list((cfg.run_dir / "iter_0" / "tensorboard" / "adapter").glob("events.out.tfevents.*"))  # report_to default
    # the trained adapter loads with the LLM engineer's loader and changes the model's output
    base = load_policy(LLMConfig(model=str(tiny_model_dir)))
    tuned = load_policy(LLMConfig(model=str(tiny_model_dir), adapter=adapter))
    ids = base.tokenizer("Toy Story (1995)", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert not torch.allclose(base.model(input_ids=ids).logits, tuned.model(input_ids=ids).logits)
    # rerun: the stage is idempotent
    mtime = (adapter / "adapter_model.safetensors").stat().st_mtime_ns
    again = run_align(cfg, 0, show_progress=False)
    assert again["skipped"] and again["steps"] == 1
    assert (adapter / "adapter_model.safetensors").stat().st_mtime_ns == mtime


def test_sdpo_two_negatives_runs(tmp_path, tiny_model_dir, tiny_tokenizer):
    cfg = _cfg(tmp_path, tiny_model_dir, loss="sdpo", precompute_ref_log_probs=False)
    _write_pairs(cfg.run_dir, tiny_tokenizer, n=2, negatives=2)  # user 0 has one real negative, user 1 two
    summary = run_align(cfg, 0, show_progress=False)
    assert summary["negatives"] == 2 and summary["steps"] == 1
    # fresh LoRA = reference, so every r(y) = 0: S-DPO = log(1 + #negatives) per pair;
    # the batch holds both pairs: (log 2 + log 3) / 2 = (0.693147 + 1.098612) / 2 = 0.895880
    assert summary["first_loss"] == pytest.approx(0.895880, abs=1e-3)
    assert adapter_complete(cfg.run_dir / "iter_0" / "adapter")


def _losses(run_dir, iteration=0):
    log = json.loads((run_dir / f"iter_{iteration}" / "align_log.json").read_text())
    return [e["loss"] for e in log["steps"] if "loss" in e]


def test_our_dpo_matches_trl_sigmoid(tmp_path, tiny_model_dir, tiny_tokenizer):
    """The registry's dpo and trl's built-in sigmoid (passed through) train the same way."""
    runs = {}
    for name, precompute in (("dpo", True), ("sigmoid", False)):
        cfg = _cfg(tmp_path / name, tiny_model_dir, loss=name, max_steps=3, per_device_train_batch_size=1, beta=0.5,
                   precompute_ref_log_probs=precompute)
        _write_pairs(cfg.run_dir, tiny_tokenizer, n=1)
        run_align(cfg, 0, show_progress=False)
        runs[name] = _losses(cfg.run_dir)
    assert runs["dpo"][-1] < runs["dpo"][0]
    assert runs["dpo"] == pytest.approx(runs["sigmoid"], abs=2e-4)


@pytest.mark.parametrize("loss,extra", [("rosepo", {}), ("dmpo", {"sft_weight": 0.5}), ("ipo", {"sft_weight": 0.5})])
def test_other_losses_run(tmp_path, tiny_model_dir, tiny_tokenizer, loss, extra):
    cfg = _cfg(tmp_path, tiny_model_dir, loss=loss, max_steps=2, **extra)
    _write_pairs(cfg.run_dir, tiny_tokenizer, n=2, negatives=3 if loss == "dmpo" else 1)
    summary = run_align(cfg, 0, show_progress=False)
    assert summary["steps"] == 2 and all(x == x for x in _losses(cfg.run_dir))  # finite, no NaN
    assert summary["negatives"] == (3 if loss == "dmpo" else 1)


def test_collator_layout_and_mask(tiny_tokenizer):
    ex = lambda n: {"prompt_ids": [1, 2], "chosen_ids": [3], "rejected_ids": [4],  # noqa: E731
                    "negatives_full_ids": [[1, 2, 4], [1, 2, 5, 6]][:n], "margin": 0.5}
    batch = PreferenceCollator(pad_token_id=0, negatives=2)([ex(2), ex(1)])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [1, 2, 3, 0], [1, 2, 4, 0], [1, 2, 4, 0],
                                           [1, 2, 5, 6], [1, 2, 4, 0]]
    assert batch["completion_mask"].tolist()[4] == [0, 0, 1, 1]
    assert batch["neg_mask"].tolist() == [[True, True], [True, False]]


def test_a_completion_cut_at_the_cap_is_trained_without_the_eos_trl_appends():
    eos = 9
    ex = {"prompt_ids": [1, 2], "chosen_ids": [3, eos], "rejected_ids": [4, eos], "margin": 0.5,
          "finished": [False, True]}
    batch = PreferenceCollator(pad_token_id=0, negatives=1, eos_token_id=eos)([ex])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 0], [1, 2, 4, eos]]
    assert batch["completion_mask"].tolist() == [[0, 0, 1, 0], [0, 0, 1, 1]]
    assert batch["completion_input_ids"].tolist() == [[3, 0], [4, eos]]
    # k negatives: each keeps or loses its EOS by its own flag; pairs files without flags keep it
    multi = {"prompt_ids": [1, 2], "chosen_ids": [3, eos], "rejected_ids": [4, eos], "margin": 0.5,
             "negatives_full_ids": [[1, 2, 4, eos], [1, 2, 5, eos]], "finished": [True, True, False]}
    batch = PreferenceCollator(pad_token_id=0, negatives=2, eos_token_id=eos)([multi])
    assert batch["input_ids"].tolist() == [[1, 2, 3, eos], [1, 2, 4, eos], [1, 2, 5, 0]]
    legacy = {k: v for k, v in ex.items() if k != "finished"}
    assert PreferenceCollator(pad_token_id=0, negatives=1, eos_token_id=eos)([legacy])["input_ids"][0].tolist() == [1, 2, 3, eos]


def test_the_cut_flags_of_a_pairs_file_reach_the_collator(tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch):
    cfg = _cfg(tmp_path, tiny_model_dir)
    path = _write_pairs(cfg.run_dir, tiny_tokenizer)
    pairs = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**p, "chosen_finished": False}) + "\n" for p in pairs))
    seen = []
    call = PreferenceCollator.__call__
    monkeypatch.setattr(PreferenceCollator, "__call__", lambda self, examples: seen.extend(examples) or call(self, examples))
    run_align(cfg, 0, show_progress=False)
    assert seen and all(ex["finished"] == [False, True] for ex in seen)


def test_loss_decreases_on_a_fixed_pair(tmp_path, tiny_model_dir, tiny_tokenizer):
    cfg = _cfg(tmp_path, tiny_model_dir, max_steps=6, per_device_train_batch_size=1, learning_rate=5e-3, lr_scheduler_type="constant",
               beta=0.5)
    _write_pairs(cfg.run_dir, tiny_tokenizer, n=1)
    summary = run_align(cfg, 0, show_progress=False)
    losses = [e["loss"] for e in json.loads((cfg.run_dir / "iter_0" / "align_log.json").read_text())["steps"]
              if "loss" in e]
    assert len(losses) == 6
    assert losses[0] == pytest.approx(0.6931, abs=1e-3)  # a fresh LoRA is the reference: −log σ(0) = log 2
    assert losses[-1] < losses[0] - 0.05, losses
    assert summary["last_reward_accuracy"] == 1.0


def test_second_iteration_continues_the_adapter_with_previous_policy_as_reference(tmp_path, tiny_model_dir,
                                                                                   tiny_tokenizer):
    cfg = _cfg(tmp_path, tiny_model_dir, max_steps=2, per_device_train_batch_size=1, learning_rate=5e-3, beta=0.5)
    _write_pairs(cfg.run_dir, tiny_tokenizer, n=1, iteration=0)
    _write_pairs(cfg.run_dir, tiny_tokenizer, n=1, iteration=1)
    run_align(cfg, 0, show_progress=False)
    assert previous_adapter(cfg.llm.adapter, RunLayout(cfg.run_dir), 1) == cfg.run_dir / "iter_0" / "adapter"
    s1 = run_align(cfg, 1, show_progress=False)
    assert s1["start_adapter"] == str(cfg.run_dir / "iter_0" / "adapter")
    # the reference of iteration 1 is base + adapter_0, so its first loss is again log 2, not the lower
    # loss that adapter_0 reaches against the base model
    assert s1["first_loss"] == pytest.approx(0.6931, abs=1e-3)
    cfg_t = cfg.model_copy(update={"llm": cfg.llm.model_copy(update={"adapter": cfg.run_dir / "iter_1" / "adapter"})})
    policy = load_policy(cfg_t.llm)  # loads on the plain base model
    assert policy.adapter == cfg.run_dir / "iter_1" / "adapter"


def test_user_errors(tmp_path, tiny_model_dir, tiny_tokenizer):
    cfg = _cfg(tmp_path, tiny_model_dir)
    with pytest.raises(UserError, match="no pairs file"):
        run_align(cfg, 0, show_progress=False)
    _write_pairs(cfg.run_dir, tiny_tokenizer)
    bad = _cfg(tmp_path, tiny_model_dir, loss="dpoo")
    with pytest.raises(UserError, match="align.loss"):
        run_align(bad, 0, show_progress=False)


def test_length_alpha_reaches_the_loss_and_trl_only_knobs_are_refused(tmp_path, tiny_model_dir, tiny_tokenizer):
    # At the first step the fresh LoRA is the reference, so plain DPO's loss is exactly log 2; the
    # pairs' chosen and rejected texts differ in length, so R-DPO's term moves it.
    first = {}
    for alpha in (0.0, 0.5):
        cfg = _cfg(tmp_path / str(alpha), tiny_model_dir, length_alpha=alpha, logging_steps=1)
        _write_pairs(cfg.run_dir, tiny_tokenizer)
        first[alpha] = run_align(cfg, 0, show_progress=False)["first_loss"]
    assert first[0.0] == pytest.approx(math.log(2), abs=1e-4)
    assert abs(first[0.5] - math.log(2)) > 0.01
    cfg = _cfg(tmp_path / "trl", tiny_model_dir, ld_alpha=0.5)
    _write_pairs(cfg.run_dir, tiny_tokenizer)
    with pytest.raises(UserError, match=r"^align.trainer_args.ld_alpha: shapes trl's own losses only"):
        run_align(cfg, 0, show_progress=False)
    with pytest.raises(UserError, match=r"^align.length_alpha: .*ld_alpha"):
        run_align(_cfg(tmp_path / "trl", tiny_model_dir, loss="sigmoid", length_alpha=0.5), 0, show_progress=False)


def test_shared_prompt_logps_equal_full_sequences(tmp_path, tiny_model_dir, tiny_tokenizer):
    """One prompt pass + its repeated KV cache gives the full-sequence log-probs and gradients."""
    from datasets import Dataset
    from peft import LoraConfig
    from trl import DPOConfig

    from rlrf.alignment.dpo import _tokenize_negatives
    from rlrf.alignment.trainer import PreferenceTrainer

    policy = load_policy(LLMConfig(model=str(tiny_model_dir)), merge_adapter=False)
    records = []
    for u in range(3):  # prompts of different lengths -> left padding in the shared pass
        prompt = _prompt(tiny_tokenizer, f"{u} Star Wars (1977)" * u)
        negs = [TEXTS[(u + j) % len(TEXTS)] for j in (1, 2)][: 1 + (u > 0)]
        records.append({"prompt": prompt, "chosen": TEXTS[u], "rejected": negs[0], "negatives": negs, "margin": 0.2})
    records = _tokenize_negatives(records, tiny_tokenizer)
    max_length = len(tiny_tokenizer(records[-1]["prompt"])["input_ids"]) + 6  # cuts the longest prompt's responses
    data = Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected", "margin", "negatives_full_ids")}
                              for r in records])
    args = DPOConfig(output_dir=str(tmp_path / "w"), max_length=max_length, report_to=[], use_cpu=True, bf16=False,
                     gradient_checkpointing=False, remove_unused_columns=False, save_strategy="no")
    collator = PreferenceCollator(pad_token_id=tiny_tokenizer.pad_token_id, negatives=2, max_length=max_length)
    trainer = PreferenceTrainer(
        model=policy.model, args=args, train_dataset=data, processing_class=policy.tokenizer, data_collator=collator,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"), loss_name="sdpo", negatives=2,
        sft_weight=0.0, rosepo_eps_max=0.4, rosepo_tau=0.1)
    with torch.no_grad():  # make the LoRA do something
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    batch = collator([trainer.train_dataset[i] for i in range(3)])
    assert batch["input_ids"].shape[1] == max_length  # the longest prompt's responses are cut: both layouts agree
    results, grads = [], []
    for fn in (trainer._full_sequence_logps, trainer._shared_prompt_logps):
        trainer.model.zero_grad()
        logps, lengths = fn(trainer.model, batch)
        (logps * torch.linspace(0.5, 1.5, len(logps))).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for n, p in trainer.model.named_parameters() if p.requires_grad]))
        results.append((logps.detach(), lengths))
    (full, full_lengths), (shared, shared_lengths) = results
    assert full.shape == (9,) and full_lengths.tolist() == shared_lengths.tolist()
    torch.testing.assert_close(shared, full, rtol=1e-4, atol=1e-3)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-4)


def test_rerun_after_a_kill_retrains_and_cleans_up(tmp_path, tiny_model_dir, tiny_tokenizer):
    cfg = _cfg(tmp_path, tiny_model_dir)
    _write_pairs(cfg.run_dir, tiny_tokenizer)
    it = cfg.run_dir / "iter_0"
    # what a kill leaves: a temporary adapter folder, the trainer's work folder, a half-written adapter
    (it / ".adapter.tmp-999").mkdir()
    (it / ".adapter.work").mkdir()  # resumed from when it holds a trainer checkpoint
    (it / "adapter").mkdir()
    (it / "adapter" / "adapter_config.json").write_text("{}")
    summary = run_align(cfg, 0, show_progress=False)
    assert not summary["skipped"] and adapter_complete(it / "adapter")
    assert sorted(p.name for p in it.iterdir() if p.name.startswith(".")) == []
    load_policy(LLMConfig(model=str(tiny_model_dir), adapter=it / "adapter"))  # a real adapter, not the stub


def test_trainer_args_are_checked_by_trl_and_rlrf_keeps_its_own(tmp_path, tiny_model_dir, tiny_tokenizer):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"unknown key 'no_such_field' \(not a field of trl's DPOConfig\)"):
        _cfg(tmp_path, tiny_model_dir, no_such_field=1)  # refused with the config, before any model loads
    cfg = _cfg(tmp_path, tiny_model_dir, output_dir=str(tmp_path / "elsewhere"))
    _write_pairs(cfg.run_dir, tiny_tokenizer)
    with pytest.raises(UserError, match=r"^align.trainer_args.output_dir: set by rlrf itself"):
        run_align(cfg, 0, show_progress=False)
    assert not adapter_complete(cfg.run_dir / "iter_0" / "adapter")


def test_a_killed_step_resumes_from_its_last_trainer_checkpoint(tmp_path, tiny_model_dir, tiny_tokenizer, monkeypatch):
    from transformers import TrainerCallback

    import rlrf.alignment.dpo as dpo

    cfg = _cfg(tmp_path, tiny_model_dir, max_steps=3, per_device_train_batch_size=1, save_strategy="steps", save_steps=1)
    _write_pairs(cfg.run_dir, tiny_tokenizer, n=3)
    real_timer = dpo._StepTimer

    class Kill(TrainerCallback):  # dies after step 2's optimizer update, before its checkpoint is written
        seconds: list = []

        def on_step_end(self, args, state, control, **kw):
            if state.global_step == 2:
                raise KeyboardInterrupt

    monkeypatch.setattr(dpo, "_StepTimer", Kill)
    with pytest.raises(KeyboardInterrupt):
        run_align(cfg, 0, show_progress=False)
    work = cfg.run_dir / "iter_0" / ".adapter.work"
    assert (work / "checkpoint-1").is_dir() and not adapter_complete(cfg.run_dir / "iter_0" / "adapter")

    monkeypatch.setattr(dpo, "_StepTimer", real_timer)
    summary = run_align(cfg, 0, show_progress=False)
    assert summary["resumed_from"] == str(work / "checkpoint-1") and summary["steps"] == 3
    assert adapter_complete(cfg.run_dir / "iter_0" / "adapter") and not work.exists()
