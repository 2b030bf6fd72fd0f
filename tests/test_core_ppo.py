"""PPO math against values computed by hand, and the invariants (ratio 1 and KL 0 when the policy
has not moved)."""
import math

import pytest
import torch

from rlhf_exp.core.kl import kl_k1, kl_k3
from rlhf_exp.core.ops import (entropy_from_logits, logprobs_from_logits, masked_mean, masked_var,
                               masked_whiten)
from rlhf_exp.core.ppo import (AdaptiveKLController, FixedKLController, gae, last_token_index,
                               policy_loss, response_mask, shape_rewards, total_loss, value_loss)

T = torch.tensor


def close(x: torch.Tensor, expected) -> bool:
    return torch.allclose(x, torch.tensor(expected, dtype=x.dtype), atol=1e-6)


def test_masked_mean_and_var_by_hand():
    x, m = T([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]]), T([[1, 1, 0], [1, 1, 0]])
    assert masked_mean(x, m).item() == 2.5                      # (1 + 2 + 3 + 4) / 4
    assert masked_mean(x, m, dim=1).tolist() == [1.5, 3.5]
    # deviations -1.5, -0.5, 0.5, 1.5 -> squares sum 5; biased 5/4, unbiased 5/3
    assert masked_var(x, m, unbiased=False).item() == pytest.approx(1.25)
    assert masked_var(x, m).item() == pytest.approx(5 / 3)


def test_masked_whiten_by_hand():
    x, m = T([[1.0, 3.0, 7.0]]), T([[1, 1, 0]])
    # mean 2, unbiased var 2 -> (x - 2) / sqrt(2) on the mask, 0 off it
    out = masked_whiten(x, m)
    assert out[0, :2].tolist() == pytest.approx([-1 / math.sqrt(2), 1 / math.sqrt(2)], abs=1e-6)
    assert out[0, 2].item() == 0.0
    kept = masked_whiten(x, m, shift_mean=False)
    assert kept[0, :2].tolist() == pytest.approx([2 - 1 / math.sqrt(2), 2 + 1 / math.sqrt(2)], abs=1e-6)


def test_entropy_and_logprobs_by_hand():
    uniform = torch.zeros(1, 1, 4)
    assert entropy_from_logits(uniform).item() == pytest.approx(math.log(4))
    logits = T([[[math.log(3.0), 0.0]]])                        # p = (3/4, 1/4)
    assert entropy_from_logits(logits).item() == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))
    assert logprobs_from_logits(logits, T([[1]])).item() == pytest.approx(math.log(0.25))


def test_kl_estimators_by_hand():
    logp, ref = T([[math.log(0.5)]]), T([[math.log(0.25)]])
    assert kl_k1(logp, ref).item() == pytest.approx(math.log(2))
    # r = 0.25 / 0.5 = 0.5: (0.5 - 1) - log 0.5
    assert kl_k3(logp, ref).item() == pytest.approx(-0.5 + math.log(2))
    same = T([[-1.3, -0.2]])
    assert kl_k1(same, same).abs().max() == 0 and kl_k3(same, same).abs().max() == 0


def test_shape_rewards_by_hand():
    scores, kl, m = T([2.0, -1.0]), T([[0.1, 0.2, 0.3], [0.5, 0.5, 0.5]]), T([[1, 1, 0], [1, 1, 1]])
    rewards, stats = shape_rewards(scores, kl, m, kl_coef=0.5)
    assert last_token_index(m).tolist() == [1, 2]
    assert close(rewards, [[-0.05, -0.1 + 2.0, 0.0], [-0.25, -0.25, -0.25 - 1.0]])
    assert stats["non_score_reward"].item() == pytest.approx((-0.15 - 0.75) / 2)


def test_gae_by_hand_and_blind_to_masked_positions():
    rewards, values, m = T([[0.0, 1.0, 5.0]]), T([[0.5, 0.2, 9.0]]), T([[1, 1, 0]])
    adv, ret = gae(rewards, values, m, gamma=1.0, lam=0.95)
    # t=1: δ = 1 + 0 - 0.2 = 0.8 (the value after the last token is 0); t=0: δ = 0 + 0.2 - 0.5 = -0.3,
    # A = -0.3 + 0.95·0.8 = 0.46
    assert close(adv, [[0.46, 0.8, 0.0]])
    assert close(ret, [[0.96, 1.0, 0.0]])
    adv2, ret2 = gae(T([[0.0, 1.0, -7.0]]), T([[0.5, 0.2, -100.0]]), m, gamma=1.0, lam=0.95)
    assert torch.equal(adv, adv2) and torch.equal(ret, ret2)


