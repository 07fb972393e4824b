"""The sections of the reward model and of scoring responses into preference pairs (rlrf/reward/)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from rlrf.core.config.section import Section


class RewardConfig(Section):
    """The knowledge-augmented reranker used as reward model (recmodels/)."""

    model: Literal["dlcm", "prm"] = "dlcm"
    """The reranker kind the scoring stage loads."""
    k: int = Field(5, ge=1)
    """The K of NDCG@K / MAP@K in the reward models' training and evaluation."""
    knowledge: bool = True
    """The scoring stage uses the +knowledge model (false: the base model)."""
    user_knowledge: str = "self"
    """self = text from the visible history; or a responses-style JSONL path."""
    item_knowledge: str = "self"
    """self = the item's own text; or a JSONL of {"item", "text"}."""
    models: list[Literal["dlcm", "prm"]] = ["dlcm", "prm"]
    """The kinds `rlrf reward train|eval` trains and evaluates (base and +knowledge each)."""
    embed_dim: int = Field(32, ge=1)
    """Item id and genre embedding size (each)."""
    hidden: int = Field(64, ge=1)
    """DLCM GRU size; PRM d_model."""
    heads: int = Field(2, ge=1)
    """PRM attention heads."""
    layers: int = Field(1, ge=1)
    """PRM encoder layers."""
    adapter_out: int = Field(32, ge=1)
    """Hybrid-expert adapter output per tower."""
    adapter_hidden: int = Field(64, ge=1)
    """Hybrid-expert adapter hidden size."""
    shared_experts: int = Field(2, ge=0)
    """Experts shared by the user and item towers."""
    specific_experts: int = Field(2, ge=0)
    """Experts per tower (user, item)."""
    dropout: float = Field(0.1, ge=0, lt=1)
    """Dropout in the reranker."""
    knowledge_dropout: float = Field(0.1, ge=0, lt=1)
    """Train-time: a user's summary replaced by "missing" with this probability."""
    knowledge_history: bool = True
    """+knowledge models see the history too; false = the user is known only by the summary (ablation)."""
    item_prior: bool = False
    """TRAIN users' positive-rating share and log count per item: features and a wide logit path."""
    train_summaries: Literal["self", "pool"] = "self"
    """The +knowledge model's training summaries: self = history text; pool = resampled each epoch from pool_weights' kinds (docs/reward.md "A reward that reads the summary")."""
    pool_weights: list[float] = Field([0.4, 0.4, 0.2], min_length=3, max_length=3)
    """pool: the chances of a history text, a future text and an empty text."""
    pool_size: int = Field(4, ge=1)
    """pool: future texts per training list (TRAIN users' own future only)."""
    pool_noise: float = Field(0.2, ge=0, le=1)
    """pool: each title of a future text is swapped for a random item with this probability."""
    summary_match: bool = False
    """A summary x item-text match term added straight to the score."""
    match_scale: float = Field(1.0, gt=0)
    """Initial weight of that term's cosine (learnt from there)."""
    history_dropout: float = Field(0.0, ge=0, lt=1)
    """Train-time: a list's history hidden with this probability."""
    train_cuts: int = Field(1, ge=1)
    """Lists per TRAIN user at several history cuts (training only; self text; sasrec lists reuse <run_dir>/sasrec)."""
    epochs: int = Field(40, ge=1)
    """Most training epochs."""
    batch_size: int = Field(64, ge=1)
    """Lists per training batch."""
    learning_rate: float = Field(2e-3, gt=0)
    """Adam learning rate."""
    weight_decay: float = Field(1e-4, ge=0)
    """Adam weight decay."""
    patience: int = Field(10, ge=1)
    """Epochs without a better VALID map@5 before stopping: +knowledge models sit near 0.45 for up to 7 epochs before the summary term takes hold (docs/reward.md)."""
    seeds: int = Field(1, ge=1)
    """Default for --seeds: reward models trained with seed, seed + 1, ..."""


class ScoreConfig(Section):
    """Judging responses with the reward model and building preference pairs (rlrf/reward/score.py)."""

    metric: str = Field("ndcg@5", pattern=r"^((ndcg|map)@[1357]|margin)$")
    """The reward: ndcg@K or map@K (K in 1, 3, 5, 7) of the reranked list, or margin (mean positive - negative reranker score)."""
    min_margin: float = Field(0.0, ge=0)
    """Skip users whose best - worst reward is below this (ties are always skipped)."""
    negatives: int = Field(1, ge=1)
    """Rejected responses per pair (more than 1 for sdpo / dmpo)."""
    batch_size: int = Field(256, ge=1)
    """(user, response) pairs scored per forward pass."""
    copy_penalty: float = Field(0.0, ge=0)
    """Pairs rank by reward - this x the share of the summary's word 5-grams copied from its prompt (rlrf/evaluation/copying.py)."""
    prefer_finished_within: float | None = Field(None, ge=0)
    """null = off. Chosen = the best summary that ended with EOS among those whose pair reward (after
    copy_penalty) is within this of the best; else the best. The reward does not see a summary run
    into generate.max_new_tokens, and the aligned policy ended on its own less often than policy_0;
    near-equal rewards then decide for a summary that stops (docs/results.md, levers for summaries
    that finish). 0 = exact ties only."""
    reject_looping_within: float | None = Field(None, ge=0)
    """null = off. Rejected = the worst summary that was cut at generate.max_new_tokens and repeats
    itself (rlrf/evaluation/text.py) among those whose pair reward is within this of the worst; else
    the worst. It stays below the chosen one; with negatives > 1 it leads the rejected list."""
    trim_to_sentence: bool = False
    """true = a training summary cut at generate.max_new_tokens is scored and trained as its text up
    to its last closed sentence, ending with EOS (rlrf/reward/score.py). Untrimmed, cut summaries
    enter pairs without EOS while short ones that stopped are often rejected: the pairs teach the
    policy not to stop (docs/results.md, levers for summaries that finish). Evaluations never trim."""
