"""`rlrf export merged`: the aligned policy as one plain Hugging Face model directory.

An aligned policy is the base model plus a LoRA adapter, which only peft can put together. Folding
the adapter into the weights (peft's `merge_and_unload`) gives an ordinary model that
`AutoModelForCausalLM.from_pretrained`, vLLM or any other engine loads with no peft and no rlrf;
the tokenizer is saved beside it unchanged. Weights are merged and saved in float32, so the merged
model computes what base + adapter computes (up to float rounding).
"""

from __future__ import annotations

from pathlib import Path

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_directory
from rlrf.core.layout import RunLayout


def export_merged(llm, adapter: Path, out_dir: Path) -> Path:
    """Write the policy `llm` names (an `LLMConfig`: its model and cache_dir) with `adapter` merged
    into `out_dir` as a plain HF model directory; returns `out_dir`.

    The folder is written under a temporary name and renamed, so a failure leaves nothing half
    written; an existing folder is replaced only when it already holds a model (config.json).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from rlrf.generation.policy import attach_adapter, resolve_model_source

    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or (any(out_dir.iterdir()) and not (out_dir / "config.json").is_file())):
        raise UserError(f"--out {out_dir}: exists and is not a model directory; name a new folder")
    source = resolve_model_source(llm.model, getattr(llm, "cache_dir", None))
    try:
        base = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(source)
    except OSError as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"llm.model: cannot load {source}: {first[:200]}") from None
    merged = attach_adapter(base, adapter, merge=True)
    with atomic_directory(out_dir) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir


def run_export_merged(cfg, iteration: int, out_dir: Path | None = None) -> Path:
    """The CLI's adapter: iteration t's aligned policy of the run, into `out_dir` (default
    `<run_dir>/export/merged/iter_<t>`)."""
    from rlrf.generation.knowledge import policy_adapter, policy_tag

    if iteration < 0:
        raise UserError(f"--iteration must be >= 0 (got {iteration})")
    layout = RunLayout(cfg.run_dir)
    adapter = policy_adapter(layout.root, iteration)  # one-line error when iter_<t> has no complete adapter
    return export_merged(cfg.llm, adapter, out_dir if out_dir is not None else layout.merged_policy(policy_tag(iteration)))
