"""SFT on the fast path (rlrf/alignment/fast.py): trl's SFTTrainer with its loss and backward replaced.

trl's forward runs the LM head, a log-softmax, the entropy and the top-1 accuracy over the whole
vocabulary at every position of every padded row, prompt included, though the loss reads only the
answer's few tokens. Here (measured in bench/train.py, figures in bench/README.md):

* no padding work: each row runs without its pads; rows shorter than :data:`PACK_TOKENS` together are
  packed into one sequence with per-row position ids, attention kept within each row
  (:func:`packed_sdpa`: causal SDPA per row, the same kernel and shapes as a row alone, never a dense
  block-diagonal mask, which would double attention's work at these lengths);
* the LM head (float32) at the answer's positions only;
* one backward per chunk, so that only one chunk's activations are alive at a time (peak memory:
  ~60 KB per token and layer, ~1.8 MB per token on SmolLM2-135M), with the gradients of trl's loss:
  the summed token NLL over ``num_items_in_batch`` (or the batch's answer tokens), scaled for gradient
  accumulation as ``Trainer.training_step`` scales it.

Anything else (padding-free batches from trl's collator, several processes, DeepSpeed, context
parallelism, another loss type, return_outputs) runs trl's own code.
"""

from __future__ import annotations

import contextlib
import os

from rlrf.alignment import fast

PACKED_ATTENTION = "rlrf_packed_sdpa"
PACK_ENV = "RLRF_SFT_PACK_TOKENS"
PACK_TOKENS = 512
"""Tokens per chunk (a longer row runs alone). It bounds the activations alive at once (~0.9 GB on
SmolLM2-135M) rather than buying speed: packing 1k tokens ran as fast as rows alone, the whole
8-row batch (~2.6k tokens) ~10 % faster but with more memory than all rows alive unpacked
(bench/README.md)."""


def pack_tokens_setting() -> int:
    """``RLRF_SFT_PACK_TOKENS`` (default :data:`PACK_TOKENS`); 0 restores the fast path before packing:
    each row alone and one backward of the whole batch's loss (every row's activations alive at once)."""
    return int(os.environ.get(PACK_ENV, PACK_TOKENS))


def packed_sdpa(module, query, key, value, attention_mask, dropout=0.0, scaling=None, *, cu_seq_lens_q, **kwargs):
    """transformers' SDPA attention, causal within each packed row: rows ``cu_seq_lens_q[i]`` to
    ``cu_seq_lens_q[i + 1]`` of the sequence attend only to themselves. Each row runs the kernel a row
    alone runs (same shapes), so the packed forward gives a row's numbers as it gets them alone."""
    import torch
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    kwargs = {k: v for k, v in kwargs.items() if k not in ("cu_seq_lens_k", "max_length_q", "max_length_k")}
    bounds = cu_seq_lens_q.tolist()
    outputs = [sdpa_attention_forward(module, query[:, :, start:end], key[:, :, start:end], value[:, :, start:end],
                                      None, dropout=dropout, scaling=scaling, **kwargs)[0]
               for start, end in zip(bounds[:-1], bounds[1:])]
    return torch.cat(outputs, dim=1), None


