"""configs/rlrf4rec_paper.yaml: the RLRF4Rec paper's protocol (docs/methods.md "The paper's protocol")
resolves to the paper's settings, and its prompt carries the paper's scenario factors."""

from __future__ import annotations

from rlrf.core.config import load_config
from rlrf.generation.generate import make_prompts

PAPER_FACTORS = "genre, director, actors, time period, country, character, plot/theme, mood/tone, critical acclaim/award"


def test_the_paper_config_resolves_to_the_papers_settings():
    cfg = load_config("rlrf4rec_paper")
    assert cfg.data.lists.source == "kar"  # rating-labelled lists
    assert cfg.data.positive_rating == 4
    assert cfg.score.metric == "ndcg@5"  # per-user NDCG@5; ties are always skipped
    assert cfg.score.min_margin == 0.0
    assert cfg.score.negatives == 1  # best vs worst
    assert cfg.score.copy_penalty == 0.0
    assert cfg.align.method == "dpo" and cfg.align.loss == "dpo"
    assert cfg.align.beta == 0.01
    assert cfg.align.reference == "base"
    assert cfg.align.sft_weight == 0.0 and cfg.align.length_alpha == 0.0
    assert cfg.loop.iterations == 3
    assert cfg.generate.n == 4
    assert cfg.generate.templates == {"user_preference": "user_preference_paper"}
    trainer = cfg.align.trainer_args
    assert (trainer["learning_rate"], trainer["per_device_train_batch_size"], trainer["gradient_accumulation_steps"],
            trainer["num_train_epochs"]) == (5e-5, 2, 8, 3)
    assert (cfg.reward.batch_size, cfg.reward.learning_rate, cfg.reward.epochs) == (64, 1e-3, 50)


def test_the_paper_prompt_asks_for_the_papers_factors_over_the_rated_history(tiny_tokenizer, ml100k_small):
    cfg = load_config("rlrf4rec_paper")
    user = next(u for u, record in ml100k_small.users.items() if record.profile and len(record.items) >= 3)
    (prompt,) = make_prompts(cfg.generate, ml100k_small, tiny_tokenizer, "user_preference", users=[user])
    system, rest = prompt.text.split("<|im_end|>", 1)
    assert "summarizing and extracting user preferences" in system and "Please think step by step." in system
    assert f"consider factors like {PAPER_FACTORS})" in rest
    assert "Provide clear explanations based on details from the user's viewing history" in rest
    profile = ml100k_small.users[user].profile
    assert all(f"{key}: {value}" in rest for key, value in profile.items())  # "Given a user who is ..."
    assert " stars;" in rest  # each watched film with the user's rating, as in the paper's example
    assert "movie viewing history over time" in rest
