"""The preference-loss registry against closed forms computed by hand.

Shared numbers (beta = 0.5):
  chosen log π = −10, log π_ref = −12                → r_w = 2
  negative 1:   log π = −15, log π_ref = −13          → r_1 = −2
  negative 2:   log π = −14, log π_ref = −13          → r_2 = −1
"""

from __future__ import annotations

import math

import pytest
import torch

from rlrf.core.errors import UserError
from rlrf.alignment.losses import (
    LOSSES,
    TRL_LOSSES,
    dmpo_loss,
    dpo_loss,
    get_loss,
    is_multi_negative,
    length_regularized,
    loss_names,
    rosepo_epsilon,
    rosepo_loss,
    sdpo_loss,
    sequence_nll_per_token,
)

torch.set_num_threads(1)
BETA = 0.5
CHOSEN, REF_CHOSEN = torch.tensor([-10.0]), torch.tensor([-12.0])
REJ, REF_REJ = torch.tensor([[-15.0, -14.0]]), torch.tensor([[-13.0, -13.0]])


def test_dpo_closed_form():
    # β (r_w − r_1) = 0.5 · (2 − (−2)) = 2 ;  −log σ(2) = log(1 + e^−2) = log(1.1353353) = 0.1269280
    loss = dpo_loss(CHOSEN, REJ, REF_CHOSEN, REF_REJ, beta=BETA)
    assert loss.shape == (1,)
    assert loss.item() == pytest.approx(0.1269280, abs=1e-6)
    # 1-d rejected (plain pairs) gives the same number
    assert dpo_loss(CHOSEN, REJ[:, 0], REF_CHOSEN, REF_REJ[:, 0], beta=BETA).item() == pytest.approx(0.1269280, abs=1e-6)


def test_length_alpha_adds_alpha_times_the_length_difference_to_each_margin():
    # R-DPO: chosen 30 tokens, negatives 20 and 40, α = 0.05 → margins 2 + 0.5 = 2.5 and ...
    alpha, n_chosen, n_rej = 0.05, torch.tensor([30.0]), torch.tensor([[20.0, 40.0]])
    ref_w = length_regularized(REF_CHOSEN, n_chosen, alpha=alpha, beta=BETA)
    ref_l = length_regularized(REF_REJ, n_rej, alpha=alpha, beta=BETA)
    # −log σ(β (r_w − r_1) + α (30 − 20)) = −log σ(2.5) = log(1 + e^−2.5) = 0.0788897
    assert dpo_loss(CHOSEN, REJ, ref_w, ref_l, beta=BETA).item() == pytest.approx(0.0788897, abs=1e-6)
    # S-DPO sees every negative's own difference: z_1 = −2 − 0.5, z_2 = −1.5 + 0.5
    expected = math.log(1 + math.exp(-2.5) + math.exp(-1.0))
    assert sdpo_loss(CHOSEN, REJ, ref_w, ref_l, beta=BETA).item() == pytest.approx(expected, abs=1e-6)
    # α = 0 is plain DPO
    assert torch.equal(length_regularized(REF_CHOSEN, n_chosen, alpha=0.0, beta=BETA), REF_CHOSEN)


def test_sdpo_closed_form():
    # β (r_k − r_w): 0.5 · (−2 − 2) = −2 and 0.5 · (−1 − 2) = −1.5
    # −log σ(−log Σ exp) = log(1 + Σ exp) = log(1 + e^−2 + e^−1.5) = log(1 + 0.1353353 + 0.2231302)
    #                    = log(1.3584655) = 0.3063557
    loss = sdpo_loss(CHOSEN, REJ, REF_CHOSEN, REF_REJ, beta=BETA)
    assert loss.item() == pytest.approx(0.3063557, abs=1e-6)
    # more negatives can only raise S-DPO (each adds a positive term inside the log)
    assert loss.item() > dpo_loss(CHOSEN, REJ, REF_CHOSEN, REF_REJ, beta=BETA).item()


def test_dmpo_closed_form():
    # β r_w − β · mean(r_1, r_2) = 0.5·2 − 0.5·(−1.5) = 1.75 ; log(1 + e^−1.75) = log(1.1737739) = 0.1602242
    loss = dmpo_loss(CHOSEN, REJ, REF_CHOSEN, REF_REJ, beta=BETA)
    assert loss.item() == pytest.approx(0.1602242, abs=1e-6)


