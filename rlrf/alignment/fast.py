"""The fast training path (default; ``RLRF_FAST_TRAIN=0`` restores the path before it).

Where a LoRA step's time goes on CPU, and what this module does about it (measured in
bench/train.py, figures in bench/README.md):

* padding: every example runs alone, its prompt once (:func:`completion_logps`), so no row does
  work for another row's padding and a row's numbers do not depend on which rows share its batch
  (the reference pass and the training step see the same shapes, whatever the batch); SFT packs a
  batch's rows into chunks instead, attention kept within each row (rlrf/alignment/fast_sft.py);
* the LM head (576 x 49152 on SmolLM2, ~20 % of a token's FLOPs) runs only at the completion
  positions that are scored, never at a prompt token or a pad, and in float32;
* precision: float32 under `llm.dtype: auto`. ``llm.dtype: bfloat16`` opts in to mixed bf16
  (:func:`store_frozen_linears_in_bf16`, :func:`autocast`): frozen linear weights stored in bf16, the
  decoder's matmuls under bf16 autocast, while the embeddings, the residual stream, the norms, the
  LoRA parameters and the sum of each LoRA update with its base output, the LM head and the
  log-softmax stay float32. ~1.7x the float32 tokens/s, but the DPO loss drifts from float32's by up
  to ~0.03 within 8 steps (rlrf.core.precision.mixed_bf16_training has the numbers).

The reference log-probs go through the same function as the policy's, with the adapter disabled, so
at the initial adapter the two are bitwise equal and the DPO loss is exactly log 2, in either precision.
trl's own loss types (`align.loss: ipo`, ...) take the same decoder work with trl's LM-head kernel
(:func:`trl_head_outputs`), for trl's loss code to read (rlrf/alignment/trainer.py).
"""

from __future__ import annotations

import contextlib
import os

ENV = "RLRF_FAST_TRAIN"


def fast_training() -> bool:
    """False when ``RLRF_FAST_TRAIN`` is 0 / false / no: training runs as before this module."""
    return os.environ.get(ENV, "1").strip().lower() not in {"0", "false", "no"}


def store_frozen_linears_in_bf16(model) -> int:
    """Cast the weights of frozen linear layers (not LoRA, not the LM head) to bf16, in place; returns
    how many. Under bf16 autocast these are the only copies the matmuls need: storing them in bf16
    saves autocast's per-call cast and half their memory, with the same values."""
    import torch

    out = model.get_output_embeddings()
    count = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or module is out or "lora_" in name:
            continue
        if module.weight.requires_grad or module.weight.dtype != torch.float32:
            continue
        module.to(torch.bfloat16)
        if name.endswith(".base_layer"):  # a LoRA layer adds its update to this output: in float32
            module.register_forward_hook(_float32_output)
        count += 1
    return count


def _float32_output(module, args, output):
    """The bf16 matmul's output in float32, so the LoRA update added to it is kept: added to a bf16
    value (on the bf16 grid) an update below half its last bit would round back to it, and a small
    LoRA's effect on the forward would vanish (measured: the DPO loss stopped tracking float32)."""
    return output.float()


def autocast(enabled: bool):
    """bf16 autocast on CPU for the decoder when `enabled`."""
    import torch

    return torch.autocast("cpu", dtype=torch.bfloat16) if enabled else contextlib.nullcontext()


def head_logps(head, hidden, targets):
    """log p(target) of each row of `hidden` (n, d) through the LM head, in float32."""
    import torch

    with torch.autocast("cpu", enabled=False):
        weight = head.weight
        logits = torch.nn.functional.linear(hidden.float(), weight.float(),
                                            head.bias.float() if head.bias is not None else None)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def completion_logps(backbone, head, prompt, completions, lengths, *, mixed: bool):
    """Summed log-probs (n,) of `n` completions of ONE prompt.

    `prompt` (P,) holds the prompt's tokens only (no pads); `completions` (n, C) the completions,
    right-padded, with `lengths` (n,) real tokens each. The prompt runs once (when n > 1 its KV
    cache, gradients included, is repeated for the n completions); the LM head runs at the scored
    positions only: the prompt's last position and each completion's positions before its last token.
    """
    import torch

    scored = scored_hidden(backbone, prompt, completions, lengths, mixed=mixed)
    if scored is None:
        return torch.zeros(completions.size(0), dtype=torch.float32, device=prompt.device)
    hidden, targets, row = scored
    token_logps = head_logps(head, hidden, targets)
    return torch.zeros(completions.size(0), dtype=token_logps.dtype, device=prompt.device).index_add(0, row, token_logps)


