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
def test_a_toy_reward_rises_on_a_tiny_policy(tmp_path, tiny_model_dir, tiny_tokenizer, method):
    """Toy reward: the share of a summary's tokens from the lower half of the vocabulary. A random
    policy scores about 0.5 with a spread inside each group, which is what it learns from."""
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
