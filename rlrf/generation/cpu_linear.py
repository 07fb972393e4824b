"""Decode-time linear layers over weights packed once for oneDNN, for bf16 on CPU.

Why: torch's CPU ``F.linear`` in bf16 repacks the weight for oneDNN's kernel at every call. At a
decoding step's 128 rows, packing every weight once per batch
(``torch.ops.mkldnn._reorder_linear_weight``) and calling the packed kernel made SmolLM2's GEMMs
5-12 % faster and decoding ~7 % faster, with outputs equal to F.linear's bit for bit
(bench/README.md). The prefill's large GEMMs gained nothing, so only the decoding loop uses it.
"""

from __future__ import annotations

import contextlib

import torch

from rlrf.generation import cpu_attention


def usable(model) -> bool:
    """bf16 weights on a CPU whose torch has oneDNN's packed linear (and ``RLRF_CPU_KERNELS`` not 0:
    one switch turns off all of rlrf's CPU decoding paths)."""
    param = next(model.parameters())
    return (cpu_attention.wanted() and param.dtype == torch.bfloat16 and param.device.type == "cpu"
            and torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


@contextlib.contextmanager
def packed_linears(model, rows: int):
    """Within the block, every plain ``nn.Linear`` of `model` runs on a packed copy of its weight
    (packed for `rows` input rows; any other count works too). The weights must not change
    inside the block; the original forwards come back on exit, even on error."""
    patched = []
    try:
        for module in model.modules():
            if type(module) is not torch.nn.Linear:
                continue
            packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach(), rows)
            bias = module.bias.detach() if module.bias is not None else None

            def forward(x, packed=packed, bias=bias):
                return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")

            module.forward = forward
            patched.append(module)
        yield
    finally:
        for module in patched:
            del module.forward
