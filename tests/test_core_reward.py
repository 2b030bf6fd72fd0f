"""Bradley-Terry pairwise loss, reward centering and the classifier's cross-entropy against values
computed by hand."""
import math

import pytest
import torch

from rlhf_exp.core.reward import centering_loss, pairwise_loss


def test_pairwise_loss_by_hand():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, stats = pairwise_loss(chosen, rejected)
    # diffs 1 and -1: (-log σ(1) - log σ(-1)) / 2 = (log(1 + e^-1) + log(1 + e)) / 2
    expected = (math.log(1 + math.exp(-1)) + math.log(1 + math.exp(1))) / 2
    assert loss.item() == pytest.approx(expected)
    assert stats["accuracy"].item() == 0.5 and stats["margin"].item() == 0.0
    assert stats["chosen"].item() == 1.0 and stats["rejected"].item() == 1.0


def test_equal_rewards_cost_log_two():
    loss, _ = pairwise_loss(torch.zeros(3), torch.zeros(3))
    assert loss.item() == pytest.approx(math.log(2))


def test_margin_is_subtracted_from_the_difference():
    # diff 3, margin 1 -> -log σ(2) = log(1 + e^-2)
    loss, stats = pairwise_loss(torch.tensor([3.0]), torch.tensor([0.0]), margin=torch.tensor([1.0]))
    assert loss.item() == pytest.approx(math.log(1 + math.exp(-2)))
    assert stats["margin"].item() == 3.0  # the reported margin is the reward gap itself


def test_gradient_pushes_chosen_up_and_rejected_down():
    chosen, rejected = torch.zeros(1, requires_grad=True), torch.zeros(1, requires_grad=True)
    loss, stats = pairwise_loss(chosen, rejected)
    loss.backward()
    assert chosen.grad.item() == pytest.approx(-0.5) and rejected.grad.item() == pytest.approx(0.5)
    assert not stats["accuracy"].requires_grad


def test_centering_loss_by_hand():
    # (1 + 3)^2 = 16 and (-1 + 0)^2 = 1 -> mean 8.5
    assert centering_loss(torch.tensor([1.0, -1.0]), torch.tensor([3.0, 0.0])).item() == pytest.approx(8.5)


def test_classifier_loss_by_hand():
    from rlhf_exp.core.reward import classifier_loss
    logits, labels = torch.tensor([[0.0, math.log(3.0)], [2.0, 0.0]]), torch.tensor([1, 1])
    loss, stats = classifier_loss(logits, labels)
    # p(1) = 3/4 in the first row, 1/(1 + e²) in the second
    assert loss.item() == pytest.approx((-math.log(0.75) - math.log(1 / (1 + math.e ** 2))) / 2)
    assert stats["accuracy"].item() == 0.5
    assert stats["margin"].item() == pytest.approx((math.log(3.0) + -2.0) / 2)


def test_plackett_luce_by_hand_with_ties_padding_and_two_items_as_bradley_terry():
    from rlhf_exp.core.listwise import plackett_luce_loss
    s = torch.tensor([[2.0, 1.0, 0.0]])
    loss, stats = plackett_luce_loss(s, torch.tensor([[1, 2, 3]]), torch.ones(1, 3))
    # −[2 − log(e² + e¹ + e⁰)] − [1 − log(e¹ + e⁰)]
    expected = -(2 - math.log(math.e ** 2 + math.e + 1)) - (1 - math.log(math.e + 1))
    assert loss.item() == pytest.approx(expected)
    assert stats["accuracy"].item() == 1.0 and stats["margin"].item() == pytest.approx((1 + 2 + 1) / 3)
    # two items: Bradley-Terry
    two, _ = plackett_luce_loss(torch.tensor([[0.3, -0.4]]), torch.tensor([[1, 2]]), torch.ones(1, 2))
    bt, _ = pairwise_loss(torch.tensor([0.3]), torch.tensor([-0.4]))
    assert two.item() == pytest.approx(bt.item())
    # a tie at the top: each of the two competes only with the third
    tie, stats = plackett_luce_loss(s, torch.tensor([[1, 1, 2]]), torch.ones(1, 3))
    assert tie.item() == pytest.approx(-(2 - math.log(math.e ** 2 + 1)) - (1 - math.log(math.e + 1)))
    assert stats["accuracy"].item() == 1.0 and stats["margin"].item() == pytest.approx((2 + 1) / 2)
    # a padded item (mask 0) changes nothing, whatever its score and rank
    padded, _ = plackett_luce_loss(torch.tensor([[2.0, 1.0, 0.0, 9.0]]), torch.tensor([[1, 2, 3, 4]]),
                                   torch.tensor([[1, 1, 1, 0]]))
    assert padded.item() == pytest.approx(expected)
    # all tied: nothing to learn
    flat, _ = plackett_luce_loss(s, torch.tensor([[1, 1, 1]]), torch.ones(1, 3))
    assert flat.item() == 0.0


def test_plackett_luce_gradient_raises_the_better_items():
    from rlhf_exp.core.listwise import plackett_luce_loss
    s = torch.zeros(1, 3, requires_grad=True)
    plackett_luce_loss(s, torch.tensor([[1, 2, 3]]), torch.ones(1, 3))[0].backward()
    assert s.grad[0, 0] < s.grad[0, 1] < s.grad[0, 2]  # descent raises the best, lowers the worst
    assert s.grad.sum().item() == pytest.approx(0.0, abs=1e-6)
