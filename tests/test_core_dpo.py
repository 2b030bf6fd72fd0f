"""DPO, IPO and hinge losses against values computed by hand."""
import math

import pytest
import torch

from rlhf_exp.core.dpo import dpo_loss

T = torch.tensor
# policy chosen/rejected, reference chosen/rejected: logits = (-1 - -3) - (-2 - -2.5) = 2 - 0.5 = 1.5
ARGS = (T([-1.0]), T([-3.0]), T([-2.0]), T([-2.5]))


def test_sigmoid_loss_and_rewards_by_hand():
    losses, chosen, rejected = dpo_loss(*ARGS, beta=0.1)
    assert losses.item() == pytest.approx(math.log(1 + math.exp(-0.15)))     # −log σ(0.1·1.5)
    assert chosen.item() == pytest.approx(0.1 * (-1 + 2))                     # β(π_c − ref_c) = 0.1
    assert rejected.item() == pytest.approx(0.1 * (-3 + 2.5))                 # −0.05


def test_label_smoothing_mixes_in_the_flipped_label():
    losses, _, _ = dpo_loss(*ARGS, beta=0.1, label_smoothing=0.2)
    expected = 0.8 * math.log(1 + math.exp(-0.15)) + 0.2 * math.log(1 + math.exp(0.15))
    assert losses.item() == pytest.approx(expected)


def test_ipo_and_hinge_by_hand():
    ipo, _, _ = dpo_loss(*ARGS, beta=0.1, loss_type="ipo")
    assert ipo.item() == pytest.approx((1.5 - 1 / 0.2) ** 2)                  # (1.5 − 5)² = 12.25
    hinge, _, _ = dpo_loss(*ARGS, beta=0.1, loss_type="hinge")
    assert hinge.item() == pytest.approx(1 - 0.15)
    hinge_past_margin, _, _ = dpo_loss(*ARGS, beta=1.0, loss_type="hinge")
    assert hinge_past_margin.item() == 0.0                                    # relu(1 − 1.5)


def test_policy_equal_to_reference_gives_log_2_and_zero_rewards():
    lp = T([-4.0, -7.0])
    losses, chosen, rejected = dpo_loss(lp, lp - 1, lp, lp - 1, beta=0.5)
    assert torch.allclose(losses, torch.full((2,), math.log(2)))
    assert (chosen == 0).all() and (rejected == 0).all()


def test_gradient_raises_chosen_and_lowers_rejected_and_rewards_are_detached():
    pc, pr = T([-1.0], requires_grad=True), T([-3.0], requires_grad=True)
    losses, chosen, _ = dpo_loss(pc, pr, T([-2.0]), T([-2.5]), beta=0.1)
    losses.sum().backward()
    assert pc.grad.item() < 0 < pr.grad.item() and not chosen.requires_grad


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="expected one of sigmoid, ipo, hinge"):
        dpo_loss(*ARGS, beta=0.1, loss_type="kto")