def scored_hidden(backbone, prompt, completions, lengths, *, mixed: bool):
    """(hidden (t, d), targets (t,), row (t,)): the decoder's output at each position that predicts a
    completion token, that token, and which of the `n` completions it belongs to, completion by
    completion and in order; None when no completion has a token. Arguments as :func:`completion_logps`."""
    import torch
    from transformers import DynamicCache

    n, width = completions.shape
    width = int(lengths.max()) if n else 0
    completions = completions[:, :width]
    P = prompt.size(0)
    if width == 0:
        return None
    with autocast(mixed):
        if n == 1:  # one sequence: no cache needed
            ids = torch.cat([prompt, completions[0, : int(lengths[0])]])[None]
            hidden = backbone(input_ids=ids, use_cache=False).last_hidden_state[0, P - 1: -1]  # predicts the completion
            hidden, targets = hidden[None], completions[:, : int(lengths[0])]
        else:
            cache = DynamicCache()
            out = backbone(input_ids=prompt[None], past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            cache.batch_repeat_interleave(n)
            positions = torch.arange(P, P + width, device=prompt.device).expand(n, -1)
            steps = torch.arange(width, device=prompt.device)
            mask = torch.cat([torch.ones(n, P, dtype=torch.long, device=prompt.device),
                              (steps[None] < lengths[:, None]).long()], dim=1)
            comp = backbone(input_ids=completions, attention_mask=mask, position_ids=positions,
                            past_key_values=cache, use_cache=True).last_hidden_state
            last = out.last_hidden_state[:, -1:].expand(n, -1, -1)  # predicts token 0 of every completion
            hidden, targets = torch.cat([last, comp[:, :-1]], dim=1), completions
    steps = torch.arange(targets.size(1), device=prompt.device)
    scored = steps[None] < lengths[:, None]
    row = torch.arange(n, device=prompt.device)[:, None].expand(-1, targets.size(1))[scored]
    return hidden[scored], targets[scored], row


TRL_HEAD_OUTPUTS = ("log_probs", "entropy", "mean_logits", "is_top1")
"""What trl's DPOTrainer asks its fused LM head for (``log_sum_sq_probs`` too under ``use_weighting``)."""


def trl_head_outputs(backbone, head, prompt, completions, lengths, *, mixed: bool,
                     outputs: tuple[str, ...] = TRL_HEAD_OUTPUTS) -> dict:
    """trl's fused-LM-head fields (`outputs`: log_probs, entropy, ...) at every token of `n`
    completions of ONE prompt, completion by completion, in order (``lengths.sum()`` values each).

    The decoder runs as in :func:`completion_logps`; the head is trl's own kernel
    (``trl.kernels.ChunkedLogProbFunction``, the one DPOTrainer's fused head runs, at temperature 1),
    in float32, so trl's loss code reads the numbers its own forward would give it."""
    import torch
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    scored = scored_hidden(backbone, prompt, completions, lengths, mixed=mixed)
    if scored is None:
        empty = torch.zeros(0, dtype=torch.float32, device=prompt.device)
        return {name: empty.bool() if name == "is_top1" else empty for name in outputs}
    hidden, targets, _ = scored
    with torch.autocast(hidden.device.type, enabled=False):
        bias = head.bias.float() if head.bias is not None else None
        fields = ChunkedLogProbFunction.apply(hidden.float(), head.weight.float(), bias, targets, 1.0,
                                              _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, outputs)
    names = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1")
    return {name: value for name, value in zip(names, fields) if name in outputs}
