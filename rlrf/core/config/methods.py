"""The sections of the recipes (rlrf/methods/): the outer loop every method shares, SPRec's
next-item self-play and `rlrf rank`'s candidate ranking."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlrf.core.config.section import Section


class LoopConfig(Section):
    """The outer loop shared by every method (rlrf/methods/loop.py)."""

    iterations: int = Field(2, ge=1)
    """Rounds of generate -> score -> align."""
    eval_users: int | None = Field(None, ge=1)
    """Test users evaluated before the first and after every iteration; null = all."""
    independent_evaluator: bool = True
    """RLRF4Rec: also score each policy's greedy summaries with a reranker the loop never optimises (the other kind of reward.model, the next seed), to tell a real gain from reward hacking."""


class SPRecConfig(Section):
    """Self-play next-item generation (`rlrf sprec`, rlrf/methods/sprec/). Prompts show the user's last
    `data.lists.max_history` items before the target; the answer is one "Title (year)"."""

    users_per_iteration: int = Field(256, ge=1)
    """Train users sampled afresh each iteration: positives, predictions, pairs (every arm: one pair each)."""
    samples: int = Field(4, ge=1)
    """Self-play fallback: titles sampled (at fallback_temperature) for a user whose greedy guess is the target or empty."""
    fallback_temperature: float = Field(0.8, gt=0)
    """Sampling temperature of the self-play fallback."""
    methods: list[Literal["sprec", "dpo_random", "dpo_popularity"]] = Field(["sprec", "dpo_random", "dpo_popularity"], min_length=1)
    """The arms run side by side: self-play, DPO with random negatives, DPO with popular negatives."""
    sft_windows: int = Field(8, ge=1)
    """Sliding-window SFT examples per train user: (history -> item) at its last N positions."""
    sft_max_examples: int | None = Field(4096, ge=1)
    """Cap on the initial SFT's examples (a seeded sample); null = all."""
    sft_until_better: bool = False
    """SPRec's "SFT until validation HR beats the base model": the initial SFT one epoch at a time, stopping at the first epoch whose HR@sft_valid_k on VALID users is strictly above the base policy's, or at sft_max_epochs; false: one SFT run of sft.trainer_args.num_train_epochs."""
    sft_max_epochs: int = Field(5, ge=1)
    """The cap of sft_until_better."""
    sft_valid_users: int | None = Field(200, ge=1)
    """The first N valid users with two or more items (null = all); never test users."""
    sft_valid_k: int | None = Field(None, ge=1)
    """The K of the stopping rule's HR@K; null = max(ks)."""
    min_similarity: float = Field(0.5, ge=-1, le=1)
    """Nearest-title grounding below this cosine is "ungrounded"."""
    topk: Literal["nearest", "samples"] = "nearest"
    """Top-K = the K items nearest the greedy title, or K sampled titles grounded."""
    eval_samples: int = Field(10, ge=1)
    """topk=samples: titles sampled per evaluated user."""
    eval_splits: list[Literal["valid", "test"]] = Field(["valid", "test"], min_length=1)
    """Users evaluated on their last item."""
    eval_protocol: Literal["sprec", "rlrf"] = "sprec"
    """sprec: SPRec's own evaluation (no history masking, embedding order only, MGU's history = the shown items); rlrf: history masked (exclude_history), the matched title first, MGU's history = every item before the target."""
    exclude_history: bool = True
    """eval_protocol rlrf: never recommend an item the user already has."""
    ks: list[int] = Field([1, 5, 10], min_length=1)
    """Cut-offs of the evaluation metrics."""
    evaluate_base: bool = True
    """Also evaluate the policy before SFT (a reference row)."""
    references: list[Literal["popularity", "sasrec"]] = ["popularity", "sasrec"]
    """Conventional recommenders scored beside the policies on the same users and protocol: train-only popularity, and a RecBole SASRec (the `sasrec:` section) trained on everything but held-out users' last items."""
    seeds: list[int] | None = None
    """Training seeds (one SFT + arms each under seed_<s>/, data split fixed by `seed`); null = `seed` alone."""
    bootstrap: int = Field(1000, ge=100)
    """Resamples of the CIs against SFT (bootstrap, or half-samples for DivRatio and ORRatio)."""

    @model_validator(mode="after")
    def _positive_ks(self) -> "SPRecConfig":
        if min(self.ks) < 1:
            raise ValueError(f"sprec.ks must be positive cut-offs (got {self.ks})")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"sprec.seeds must be distinct (got {self.seeds})")
        return self


class RankConfig(Section):
    """`rlrf rank`: candidate ranking (LLaRA / S-DPO protocol), preference arms from one SFT adapter."""

    arms: list[Literal["sft", "dpo", "sdpo", "dmpo", "dmpo_pairwise", "rosepo_self", "rosepo_popularity",
                       "rosepo_hallucination", "trl"]] = Field(
        ["sft", "dpo", "sdpo", "dmpo", "dmpo_pairwise", "rosepo_self", "rosepo_popularity", "rosepo_hallucination",
         "trl"], min_length=1)
    """The arms trained from the one SFT adapter (sft always runs first: every CI's reference)."""
    candidates: int = Field(20, ge=2)
    """Candidates per prompt: the target and (n - 1) items the user never interacted with."""
    max_history: int = Field(10, ge=1)
    """Items shown, oldest first."""
    windows: int = Field(4, ge=1)
    """Training examples per train user: its last N positions."""
    sft_examples: int | None = Field(1024, ge=1)
    """A seeded sample of the windows for SFT (None = all)."""
    pair_examples: int | None = Field(256, ge=1)
    """The preference arms' examples (a seeded sample of the windows; None = all)."""
    steps: int = Field(64, ge=1)
    """Optimisation steps of every preference arm (align.trainer_args.max_steps)."""
    negatives: int = Field(3, ge=1)
    """S-DPO / DMPO: negatives per example, drawn from the candidates."""
    trl_loss: str = "ipo"
    """The `trl` arm: a trl DPOTrainer loss_type on DPO's pairs."""
    oracle_temperature: float = Field(1.0, gt=0)
    """RosePO: eps = sigma((s_rejected - s_chosen) / T) from the user's SASRec scores."""
    eps_cap: float = Field(0.4, gt=0, lt=0.5)
    """RosePO: eps is capped below 0.5."""
    eval_splits: list[Literal["valid", "test"]] = Field(["valid", "test"], min_length=1)
    """Held-out users evaluated on their last item."""
    eval_users: int | None = Field(None, ge=1)
    """The first N held-out users (None = all)."""
    seeds: list[int] | None = None
    """Training seeds (one SFT + every arm each, under seed_<s>/); None = `seed` alone."""
    bootstrap: int = Field(1000, ge=100)
    """Resamples of the paired bootstrap CIs against SFT."""
