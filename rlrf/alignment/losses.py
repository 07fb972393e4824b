"""Preference losses: one registry of small pure torch functions (docs/architecture.md "Losses").

Every loss is a function of sequence log-probabilities (summed over completion tokens) of the
policy and of the reference, and returns one loss per example (shape ``(B,)``); the trainer takes
the mean. With ``r(y) = log π(y|x) − log π_ref(y|x)`` and ``y_w`` the chosen response:

* ``dpo``    — −log σ(β (r(y_w) − r(y_l)))                            (Rafailov et al., sigmoid)
* ``sdpo``   — −log σ(−log Σ_k exp(β (r(y_k) − r(y_w)))) = log(1 + Σ_k exp(β (r(y_k) − r(y_w))))
               over k negatives                                          (S-DPO, softmax DPO)
* ``dmpo``   — −log σ(β r(y_w) − (1/k) Σ_k β r(y_k))                      (DMPO, mean over negatives)
* ``rosepo`` — −(1−ε) log σ(β Δ) − ε log σ(−β Δ), Δ = r(y_w) − r(y_l), with a per-example ε
               from the preference oracle (here the reward margin, see :func:`rosepo_epsilon`)

Shapes: ``chosen`` and ``ref_chosen`` are ``(B,)``; ``rejected`` and ``ref_rejected`` are ``(B, k)``
(``k`` negatives, worst first). Pairwise losses (``dpo``, ``rosepo``) read the first column only:
the worst negative. ``mask`` (``(B, k)`` bool, optional) marks real negatives when examples have
fewer than ``k`` (padding columns are ignored by ``sdpo``/``dmpo``).

Length (R-DPO, Park et al. 2024): with ``align.length_alpha`` = α every loss above sees the implicit
reward β r(y) + α|y| instead of β r(y), so a pair's margin gets α(|y_w| − |y_l|) and a preference that
length alone explains no longer pushes the policy towards longer text (:func:`length_regularized`).

trl's own loss types (``TRL_LOSSES``: sigmoid, hinge, ipo, robust, ...) are not re-implemented:
`rlrf align` hands them to ``trl.DPOTrainer`` by name (``DPOConfig.loss_type``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rlrf.core.errors import UserError

# trl 1.16 DPOTrainer loss types, passed through by name (trl/trainer/dpo_trainer.py `_compute_loss`).
TRL_LOSSES = frozenset({
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard",
    "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
})


def _as_2d(x: torch.Tensor) -> torch.Tensor:
    return x.unsqueeze(-1) if x.dim() == 1 else x


def dpo_loss(chosen, rejected, ref_chosen, ref_rejected, *, beta: float, **_) -> torch.Tensor:
    """−log σ(β (r(y_w) − r(y_l))); uses the first (worst) negative."""
    r_w = chosen - ref_chosen
    r_l = (_as_2d(rejected) - _as_2d(ref_rejected))[:, 0]
    return -F.logsigmoid(beta * (r_w - r_l))


def sdpo_loss(chosen, rejected, ref_chosen, ref_rejected, *, beta: float, mask=None, **_) -> torch.Tensor:
    """S-DPO: −log σ(−log Σ_k exp(β (r(y_k) − r(y_w)))) over the (unmasked) negatives."""
    r_w = (chosen - ref_chosen).unsqueeze(-1)
    r_k = _as_2d(rejected) - _as_2d(ref_rejected)
    z = beta * (r_k - r_w)
    if mask is not None:
        z = z.masked_fill(~mask.bool(), float("-inf"))
    return -F.logsigmoid(-torch.logsumexp(z, dim=-1))


def dmpo_loss(chosen, rejected, ref_chosen, ref_rejected, *, beta: float, mask=None, **_) -> torch.Tensor:
    """DMPO: −log σ(β r(y_w) − (1/k) Σ_k β r(y_k)), the mean over the (unmasked) negatives."""
    r_w = chosen - ref_chosen
    r_k = _as_2d(rejected) - _as_2d(ref_rejected)
    if mask is None:
        mean_k = r_k.mean(dim=-1)
    else:
        m = mask.to(r_k.dtype)
        mean_k = (r_k * m).sum(dim=-1) / m.sum(dim=-1).clamp(min=1.0)
    return -F.logsigmoid(beta * r_w - beta * mean_k)


def rosepo_epsilon(margin: torch.Tensor, *, eps_max: float = 0.4, tau: float = 0.1) -> torch.Tensor:
    """The smoothing ε of each pair from its reward margin: ε = eps_max · exp(−max(margin, 0) / tau).

    A pair whose reward margin is 0 (the oracle cannot tell the responses apart) gets ε = eps_max;
    the label is trusted more as the margin grows (margin = tau → ε = eps_max/e ≈ 0.37·eps_max;
    margin = 3·tau → ≈ 0.05·eps_max). With eps_max < 0.5, ε always lies in [0, 0.5), so the
    chosen side keeps the larger weight. Margins are NDCG/MAP differences in [0, 1].
    """
    if not 0.0 <= eps_max < 0.5:
        raise ValueError(f"eps_max must lie in [0, 0.5), got {eps_max}")
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    return eps_max * torch.exp(-margin.clamp(min=0.0) / tau)


def rosepo_loss(chosen, rejected, ref_chosen, ref_rejected, *, beta: float, epsilon=None, **_) -> torch.Tensor:
    """RosePO smoothing: −(1−ε) log σ(β Δ) − ε log σ(−β Δ); ε per example (tensor (B,) or float)."""
    if epsilon is None:
        raise ValueError("rosepo needs epsilon (per-example smoothing from the reward margin)")
    delta = (chosen - ref_chosen) - (_as_2d(rejected) - _as_2d(ref_rejected))[:, 0]
    eps = torch.as_tensor(epsilon, dtype=delta.dtype, device=delta.device)
    return -(1 - eps) * F.logsigmoid(beta * delta) - eps * F.logsigmoid(-beta * delta)


@dataclass(frozen=True)
class PreferenceLoss:
    name: str
    fn: Callable[..., torch.Tensor]
    multi_negative: bool  # uses all k negatives (else the first, worst one)
    needs_epsilon: bool  # per-example smoothing from the reward margin


LOSSES: dict[str, PreferenceLoss] = {
    "dpo": PreferenceLoss("dpo", dpo_loss, multi_negative=False, needs_epsilon=False),
    "sdpo": PreferenceLoss("sdpo", sdpo_loss, multi_negative=True, needs_epsilon=False),
    "dmpo": PreferenceLoss("dmpo", dmpo_loss, multi_negative=True, needs_epsilon=False),
    "rosepo": PreferenceLoss("rosepo", rosepo_loss, multi_negative=False, needs_epsilon=True),
}


def loss_names() -> list[str]:
    """Every accepted `align.loss`: ours first, then trl's pass-through names."""
    return list(LOSSES) + sorted(TRL_LOSSES)