def test_gae_with_discount_by_hand():
    adv, _ = gae(T([[1.0, 1.0]]), T([[0.0, 0.0]]), T([[1, 1]]), gamma=0.5, lam=0.5)
    # t=1: δ = 1; t=0: δ = 1 + 0.5·0 - 0 = 1, A = 1 + 0.25·1 = 1.25
    assert close(adv, [[1.25, 1.0]])


def test_gae_by_hand_with_discount_lambda_and_values():
    """γ = 0.9, λ = 0.5, non-zero values, three tokens then padding; every δ and A written out.
    δ_2 = 2 + 0.9·0 − 0.5 = 1.5            A_2 = 1.5
    δ_1 = 1 + 0.9·0.5 − 0.2 = 1.25         A_1 = 1.25 + 0.45·1.5 = 1.925
    δ_0 = 0 + 0.9·0.2 − 1.0 = −0.82        A_0 = −0.82 + 0.45·1.925 = 0.04625"""
    rewards, values, m = T([[0.0, 1.0, 2.0, 9.0]]), T([[1.0, 0.2, 0.5, 7.0]]), T([[1, 1, 1, 0]])
    adv, ret = gae(rewards, values, m, gamma=0.9, lam=0.5)
    assert close(adv, [[0.04625, 1.925, 1.5, 0.0]])
    assert close(ret, [[1.04625, 2.125, 2.0, 0.0]])               # A + V on the mask
    adv_swapped, _ = gae(rewards, values, m, gamma=0.5, lam=0.9)  # γ and λ do different things
    assert not torch.allclose(adv_swapped, adv)


def test_explained_variance_with_residual_variance_and_with_constant_returns():
    m = T([[1, 1, 1, 1]])
    ret, values = T([[1.0, 2.0, 3.0, 4.0]]), T([[1.0, 2.0, 2.0, 5.0]])
    # R − V = (0, 0, 1, −1): population variance 0.5; Var[R] = 1.25 -> 1 − 0.5/1.25 = 0.6
    _, stats = value_loss(values, values, ret, m, clip_eps=0.2)
    assert stats["explained_var"].item() == pytest.approx(0.6)
    _, flat = value_loss(values, values, T([[2.0, 2.0, 2.0, 2.0]]), m, clip_eps=0.2)
    assert flat["explained_var"].item() == 0.0                  # nothing to explain: 0, not NaN or inf


def test_policy_loss_invariant_when_the_policy_has_not_moved():
    logp = T([[-1.0, -2.0, -0.5]])
    adv, m = T([[1.0, -2.0, 3.0]]), T([[1, 1, 0]])
    loss, stats = policy_loss(logp, logp.clone(), adv, m, clip_eps=0.2)
    assert stats["ratio"].item() == 1.0 and stats["approx_kl"].item() == 0.0
    assert stats["clipfrac"].item() == 0.0
    assert loss.item() == pytest.approx(-(1.0 - 2.0) / 2)        # −mean(A) over the mask


def test_policy_loss_clipping_by_hand():
    old = T([[0.0, 0.0]])
    logp = T([[math.log(1.5), math.log(0.5)]]).requires_grad_()
    adv, m = T([[1.0, -1.0]]), T([[1, 1]])
    loss, stats = policy_loss(logp, old, adv, m, clip_eps=0.2)
    # token 0: ratio 1.5, A=1: max(-1.5, -1.2) = -1.2 (clipped); token 1: ratio 0.5, A=-1:
    # max(0.5, 0.8) = 0.8 (clipped) -> mean -0.2, both clipped
    assert loss.item() == pytest.approx(-0.2)
    assert stats["clipfrac"].item() == 1.0
    loss.backward()
    assert logp.grad.abs().max().item() == 0.0                  # clipped tokens pass no gradient
    k3 = [(1.5 - 1) - math.log(1.5), (0.5 - 1) - math.log(0.5)]
    assert stats["approx_kl"].item() == pytest.approx(sum(k3) / 2)


