"""The LoRA adapter every training step continues, and the one skeleton every training step runs.

There is ONE LoRA adapter over a whole run, relative to the base model: each step (SFT or DPO) loads
the previous adapter trainable and continues it, or starts a fresh one from the `lora:` section.
So every saved adapter loads on the plain base model, with no chain of merged weights.

`train_adapter` is the part SFT and DPO share: skip when the adapter is complete, train in a work
folder that a killed run resumes from (its last trainer checkpoint, when `save_strategy` keeps
any), write the adapter to a temporary folder and rename it into place with its log beside it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlrf.core.errors import UserError
from rlrf.core.io import atomic_directory, atomic_write_json, read_json
from rlrf.core.layout import ADAPTER_FILES, RunLayout, adapter_complete, tensorboard_dir
from rlrf.core.memory import releases_memory

if TYPE_CHECKING:
    from rlrf.core.config import LLMConfig, LoraAdapterConfig


def previous_adapter(llm_adapter: Path | str | None, layout: RunLayout, iteration: int) -> Path | None:
    """The adapter of the policy before iteration t of the run at `layout`, as a command run on its own
    finds it (`rlrf align`; a recipe passes its own): `llm.adapter`, else iteration t−1's adapter."""
    if llm_adapter is not None:
        return Path(llm_adapter)
    if iteration > 0:
        candidate = layout.adapter(iteration - 1)
        if adapter_complete(candidate):
            return candidate
    return None


def lora_config(lora: LoraAdapterConfig):
    """peft's LoraConfig from the `lora:` section (extra keys pass through; peft checks them)."""
    from peft import LoraConfig

    try:
        return LoraConfig(task_type="CAUSAL_LM", **lora.model_dump())
    except (TypeError, ValueError) as err:
        raise UserError(f"lora: {err}") from None


def training_dtype(llm_cfg) -> str:
    """The `llm.dtype` training loads the policy with.

    Fast path (rlrf/alignment/fast.py, default): float32 on CPU, whatever `llm.dtype` says; under
    ``llm.dtype: bfloat16`` (:func:`rlrf.core.precision.mixed_bf16_training`) the trainer then stores
    the frozen linear weights in bf16 and runs the decoder under bf16 autocast (:func:`train_in_mixed_bf16`).

    ``RLRF_FAST_TRAIN=0`` (the path before): `auto` stays float32 on CPU and an explicit type is kept
    (``llm.dtype: bfloat16`` trains bf16 weights under autocast). Why not bf16 weights under `auto`:
    measured with bench/train.py (SmolLM2-135M, LoRA r 8, lr 2e-4, batch 2), that makes a DPO step
    ~1.7x faster, but the DPO loss does not track float32 (4 steps: 0.670 0.631 0.555 0.471 vs 0.693
    0.411 0.262 0.184): the first loss is off log 2 (the reference pass ran without autocast, the
    policy with it) and the bf16 residual stream rounds small LoRA updates away.
    """
    from rlrf.alignment.fast import fast_training
    from rlrf.generation.policy import resolve_device

    on_cpu = resolve_device(llm_cfg.device).type == "cpu"
    if fast_training() and on_cpu:
        return "float32"
    if llm_cfg.dtype != "auto":
        return llm_cfg.dtype
    return "float32" if on_cpu else "auto"


def train_in_mixed_bf16(llm_cfg) -> bool:
    """Whether the fast path trains this policy in mixed bf16 (see :func:`training_dtype`)."""
    from rlrf.alignment.fast import fast_training
    from rlrf.core.precision import mixed_bf16_training
    from rlrf.generation.policy import resolve_device

    return fast_training() and mixed_bf16_training(llm_cfg.dtype, resolve_device(llm_cfg.device))


def trainable_policy(llm: LLMConfig, lora: LoraAdapterConfig, policy, start_adapter: Path | None):
    """(model, tokenizer, peft_config): a trainable PeftModel continuing `start_adapter`, or a base
    model `llm` + a fresh LoraConfig (the `lora:` section) for trl to wrap."""
    from peft import PeftModel

    from rlrf.generation.policy import attach_adapter, load_policy

    if policy is None:
        policy = load_policy(llm.model_copy(update={"adapter": None, "dtype": training_dtype(llm)}),
                             merge_adapter=False)
    elif policy.adapter is not None and not isinstance(policy.model, PeftModel):
        raise ValueError("training needs a policy loaded with merge_adapter=False (its adapter is merged)")
    model, tokenizer = policy.model, policy.tokenizer
    if isinstance(model, PeftModel):
        if start_adapter is None or Path(policy.adapter).resolve() != Path(start_adapter).resolve():
            raise ValueError(f"the policy carries adapter {policy.adapter}, but this step starts from {start_adapter}")
    elif start_adapter is not None:
        model = attach_adapter(model, start_adapter, merge=False)
    if isinstance(model, PeftModel):
        # continue training the SAME adapter: trainable "default" (DPO: trl adds the frozen "ref" copy)
        model.peft_config["default"].inference_mode = False
        for name, param in model.named_parameters():
            param.requires_grad_("lora_" in name and ".default" in name)
        return model, tokenizer, None
    return model, tokenizer, lora_config(lora)


