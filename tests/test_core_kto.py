"""KTO's reference point and loss against values computed by hand."""
import math

import pytest
import torch

from rlhf_exp.core.kto import kto_loss, kto_reference_point


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def test_the_reference_point_is_the_mismatched_kl_clamped_at_zero_and_detached():
    policy = torch.tensor([-3.0, -5.0, -4.0], requires_grad=True)
    ref = torch.tensor([-4.0, -5.5, -4.5])
    z0 = kto_reference_point(policy, ref)  # mean of (1, 0.5, 0.5) = 2/3
    assert z0.item() == pytest.approx(2 / 3) and not z0.requires_grad
    assert kto_reference_point(torch.tensor([-5.0, -6.0]), torch.tensor([-4.0, -4.0])).item() == 0.0  # mean −1.5 → 0


def test_the_loss_by_hand():
    policy = torch.tensor([-2.0, -6.0, -3.0], requires_grad=True)
    ref = torch.tensor([-3.0, -5.0, -3.5])               # r = (1, −1, 0.5)
    desirable = torch.tensor([True, False, False])
    beta, z0, lam_d, lam_u = 0.5, torch.tensor(0.25), 1.0, 1.5
    loss, stats = kto_loss(policy, ref, desirable, z0, beta, lam_d, lam_u)
    up = lam_d * (1 - sigmoid(0.5 * (1 - 0.25)))          # desirable: λ_D(1 − σ(β(r − z₀)))
    down1 = lam_u * (1 - sigmoid(0.5 * (0.25 + 1)))       # undesirable: λ_U(1 − σ(β(z₀ − r)))
    down2 = lam_u * (1 - sigmoid(0.5 * (0.25 - 0.5)))
    assert loss.item() == pytest.approx((up + down1 + down2) / 3)
    assert stats["rewards/desirable"].item() == pytest.approx(0.5)            # β·r
    assert stats["rewards/undesirable"].item() == pytest.approx((-0.5 + 0.25) / 2)
    assert stats["kl"].item() == 0.25
    loss.backward()  # raising a desirable completion's log-prob lowers the loss; an undesirable's raises it
    assert policy.grad[0] < 0 and policy.grad[1] > 0 and policy.grad[2] > 0


def test_a_batch_of_one_kind_reports_nan_for_the_other():
    loss, stats = kto_loss(torch.tensor([-1.0]), torch.tensor([-1.0]), torch.tensor([True]), torch.tensor(0.0), 0.1)
    assert loss.item() == pytest.approx(0.5) and math.isnan(stats["rewards/undesirable"].item())