def test_value_loss_by_hand():
    values, old, ret, m = T([[1.0, 0.0]]), T([[0.0, 0.0]]), T([[2.0, 1.0]]), T([[1, 1]])
    loss, stats = value_loss(values, old, ret, m, clip_eps=0.2)
    # token 0: (1-2)² = 1, clipped 0.2 -> (0.2-2)² = 3.24 -> 3.24; token 1: (0-1)² = 1 both -> 1
    assert loss.item() == pytest.approx(0.5 * (3.24 + 1.0) / 2)
    assert stats["clipfrac"].item() == 0.5
    # explained variance: R = (2, 1), R − V = (1, 1): 1 − 0 / 0.25 = 1
    assert stats["explained_var"].item() == pytest.approx(1.0)


def test_total_loss_and_kl_controllers():
    assert total_loss(T(1.0), T(2.0), T(3.0), vf_coef=0.5, ent_coef=0.1).item() == pytest.approx(1.7)
    fixed = FixedKLController(0.05)
    fixed.update(10.0, 100)
    assert fixed.value == 0.05
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=12.0, n_steps=100)                    # error clipped to +0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 100 / 10000))
    ctl.update(current_kl=4.5, n_steps=1000)                    # error -0.25 clipped to -0.2
    assert ctl.value == pytest.approx(0.1 * 1.002 * (1 - 0.2 * 0.1))


def test_response_mask_stops_after_the_first_eos():
    eos = 2  # 9 is padding
    response = T([[5, 2, 9, 9],    # EOS second: 2 tokens
                  [5, 6, 7, 8],    # no EOS: all 4
                  [2, 9, 9, 9],    # EOS first: 1
                  [5, 2, 6, 2]])   # a token sampled after EOS is not part of the response
    mask, has_eos = response_mask(response, eos)
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert has_eos.tolist() == [True, False, True, True]


def test_a_non_finite_kl_leaves_the_adaptive_coefficient_as_it_was():
    """An iteration skipped for a non-finite value (nonfinite=skip) must not poison the controller."""
    ctl = AdaptiveKLController(0.2, target=4.0, horizon=100)
    ctl.update(float("nan"), 10)
    ctl.update(float("inf"), 10)
    assert ctl.value == 0.2
    ctl.update(8.0, 10)  # KL twice the target: error clipped to 0.2, times 10/100
    assert ctl.value == pytest.approx(0.2 * 1.02)


def _kl_plant(ctl, settled_at: float, target: float, iterations: int, batch: int, lag: float = 10.0,
              power: float = 0.6, noise: float = 0.15, seed: int = 0) -> list[float]:
    """A toy policy under an adaptive controller: its KL relaxes (over `lag` iterations) towards the
    KL it would settle at under the current β, target·(settled_at/β)^power (power 0.6 as measured on the
    default world: KL 2.1, 4.4, 8.0, 20 nats at β 1, 0.3, 0.1, 0.03); the controller sees each
    iteration's KL with 15% sampling noise, as from a batch of rollouts. Returns the true KL per iteration."""
    import random
    rng, kl, kls = random.Random(seed), 0.0, []
    for _ in range(iterations):
        kl += (target * (settled_at / ctl.value) ** power - kl) / lag
        kls.append(kl)
        ctl.update(kl * (1 + noise * rng.gauss(0, 1)), batch)
    return kls


@pytest.mark.parametrize("off_by", [1 / 3, 0.5, 2.0, 3.0])
def test_the_adaptive_controller_at_horizon_256_holds_its_target_within_30_percent(off_by):
    """With conf/algorithm/ppo.yaml's defaults (kl_coef, kl_target, batch_size, max_steps) and kl_horizon 256 the
    controller brings the toy policy's KL within ±30% of the target for the whole second half of the run,
    from a starting β a third to three times the one that holds the target; the default horizon (1000
    rollouts for 100 iterations of 32) can move β by at most ×1.9 in a whole run and does not."""
    from tests.conftest import settings
    s = settings("algorithm", "ppo")  # the default controller is fixed; its kl_coef is the adaptive one's start
    def second_half(horizon):
        ctl = AdaptiveKLController(s.kl_coef, s.kl_target, horizon)
        kls = _kl_plant(ctl, s.kl_coef * off_by, s.kl_target, s.max_steps, s.batch_size)
        return [kl / s.kl_target for kl in kls[s.max_steps // 2:]]
    held = second_half(256)
    assert 0.7 <= min(held) and max(held) <= 1.3, (min(held), max(held))
    if off_by >= 2:  # the old horizon lets the KL overshoot for the whole run
        assert max(second_half(1000)) > 1.3
