"""Supervised fine-tuning of the policy on prompt/completion records (trl SFTTrainer + the run's LoRA).

SPRec's first stage, and the positive half of each of its iterations: the loss is on the completion
only (the real next item's title), and the same LoRA adapter is continued, so SFT and DPO steps
alternate on one adapter. Settings come from the `sft:` section (`sft.trainer_args` passes any trl
SFTConfig field through).

The fast path (rlrf/alignment/fast_sft.py; ``RLRF_FAST_TRAIN=0`` turns it off) keeps trl's SFTTrainer
(data processing, collator, loop) and replaces its loss and backward (`fast_sft_trainer`): trl's forward
runs the LM head, a log-softmax, the entropy and the top-1 accuracy over the whole vocabulary at every
position of every padded row, prompt included, though the loss reads only the answer's few tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlrf.alignment.adapters import train_adapter, train_in_mixed_bf16, trainable_policy, trainer_args
from rlrf.alignment.fast import fast_training
from rlrf.alignment.fast_sft import fast_sft_trainer
from rlrf.core.errors import UserError
from rlrf.core.precision import training_precision
from rlrf.core.threads import use_threads
from rlrf.generation.policy import portable_model_id

if TYPE_CHECKING:
    from rlrf.core.config import LLMConfig, LoraAdapterConfig, SupervisedConfig


def train_sft(records: list[dict], adapter_dir: Path, log_path: Path, *, sft: SupervisedConfig, llm: LLMConfig,
              lora: LoraAdapterConfig, seed: int, start_adapter: Path | None, show_progress: bool = True) -> dict:
    """Train on `records` ({"prompt", "completion"}) continuing `start_adapter` (None: a fresh LoRA of
    the `lora:` section on the base model `llm`) with the `sft:` section's trainer_args and `seed`;
    writes `adapter_dir` atomically and `log_path`; skips when the adapter is complete. A recipe
    that steers one setting (one epoch) hands a copy of the section."""

    def build(work_dir: Path):
        from datasets import Dataset
        from trl import SFTConfig, SFTTrainer

        if not records:
            raise UserError(f"{adapter_dir}: no SFT examples (no train user with two or more items)")
        model, tokenizer, peft_config = trainable_policy(llm, lora, None, start_adapter)
        param = next(model.parameters())
        args = trainer_args(SFTConfig, "sft", sft.trainer_args, seed=seed, defaults={
            **training_precision(model), "use_cpu": param.device.type == "cpu",  # bf16 autocast over bf16 weights
            "dataloader_num_workers": 0, "disable_tqdm": not show_progress,
        }, fixed={"output_dir": str(work_dir)})
        trainer_cls = fast_sft_trainer(SFTTrainer, train_in_mixed_bf16(llm)) if fast_training() else SFTTrainer
        return trainer_cls(model=model, args=args, processing_class=tokenizer, peft_config=peft_config,
                           train_dataset=Dataset.from_list(records))

    def summarize(trainer, result, steps: list[dict]) -> dict:
        return {
            "examples": len(records), "steps": int(result.global_step),
            "first_loss": steps[0]["loss"] if steps else None, "last_loss": steps[-1]["loss"] if steps else None,
            "start_adapter": str(start_adapter) if start_adapter else None,
        }

    return train_adapter(adapter_dir, log_path, build, summarize, base_model=portable_model_id(llm.model))


def run_sft(cfg, records: list[dict], start_adapter: Path | None, adapter_dir: Path, log_path: Path,
            show_progress: bool = True) -> dict:
    """`train_sft` under a whole run config (a script's adapter: the run's threads, sections and seed)."""
    use_threads(cfg)
    return train_sft(records, adapter_dir, log_path, sft=cfg.sft, llm=cfg.llm, lora=cfg.lora, seed=cfg.seed,
                     start_adapter=start_adapter, show_progress=show_progress)
