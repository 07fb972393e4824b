"""Online RL (align.method grpo / rloo): trl's trainers learn from a Python reward function."""

from __future__ import annotations

import os

import pytest
import torch

from rlrf.alignment.online import reward_function, run_online
from rlrf.core.config import RunConfig
from rlrf.core.io import read_json
from rlrf.core.layout import adapter_complete

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)


def test_the_reward_function_reads_the_user_column_and_charges_length():
    seen = []

    def score(users, texts):
        seen.append(users)
        return [1.0] * len(texts)

    reward = reward_function(score, length_penalty=0.1, free_tokens=2, count_tokens=lambda t: len(t.split()))
    values = reward(prompts=["p", "p"], completions=["a b", "a b c d"], user=["7", "7"])
    assert seen == [["7", "7"]] and values == pytest.approx([1.0, 0.8])


@pytest.mark.parametrize("method", ["grpo", "rloo"])
def test_a_toy_reward_rises_on_a_tiny_policy(tmp_path, tiny_model_dir, tiny_tokenizer, method, monkeypatch):
    """Toy reward: the share of a summary's tokens from the lower half of the vocabulary. A random
    policy scores about 0.5 with a spread inside each group, which is what it learns from. The
    groups are sampled by rlrf's batched sampler (`online.generator: rlrf`, the default)."""
    from rlrf.generation import backends

    sampled = []
    real_generate = backends.TransformersBackend.generate
    monkeypatch.setattr(backends.TransformersBackend, "generate",
                        lambda self, requests, params: sampled.append((len(requests), params)) or real_generate(self, requests, params))
    cfg = RunConfig.model_validate({
        "run_dir": str(tmp_path / "run"), "seed": 0, "threads": 1, "llm": {"model": str(tiny_model_dir)},
        "align": {"method": method}, "lora": {"r": 8, "lora_alpha": 16},
        "online": {"trainer_args": {"max_steps": 30, "per_device_train_batch_size": 8, "num_generations": 4,
                                    "max_completion_length": 24, "learning_rate": 0.1, "temperature": 1.0,
                                    "report_to": []}},
    })
    messages = lambda u: [{"role": "user", "content": f"Describe user {u}'s taste in movies."}]  # noqa: E731
    records = [{"prompt": tiny_tokenizer.apply_chat_template(messages(u), tokenize=False, add_generation_prompt=True),
                "user": str(u)} for u in range(8)]
    users_seen = set()

    def score(users, texts):
        users_seen.update(users)
        ids = [tiny_tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
        return [sum(i < len(tiny_tokenizer) // 2 for i in x) / max(1, len(x)) for x in ids]

    summary = run_online(cfg, 0, records, score, show_progress=False)
    assert adapter_complete(tmp_path / "run" / "iter_0" / "adapter") and summary["steps"] == 30
    rewards = [e["reward"] for e in read_json(tmp_path / "run" / "iter_0" / "align_log.json")["steps"] if "reward" in e]
    first, last = sum(rewards[:4]) / 4, sum(rewards[-4:]) / 4
    assert last > first + 0.1, rewards
    assert users_seen == {str(u) for u in range(8)}  # the user column reached the reward function
    assert sampled and all(n == 2 for n, _ in sampled)  # 8 completions per step = 2 prompts x 4, each prompt once
    # sampled as `rlrf generate` samples (the generate: section), except what trainer_args sets
    params = sampled[0][1]
    assert (params.temperature, params.max_new_tokens) == (1.0, 24)
    assert (params.top_p, params.top_k) == (cfg.generate.top_p, cfg.generate.top_k) == (0.95, 50)


def test_shared_prompts_give_trl_log_probs_entropies_and_gradients(tmp_path, tiny_model_dir, tiny_tokenizer):
    """The group's prompt computed once (KV cache shared by its completions) = trl's per-row pass:
    same per-token log-probs and entropies, same LoRA gradients, with left-padded prompts of
    different lengths and right-padded completions."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM
    from trl import GRPOConfig

    from rlrf.alignment.online_trainer import SharedPromptGRPOTrainer

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    args = GRPOConfig(output_dir=str(tmp_path), per_device_train_batch_size=8, num_generations=4, use_cpu=True,
                      report_to=[], temperature=0.7, max_completion_length=8, activation_checkpointing=False,
                      bf16=False)
    trainer = SharedPromptGRPOTrainer(
        model=model, reward_funcs=lambda completions, **_: [0.0] * len(completions), args=args,
        processing_class=tiny_tokenizer, train_dataset=Dataset.from_list([{"prompt": "a b"}]),
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False))
    g = torch.Generator().manual_seed(1)
    pad = tiny_tokenizer.pad_token_id
    prompts = [torch.randint(5, 60, (n,), generator=g) for n in (7, 4)]  # two groups, different lengths
    rows, masks = [], []
    for p in prompts:
        for k in range(4):
            c = torch.randint(5, 60, (6,), generator=g)
            c_mask = torch.tensor([1] * (6 - k) + [0] * k)
            ids = torch.cat([torch.full((7 - len(p),), pad), p, c.masked_fill(c_mask == 0, pad)])
            rows.append(ids)
            masks.append(torch.cat([torch.zeros(7 - len(p), dtype=torch.long), torch.ones(len(p), dtype=torch.long), c_mask]))
    order = torch.randperm(8, generator=g)  # trl shuffles a generation batch: groups need not be contiguous
    input_ids, attention_mask = torch.stack(rows)[order], torch.stack(masks)[order]
    completion_mask = attention_mask[:, 7:].float()

    def run(shared):
        trainer.shared_prompts = shared
        trainer.model.zero_grad()
        logps, entropy, _ = trainer._get_per_token_logps_and_entropies(
            trainer.model, input_ids, attention_mask, 6, compute_entropy=True)
        ((logps * completion_mask).sum() + (entropy * completion_mask).sum()).backward()
        grads = {n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
        return logps.detach() * completion_mask, entropy.detach() * completion_mask, grads

    chunks = []
    real_chunk = trainer._shared_prompt_chunk
    trainer._shared_prompt_chunk = lambda *a: chunks.append(a) or real_chunk(*a)
    full, shared = run(False), run(True)
    assert len(chunks) == 1  # the shared path ran (one chunk: 8 rows, 2 distinct prompts)
    assert torch.allclose(shared[0], full[0], atol=1e-5) and torch.allclose(shared[1], full[1], atol=1e-5)
    assert full[2] and all(torch.allclose(shared[2][n], full[2][n], atol=1e-5, rtol=1e-4) for n in full[2])
    assert any(full[2][n].abs().sum() > 0 for n in full[2])
