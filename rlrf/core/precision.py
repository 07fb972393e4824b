"""Which float type the policy runs in, for generation and for training.

``llm.dtype: auto`` picks bfloat16 where the hardware multiplies it natively and float32 elsewhere:

* CUDA: bf16 when the GPU supports it (Ampere and later), else float32;
* CPU: bf16 when the CPU has AVX-512 BF16 or AMX (faster decoding on the 2-core EPYC with
  AVX-512 BF16, figures in bench/README.md), else float32 — without those instructions bf16
  matmuls are emulated and slower than float32.

``float32`` / ``bfloat16`` / ``float16`` force a type. The probe is :func:`cpu_supports_bf16`
(tests monkeypatch it); ``RLRF_CPU_BF16=0`` in the environment makes `auto` mean float32 on any
CPU (the test suite sets it, so its exact-equality tests see float32 on every machine).

Training: the fast path (rlrf/alignment/fast.py, the default; ``RLRF_FAST_TRAIN=0`` turns it off)
trains float32 on CPU under `auto`; ``llm.dtype: bfloat16`` opts in to mixed bf16
(:func:`mixed_bf16_training`: float32 weights loaded, frozen linear weights then stored in bf16, bf16
autocast over the decoder's matmuls, float32 residual stream, LoRA updates, LM head and log-softmax),
~1.7x faster but its DPO losses drift from float32's by up to ~0.03 in 8 steps. Without the fast path,
`auto` trains in float32 on CPU (:func:`rlrf.alignment.adapters.training_dtype`: bf16 weights +
autocast did not track) and ``llm.dtype: bfloat16`` opts in to that, with
:func:`training_precision` giving the ``TrainingArguments`` switches for the loaded weights (bf16
autocast over bf16 weights; peft keeps the LoRA parameters in float32).
"""

from __future__ import annotations

import functools
import os
from typing import Any

DTYPE_NAMES = ("auto", "float32", "bfloat16", "float16")


@functools.lru_cache(maxsize=1)
def cpu_supports_bf16() -> bool:
    """True when this CPU has native bf16 matmul instructions (AVX-512 BF16 or AMX-BF16)."""
    try:
        import torch

        probe = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
        amx = getattr(torch.cpu, "_is_amx_tile_supported", None)
        if probe is not None and (probe() or (amx is not None and amx())):
            return True
    except Exception:  # an old or unusual torch build: fall back to the kernel's CPU flags
        pass
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        pass
    return False


def resolve_dtype(name: str, device) -> Any:
    """The torch dtype for `llm.dtype` (`auto` = bf16 where native, see the module docstring)."""
    import torch

    if name == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        if device.type == "cpu":
            wanted = os.environ.get("RLRF_CPU_BF16", "1").strip().lower() not in {"0", "false", "no"}
            return torch.bfloat16 if wanted and cpu_supports_bf16() else torch.float32
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if name not in table:
        raise ValueError(f"llm.dtype: unknown dtype '{name}' ({', '.join(DTYPE_NAMES)})")
    return table[name]


def dtype_name(dtype) -> str:
    """'bfloat16' for torch.bfloat16 (what run records store)."""
    return str(dtype).replace("torch.", "")


def mixed_bf16_training(name: str, device) -> bool:
    """Whether the fast training path runs mixed bf16 for `llm.dtype` `name` on `device`: only under
    an explicit ``bfloat16`` on CPU (opt-in). `auto` trains float32 even where the CPU has native
    bf16, because mixed bf16 does not track float32 closely enough (bench/train.py, SmolLM2-135M,
    8 DPO steps: the loss is log 2 at step 1, then off float32's by 0.009 0.012 0.020 0.034 0.023
    0.030 0.030; ~1.7x the tokens/s): bf16 rounding of the activations moves each sequence's
    log-prob by ~0.2-0.3 nats, against LoRA effects of a few hundredths after one step."""
    return device.type == "cpu" and name == "bfloat16"


def training_precision(model) -> dict:
    """TrainingArguments switches (``bf16``, ``fp16``) for training `model` as loaded.

    bf16 weights → ``bf16=True`` (autocast; the trainable LoRA parameters stay float32, which peft
    does by default); fp16 weights → ``fp16=True`` on CUDA only (CPU has no fp16 grad scaler);
    float32 → neither, i.e. plain float32 training.
    """
    import torch

    # the base weights' type (a continued adapter's LoRA parameters are float32 either way)
    param = next((p for n, p in model.named_parameters() if "lora_" not in n), None)
    param = param if param is not None else next(model.parameters())
    dtype, device = param.dtype, param.device
    return {"bf16": dtype == torch.bfloat16, "fp16": dtype == torch.float16 and device.type == "cuda"}
