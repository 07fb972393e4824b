"""Typed run configuration, loaded from YAML.

Every section is a pydantic model with `extra="forbid"`, so a typo in a YAML key is an error that
names the key and the file instead of a silently ignored setting. Each field's docstring is its
documentation (`rlrf config show --explain` prints them). Each stage reads only its own section;
defaults are sized for the 2-core CPU quickstart. The mappings handed to trl and peft
(`*.trainer_args`, `lora`) are checked against those libraries' own config classes at load time,
imported only when a key outside rlrf's defaults needs them.

One module per concern: `section` (the base class, library-field checks), the sections grouped by
the package that reads them (`data`, `generation`, `reward`, `alignment`, `methods`), `run` (the
root `RunConfig`), `loading` (YAML, overrides, load and save) and `explaining` (each key's meaning).
Callers import from here.
"""

from rlrf.core.config.alignment import (
    DPO_TRAINER_DEFAULTS,
    ONLINE_TRAINER_DEFAULTS,
    SFT_TRAINER_DEFAULTS,
    AlignConfig,
    LoraAdapterConfig,
    OnlineConfig,
    SupervisedConfig,
)
from rlrf.core.config.data import DataConfig, EncoderConfig, FieldsConfig, ListsConfig, SASRecConfig, SplitConfig
from rlrf.core.config.explaining import explain
from rlrf.core.config.generation import GenerateConfig, LLMConfig
from rlrf.core.config.loading import load_config, read_yaml, resolve_config_path, save_config, write_yaml
from rlrf.core.config.methods import LoopConfig, RankConfig, SPRecConfig
from rlrf.core.config.reward import RewardConfig, ScoreConfig
from rlrf.core.config.run import RunConfig
from rlrf.core.config.section import Section, dataclass_fields, did_you_mean

__all__ = [
    "AlignConfig", "DataConfig", "DPO_TRAINER_DEFAULTS", "EncoderConfig", "FieldsConfig", "GenerateConfig",
    "LLMConfig", "ListsConfig", "LoopConfig", "LoraAdapterConfig", "ONLINE_TRAINER_DEFAULTS", "OnlineConfig",
    "RankConfig", "RewardConfig", "RunConfig", "SASRecConfig", "SFT_TRAINER_DEFAULTS", "SPRecConfig", "ScoreConfig",
    "Section", "SplitConfig", "SupervisedConfig", "dataclass_fields", "did_you_mean", "explain", "load_config",
    "read_yaml", "resolve_config_path", "save_config", "write_yaml",
]