def test_rosepo_epsilon_rule_and_loss():
    # ε = 0.4 · exp(−0.1 / 0.1) = 0.4 / e = 0.1471518
    eps = rosepo_epsilon(torch.tensor([0.1, 0.0, 1.0, -0.5]), eps_max=0.4, tau=0.1)
    assert eps[0].item() == pytest.approx(0.1471518, abs=1e-6)
    assert eps[1].item() == pytest.approx(0.4)  # no margin: the most smoothing
    assert eps[2].item() == pytest.approx(0.4 * math.exp(-10), rel=1e-5)  # large margin: almost none
    assert eps[3].item() == pytest.approx(0.4)  # negative margins are clamped to 0
    assert bool(((eps >= 0) & (eps < 0.5)).all())
    with pytest.raises(ValueError):
        rosepo_epsilon(torch.tensor([0.0]), eps_max=0.5)
    # Δ = r_w − r_1 = 4, βΔ = 2:
    # (1 − ε)·log(1 + e^−2) + ε·log(1 + e^2) = 0.8528482·0.1269280 + 0.1471518·2.1269280
    #                                        = 0.1082503 + 0.3129813 = 0.4212316
    loss = rosepo_loss(CHOSEN, REJ, REF_CHOSEN, REF_REJ, beta=BETA, epsilon=eps[:1])
    assert loss.item() == pytest.approx(0.4212316, abs=1e-6)
    # ε = 0 is plain DPO
    zero = rosepo_loss(CHOSEN, REJ, REF_CHOSEN, REF_REJ, beta=BETA, epsilon=torch.zeros(1))
    assert zero.item() == pytest.approx(dpo_loss(CHOSEN, REJ, REF_CHOSEN, REF_REJ, beta=BETA).item(), abs=1e-7)
    with pytest.raises(ValueError):
        rosepo_loss(CHOSEN, REJ, REF_CHOSEN, REF_REJ, beta=BETA)


def test_k1_reduces_sdpo_and_dmpo_to_dpo():
    g = torch.Generator().manual_seed(0)
    chosen, ref_chosen = -torch.rand(6, generator=g) * 30, -torch.rand(6, generator=g) * 30
    rej, ref_rej = -torch.rand(6, 1, generator=g) * 30, -torch.rand(6, 1, generator=g) * 30
    for beta in (0.1, 1.0):
        dpo = dpo_loss(chosen, rej, ref_chosen, ref_rej, beta=beta)
        torch.testing.assert_close(sdpo_loss(chosen, rej, ref_chosen, ref_rej, beta=beta), dpo)
        torch.testing.assert_close(dmpo_loss(chosen, rej, ref_chosen, ref_rej, beta=beta), dpo)


def test_mask_ignores_padding_negatives():
    # second example has only one real negative: its padded column must not count
    chosen = CHOSEN.repeat(2)
    ref_chosen = REF_CHOSEN.repeat(2)
    rej = torch.tensor([[-15.0, -14.0], [-15.0, 100.0]])  # 100.0 is garbage padding
    ref_rej = REF_REJ.repeat(2, 1)
    mask = torch.tensor([[True, True], [True, False]])
    sd = sdpo_loss(chosen, rej, ref_chosen, ref_rej, beta=BETA, mask=mask)
    dm = dmpo_loss(chosen, rej, ref_chosen, ref_rej, beta=BETA, mask=mask)
    assert sd[0].item() == pytest.approx(0.3063557, abs=1e-6)
    assert dm[0].item() == pytest.approx(0.1602242, abs=1e-6)
    assert sd[1].item() == pytest.approx(0.1269280, abs=1e-6)  # = DPO against the one real negative
    assert dm[1].item() == pytest.approx(0.1269280, abs=1e-6)


def test_losses_are_differentiable_and_push_the_right_way():
    chosen = torch.tensor([-10.0], requires_grad=True)
    rej = torch.tensor([[-15.0, -14.0]], requires_grad=True)
    for name in LOSSES:
        chosen.grad = rej.grad = None
        extra = {"epsilon": torch.tensor([0.1])} if LOSSES[name].needs_epsilon else {}
        LOSSES[name].fn(chosen, rej, REF_CHOSEN, REF_REJ, beta=BETA, **extra).sum().backward()
        assert chosen.grad.item() < 0, name  # descending the loss raises log π(chosen)
        assert rej.grad[0, 0].item() > 0, name  # ... and lowers log π(worst negative)


def test_sft_term():
    # −(−12) / 4 tokens = 3.0
    assert sequence_nll_per_token(torch.tensor([-12.0]), torch.tensor([4])).item() == pytest.approx(3.0)


def test_registry():
    assert set(LOSSES) == {"dpo", "sdpo", "dmpo", "rosepo"}
    assert get_loss("sdpo").multi_negative and not get_loss("dpo").multi_negative
    assert get_loss("ipo") == "ipo" and "robust" in TRL_LOSSES and "sigmoid" in loss_names()
    assert is_multi_negative("dmpo") and not is_multi_negative("hinge")
    with pytest.raises(UserError, match="align.loss: unknown loss 'dpoo'"):
        get_loss("dpoo")
