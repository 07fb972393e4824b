"""The root of the config: the run directory, the seed, and one section per stage, with the checks
that span sections."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from rlrf.core.config.alignment import AlignConfig, LoraAdapterConfig, OnlineConfig, SupervisedConfig
from rlrf.core.config.data import DataConfig, EncoderConfig, SASRecConfig
from rlrf.core.config.generation import GenerateConfig, LLMConfig
from rlrf.core.config.methods import LoopConfig, RankConfig, SPRecConfig
from rlrf.core.config.reward import RewardConfig, ScoreConfig
from rlrf.core.config.section import Section, dataclass_fields, unknown_key


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
                raise unknown_key(f"online.trainer_args.{unknown[0]}",
                                  f"trl's {path.partition(':')[2]}, which align.method {self.align.method} uses",
                                  dataclass_fields(path))
        return self