def trainer_args(config_cls, section: str, args: dict[str, Any], *, seed: int, fixed: dict[str, Any],
                 defaults: dict[str, Any]):
    """trl's config object from the section's `trainer_args`, checked by trl itself.

    `defaults` (derived from the model: device, dtype, progress) yield to the user's entries;
    `fixed` are the fields rlrf's own data flow depends on, and setting one is an error."""
    taken = sorted(set(args) & set(fixed))
    if taken:
        raise UserError(f"{section}.trainer_args.{taken[0]}: set by rlrf itself; remove it")
    merged = {"seed": seed, "data_seed": seed, **defaults, **args, **fixed}
    try:
        return config_cls(**merged)
    except TypeError as err:  # an unknown field: trl's dataclass names it
        raise UserError(f"{section}.trainer_args: {err}".replace("__init__() ", "")) from None
    except ValueError as err:
        raise UserError(f"{section}.trainer_args: {str(err).splitlines()[0]}") from None


def save_adapter(peft_model, adapter_dir: Path, before_rename: Callable[[], None] | None = None,
                 base_model: str | None = None) -> None:
    """Write the trainable "default" LoRA to a temporary folder and rename it into place, so a
    complete `adapter_dir` (what makes a step skip on rerun) is never half-written.

    `base_model` (a hub id) replaces the machine-local path peft records as the adapter's base, so
    the adapter loads elsewhere with stock peft; the local path is kept in `rlrf_base.json`."""
    with atomic_directory(adapter_dir, tag=f"-{os.getpid()}") as tmp:
        peft_model.save_pretrained(str(tmp), selected_adapters=["default"])
        if not adapter_complete(tmp):
            raise RuntimeError(f"peft did not write {', '.join(ADAPTER_FILES)} into {tmp}")
        if base_model is not None:
            config = read_json(tmp / "adapter_config.json")
            local = config.get("base_model_name_or_path")
            config["base_model_name_or_path"] = base_model
            atomic_write_json(tmp / "adapter_config.json", config)
            atomic_write_json(tmp / "rlrf_base.json", {"base_model": base_model, "local_path": local})
        if before_rename is not None:
            before_rename()


@contextlib.contextmanager
def _tensorboard_into(folder: Path) -> Iterator[None]:
    """transformers' TensorBoard callback writes under the (temporary) output_dir unless
    TENSORBOARD_LOGGING_DIR names a folder; point it beside the adapter, where it is kept."""
    before = os.environ.get("TENSORBOARD_LOGGING_DIR")
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("TENSORBOARD_LOGGING_DIR", None)
        else:
            os.environ["TENSORBOARD_LOGGING_DIR"] = before


@releases_memory  # the trainer's reference cycles and glibc's retained peak (rlrf/core/memory.py)
def train_adapter(adapter_dir: Path, log_path: Path, build: Callable[[Path], Any],
                  summarize: Callable[[Any, Any, list], dict], record: dict | None = None,
                  base_model: str | None = None) -> dict:
    """Run one training step to a complete adapter; returns the log's summary (+ "skipped").

    `build(work_dir)` returns a ready trl trainer; `summarize(trainer, result, steps)` its summary.
    `record` is stored in the log beside the summary (e.g. the config the step ran with);
    `base_model` is the portable name the adapter records as its base (see `save_adapter`)."""
    from transformers.trainer_utils import get_last_checkpoint

    from rlrf.core.train_log import follow_in_lines

    adapter_dir = Path(adapter_dir)
    if adapter_complete(adapter_dir):
        return {**(read_json(log_path) or {}).get("summary", {"adapter": str(adapter_dir)}), "skipped": True}
    for leftover in adapter_dir.parent.glob(f".{adapter_dir.name}.tmp-*"):  # from a killed run
        shutil.rmtree(leftover, ignore_errors=True)
    started = time.perf_counter()
    work_dir = adapter_dir.parent / f".{adapter_dir.name}.work"
    with _tensorboard_into(tensorboard_dir(adapter_dir)):  # trl's callback reads it when the trainer is made
        trainer = build(work_dir)
    follow_in_lines(trainer, show_progress=not trainer.args.disable_tqdm)  # a line per logging step, no bar or raw dicts
    checkpoint = get_last_checkpoint(str(work_dir)) if work_dir.is_dir() else None
    result = trainer.train(resume_from_checkpoint=checkpoint)
    history = [dict(entry) for entry in trainer.state.log_history]
    summary = summarize(trainer, result, [e for e in history if "loss" in e])
    summary.update({"adapter": str(adapter_dir), "resumed_from": checkpoint,
                    "seconds": round(time.perf_counter() - started, 1)})
    if trainer.is_world_process_zero():  # under DDP the processes hold the same adapter: one writes it
        save_adapter(trainer.model, adapter_dir, before_rename=lambda: atomic_write_json(
            log_path, {"summary": summary, **(record or {}), "steps": history}), base_model=base_model)
        shutil.rmtree(work_dir, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return {**summary, "skipped": False}
