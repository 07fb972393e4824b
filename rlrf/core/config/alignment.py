"""The sections of training the policy: preference alignment, online RL, supervised fine-tuning and
the LoRA adapter (rlrf/alignment/). Their `trainer_args` and `lora` mappings go to trl's and peft's
own config classes, laid over rlrf's defaults, their keys checked against those classes at load."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field, field_validator, model_validator

from rlrf.core.config.section import Section, dataclass_fields, unknown_key


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


class TrainerArgsSection(Section):
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
                    raise unknown_key(key, f"trl's {names}", known)
        return value


class AlignConfig(TrainerArgsSection):
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
    # max_completion_length, temperature, top_p, top_k, repetition_penalty: the `generate:` section's, unless set here
    "beta": 0.0,  # KL to the reference (the base model); trl's GRPO default
}


class OnlineConfig(TrainerArgsSection):
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


class SupervisedConfig(TrainerArgsSection):
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
                    raise unknown_key(key, "peft's LoraConfig", known)
        return self