def get_loss(name: str) -> PreferenceLoss | str:
    """Our `PreferenceLoss` for a registry name, or the name itself for a trl built-in loss type."""
    if name in LOSSES:
        return LOSSES[name]
    if name in TRL_LOSSES:
        return name
    raise UserError(f"align.loss: unknown loss '{name}' (known: {', '.join(loss_names())})")


def is_multi_negative(name: str) -> bool:
    entry = LOSSES.get(name)
    return bool(entry and entry.multi_negative)


def length_regularized(ref_logps: torch.Tensor, lengths: torch.Tensor, *, alpha: float, beta: float) -> torch.Tensor:
    """Reference log-probs lowered by α|y|/β: β (log π − this) = β r(y) + α|y|, R-DPO's implicit reward.

    Folding the term into the reference leaves every loss function as it is (one place for it).
    """
    return ref_logps - (alpha / beta) * lengths.to(ref_logps.dtype)


def sequence_nll_per_token(chosen_logps: torch.Tensor, n_tokens: torch.Tensor) -> torch.Tensor:
    """The SFT term per example: −log π(y_w|x) / |y_w| (mean NLL per completion token)."""
    return -chosen_logps / n_tokens.to(chosen_logps.dtype).clamp(min=1.0)


__all__ = [
    "LOSSES", "TRL_LOSSES", "PreferenceLoss", "dmpo_loss", "dpo_loss", "get_loss", "is_multi_negative",
    "length_regularized", "loss_names", "rosepo_epsilon", "rosepo_loss", "sdpo_loss", "sequence_nll_per_token",
]