@contextlib.contextmanager
def _packed_attention(config):
    """`config`'s attention implementation set to :func:`packed_sdpa` for the forwards inside (the
    backward reuses what they saved); registered with transformers without a mask function, so the
    model builds no mask."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_sdpa)
    before = config._attn_implementation
    config._attn_implementation = PACKED_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def chunks(lengths: list[int], budget: int) -> list[list[int]]:
    """Consecutive row indices grouped so that each group's tokens stay within `budget` (a longer row
    is a group of its own)."""
    groups: list[list[int]] = []
    used = 0
    for i, n in enumerate(lengths):
        if groups and used + n <= budget:
            groups[-1].append(i)
            used += n
        else:
            groups.append([i])
            used = n
    return groups


def packed_nll(backbone, head, rows: list[tuple[torch.Tensor, torch.Tensor]], *, mixed: bool) -> torch.Tensor:
    """Summed answer-token NLL of `rows` ((input ids, labels) without pads, each with an answer token),
    in ONE forward of their concatenation: per-row position ids, attention within each row."""
    import torch

    ids = torch.cat([r for r, _ in rows])
    # position i predicts token i + 1 of its own row; a row's last position predicts nothing
    targets = torch.cat([torch.cat([labels[1:], labels.new_full((1,), -100)]) for _, labels in rows])
    device = ids.device
    with fast.autocast(mixed):
        if len(rows) == 1:
            hidden = backbone(input_ids=ids[None], use_cache=False).last_hidden_state[0]
        else:
            lengths = torch.tensor([r.size(0) for r, _ in rows], device=device)
            positions = torch.cat([torch.arange(int(n), device=device) for n in lengths])
            bounds = torch.nn.functional.pad(lengths.cumsum(0), (1, 0)).to(torch.int32)
            with _packed_attention(backbone.config):
                hidden = backbone(input_ids=ids[None], position_ids=positions[None], use_cache=False,
                                  cu_seq_lens_q=bounds).last_hidden_state[0]
    scored = targets != -100
    return -fast.head_logps(head, hidden[scored], targets[scored]).sum()


def fast_sft_trainer(trainer_cls, mixed_bf16: bool = False, pack_tokens: int | None = None):
    """`trainer_cls` (trl's SFTTrainer) with the fast path's loss and backward (module docstring),
    `pack_tokens` per chunk (None: :func:`pack_tokens_setting`). With `mixed_bf16` the frozen linear
    weights are stored in bf16 and the decoder runs under bf16 autocast. trl's entropy and
    token-accuracy metrics are not computed."""
    import torch

    chunk_tokens = pack_tokens_setting() if pack_tokens is None else pack_tokens

    class FastSFTTrainer(trainer_cls):
        pack_tokens = chunk_tokens

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.mixed_bf16 = mixed_bf16 and self.accelerator.num_processes == 1
            if self.mixed_bf16:
                fast.store_frozen_linears_in_bf16(self._causal_lm())

        def _causal_lm(self):
            from accelerate.utils import is_peft_model

            unwrapped = self.accelerator.unwrap_model(self.model)
            return unwrapped.get_base_model() if is_peft_model(unwrapped) else unwrapped

        def _plain(self, inputs) -> bool:
            """The batches and settings this path covers; anything else runs trl's code."""
            return ("attention_mask" in inputs and "labels" in inputs and "position_ids" not in inputs
                    and self.accelerator.num_processes == 1 and self.args.loss_type == "nll"
                    and self.label_smoother is None and self.compute_loss_func is None and not self.aux_loss_enabled)

        def _answer_nll(self, inputs, backward_scale: float | None = None) -> torch.Tensor | None:
            """Summed answer-token NLL of the batch (detached when `backward_scale` is given: each packed
            chunk's NLL times `backward_scale` is then backpropagated before the next chunk runs);
            None when no row has an answer token."""
            lm = self._causal_lm()
            backbone, head = getattr(lm, lm.base_model_prefix), lm.get_output_embeddings()
            rows = []
            for ids, mask, labels in zip(inputs["input_ids"], inputs["attention_mask"], inputs["labels"]):
                keep = mask.bool()
                if (labels[keep][1:] != -100).any():  # a row without an answer token adds nothing
                    rows.append((ids[keep], labels[keep]))
            budget = self.pack_tokens if lm.config._attn_implementation == "sdpa" else 0
            total = None
            for group in chunks([r.size(0) for r, _ in rows], budget):
                nll = packed_nll(backbone, head, [rows[i] for i in group], mixed=self.mixed_bf16)
                if backward_scale is not None:
                    self.accelerator.backward(nll * backward_scale)
                    nll = nll.detach()
                total = nll if total is None else total + nll
            return total

        def _count(self, inputs, num_items_in_batch):
            """trl's normaliser: `num_items_in_batch` (the answer tokens of all accumulated batches), else
            this batch's answer tokens (one process: no cross-device average to undo)."""
            count = inputs["labels"][:, 1:].ne(-100).sum() if num_items_in_batch is None else num_items_in_batch
            return torch.as_tensor(count).clamp(min=1)

        def _count_tokens(self, inputs):
            mode = "train" if self.model.training else "eval"
            if mode == "train":
                self._total_train_tokens += int(inputs["attention_mask"].sum())
            self._metrics[mode]["num_tokens"] = [self._total_train_tokens]

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            if return_outputs or not self._plain(inputs):
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            total = self._answer_nll(inputs)
            if total is None:  # no answer token in the batch: a zero that still has a graph
                total = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
            self._count_tokens(inputs)
            return total / self._count(inputs, num_items_in_batch)

        def training_step(self, model, inputs, num_items_in_batch=None):
            """Trainer.training_step with one backward per packed chunk (same gradients, same returned
            loss); settings it does not cover run the original."""
            from transformers.training_args import OptimizerNames
            from accelerate.utils import DistributedType

            covered = (self.pack_tokens > 0 and self._plain(inputs) and self.args.n_gpu <= 1
                       and self.accelerator.distributed_type == DistributedType.NO
                       and self.args.optim not in (OptimizerNames.LOMO, OptimizerNames.ADALOMO)
                       and getattr(self.accelerator, "parallelism_config", None) is None
                       and self.args.torch_empty_cache_steps is None)
            if not covered:
                return super().training_step(model, inputs, num_items_in_batch)
            model.train()
            if hasattr(self.optimizer, "train") and callable(self.optimizer.train):
                self.optimizer.train()
            inputs = self._prepare_inputs(inputs)
            scaled_for_ga = self.loss_is_scaled_for_ga
            if scaled_for_ga is None:
                scaled_for_ga = self.model_accepts_loss_kwargs and num_items_in_batch is not None
            scale = 1.0 / self._count(inputs, num_items_in_batch)
            if not scaled_for_ga:
                scale = scale / self.current_gradient_accumulation_steps
            with self.maybe_activation_offload_context, self.compute_loss_context_manager():
                total = self._answer_nll(inputs, backward_scale=scale)
                if total is None:  # as compute_loss: zero gradients (not none), as trl's loss gives
                    total = sum(p.sum() * 0.0 for p in model.parameters() if p.requires_grad)
                    self.accelerator.backward(total)
            self._count_tokens(inputs)
            return (total * scale).detach()

    FastSFTTrainer.__name__ = FastSFTTrainer.__qualname__ = trainer_cls.__name__
    return FastSFTTrainer
