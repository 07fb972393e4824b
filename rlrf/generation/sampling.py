"""Sampling maths: per-sample seeds, their uniform streams and the inverse-CDF draw.

``model.generate`` draws every row's token from the one global RNG, so a sample depends on which
other rows shared its batch. Here each sample owns a stream of uniforms ``u[t]``, drawn up front
from ``torch.Generator().manual_seed(seed)`` on the CPU (same numbers on any device), and step
``t`` picks its token by inverse-CDF sampling on its own temperature/top-k/top-p distribution with
``u[t]`` (:func:`sample_from_logits`), after the repetition penalty (:func:`penalise_repeats`) when
one is set. A row's tokens are then a function of its prompt, its seed
and the weights only — not of the batch, the batch size, the padding or the device — up to
floating-point differences between batched and unbatched matmuls, which move a probability by
~1e-6 and so flip a draw only when ``u[t]`` lands that close to a bucket edge.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 128
    temperature: float = 0.8  # 0 = greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 = whole vocabulary
    repetition_penalty: float = 1.0  # 1.0 = off; see penalise_repeats

    def described(self) -> dict[str, Any]:
        """The parameters as a generation's meta file records them. The penalty appears only when it
        is on, so a run without it describes its sampling as every run from before the option did."""
        out = dict(self.__dict__)
        if self.repetition_penalty == 1.0:
            del out["repetition_penalty"]
        return out


def sample_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (run seed, iteration, user, k): stable across processes."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") & ((1 << 63) - 1)


def uniform_streams(seeds: Sequence[int], steps: int) -> torch.Tensor:
    """(len(seeds), steps) float64 uniforms in [0, 1), row i from seed i alone."""
    out = torch.empty((len(seeds), steps), dtype=torch.float64)
    gen = torch.Generator()
    for i, seed in enumerate(seeds):
        gen.manual_seed(int(seed))
        out[i] = torch.rand(steps, generator=gen, dtype=torch.float64)
    return out


def penalise_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """transformers' `RepetitionPenaltyLogitsProcessor` (vLLM's `repetition_penalty` is the same rule):
    the logit of every token already in the row's prompt or text (`seen`, a (rows, vocab) bool mask)
    is divided by `penalty` when positive and multiplied by it when negative, once however often the
    token occurred. In float32, as transformers' `generate` hands its processors float32 scores; the
    sampler then applies temperature, top-k and top-p to the result, in transformers' order."""
    logits = logits.float()
    return torch.where(seen, torch.where(logits < 0, logits * penalty, logits / penalty), logits)


def sample_from_logits(logits: torch.Tensor, u: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """Tokens (rows,) drawn by inverse CDF with one uniform per row.

    Same distribution as transformers' sampling: temperature, then top-k, then top-p (the smallest
    set of most likely tokens whose mass reaches top_p; the most likely token is always kept).
    """
    if params.temperature <= 0:
        return logits.argmax(dim=-1)
    # top-k on the raw logits (any dtype), then temperature on the k survivors only: dividing by a
    # positive temperature keeps the order, and the full-vocabulary float copy + division cost
    # more than the top-k itself at 49k tokens (bench/README.md)
    vocab = logits.shape[-1]
    if 0 < params.top_k < vocab:
        values, index = torch.topk(logits, params.top_k, dim=-1)  # sorted, descending
    else:
        values, index = torch.sort(logits, dim=-1, descending=True)
    values = values.float() / params.temperature
    probs = torch.softmax(values, dim=-1)
    if params.top_p < 1.0:
        before = torch.cumsum(probs, dim=-1) - probs
        probs = probs * (before < params.top_p)
    cdf = torch.cumsum(probs, dim=-1)
    target = (u.to(cdf.device, torch.float64) * cdf[:, -1].double()).to(cdf.dtype).unsqueeze(-1)
    choice = torch.searchsorted(cdf, target, right=True).clamp_(max=values.shape[-1] - 1)
    # never land on a token top-p removed (possible only through rounding at the very top of the cdf)
    kept = (probs > 0).sum(dim=-1, keepdim=True) - 1
    choice = torch.minimum(choice, kept)
    return index.gather(-1, choice).squeeze(-1)
