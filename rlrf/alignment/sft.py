"""Supervised fine-tuning of the policy on prompt/completion records (trl SFTTrainer + the run's LoRA).

SPRec's first stage, and the positive half of each of its iterations: the loss is on the completion
only (the real next item's title), and the same LoRA adapter is continued, so SFT and DPO steps
alternate on one adapter. Settings come from the `sft:` section (`sft.trainer_args` passes any trl
SFTConfig field through).

The fast path (rlrf/alignment/fast.py; ``RLRF_FAST_TRAIN=0`` turns it off) keeps trl's SFTTrainer
(data processing, collator, loop) and replaces its loss only (:func:`fast_sft_trainer`): trl's forward
runs the LM head, a log-softmax, the entropy and the top-1 accuracy over the whole vocabulary at every
position of every padded row, prompt included, though the loss reads only the answer's few tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from rlrf.alignment.adapters import train_adapter, train_in_mixed_bf16, trainable_policy, trainer_args
from rlrf.alignment.fast import fast_training
from rlrf.core.errors import UserError
from rlrf.core.precision import training_precision
from rlrf.core.threads import use_threads
from rlrf.generation.policy import portable_model_id

if TYPE_CHECKING:
    from rlrf.core.config import LLMConfig, LoraAdapterConfig, SupervisedConfig


def fast_sft_trainer(trainer_cls, mixed_bf16: bool = False):
    """`trainer_cls` (trl's SFTTrainer) with the fast path's loss: each row alone, without its pads,
    the LM head (float32) at the answer's positions only; the loss is trl's (summed token NLL over
    `num_items_in_batch`, or the batch's mean). With `mixed_bf16` the frozen linear weights are
    stored in bf16 and the decoder runs under bf16 autocast. trl's entropy and token-accuracy
    metrics are not computed. Anything else (padding-free batches, several processes, return_outputs)
    runs trl's own code."""
    import torch

    from rlrf.alignment import fast

    class FastSFTTrainer(trainer_cls):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.mixed_bf16 = mixed_bf16 and self.accelerator.num_processes == 1
            if self.mixed_bf16:
                fast.store_frozen_linears_in_bf16(self._causal_lm())

        def _causal_lm(self):
            from accelerate.utils import is_peft_model

            unwrapped = self.accelerator.unwrap_model(self.model)
            return unwrapped.get_base_model() if is_peft_model(unwrapped) else unwrapped

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            plain = (not return_outputs and "attention_mask" in inputs and "labels" in inputs
                     and "position_ids" not in inputs and self.accelerator.num_processes == 1
                     and self.args.loss_type == "nll" and self.label_smoother is None
                     and self.compute_loss_func is None and not self.aux_loss_enabled)
            if not plain:
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            lm = self._causal_lm()
            backbone, head = getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()
            total = None
            for ids, mask, labels in zip(inputs["input_ids"], inputs["attention_mask"], inputs["labels"]):
                keep = mask.bool()
                ids, labels = ids[keep], labels[keep]
                scored = labels[1:] != -100  # position i predicts token i + 1
                if not scored.any():
                    continue
                with fast.autocast(self.mixed_bf16):
                    hidden = backbone(input_ids=ids[None], use_cache=False).last_hidden_state[0, :-1]
                nll = -fast.head_logps(head, hidden[scored], labels[1:][scored]).sum()
                total = nll if total is None else total + nll
            count = inputs["labels"][:, 1:].ne(-100).sum() if num_items_in_batch is None else num_items_in_batch
            if total is None:  # no answer token in the batch: a zero that still has a graph
                total = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            loss = total / torch.as_tensor(count).clamp(min=1)
            if self.args.average_tokens_across_devices and num_items_in_batch is not None:
                loss = loss * self.accelerator.num_processes
            mode = "train" if self.model.training else "eval"
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]
            return loss

    FastSFTTrainer.__name__ = FastSFTTrainer.__qualname__ = trainer_cls.__name__
    return FastSFTTrainer


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
