"""Critic-free math (group baselines, REINFORCE, loss aggregation) against values computed by hand."""
import math

import pytest
import torch

from rlhf_exp.core.grpo import group_advantages, reinforce_loss, rloo_advantages, sequence_rewards
from rlhf_exp.core.ops import aggregate_loss
from rlhf_exp.core.ppo import policy_loss

T = torch.tensor


def test_aggregation_modes_by_hand_and_blind_to_masked_tokens():
    x, m = T([[1.0, 2.0, 3.0], [4.0, 100.0, -100.0]]), T([[1, 1, 1], [1, 0, 0]])
    assert aggregate_loss(x, m, "token_mean").item() == pytest.approx(10 / 4)         # (1+2+3+4) / 4
    assert aggregate_loss(x, m, "seq_mean_token_mean").item() == pytest.approx((2 + 4) / 2)
    assert aggregate_loss(x, m, "seq_mean_token_sum_norm").item() == pytest.approx(10 / (2 * 3))
    assert aggregate_loss(x, m, "seq_mean_token_sum_norm", norm_len=5).item() == pytest.approx(10 / 10)
    with pytest.raises(ValueError, match="expected one of token_mean"):
        aggregate_loss(x, m, "sum")


def test_group_advantages_by_hand():
    adv = group_advantages(T([1.0, 2.0, 3.0, 6.0]), group_size=2)
    # group (1, 2): mean 1.5, unbiased std √0.5; group (3, 6): mean 4.5, unbiased std √4.5
    s1, s2 = math.sqrt(0.5) + 1e-4, math.sqrt(4.5) + 1e-4
    assert adv.tolist() == pytest.approx([-0.5 / s1, 0.5 / s1, -1.5 / s2, 1.5 / s2])


def test_group_advantages_with_ties_equal_scores_and_without_std():
    # a tie: (1, 1, 4): mean 2, deviations (−1, −1, 2), unbiased variance 6/2 = 3
    adv = group_advantages(T([1.0, 1.0, 4.0, 5.0, 5.0, 5.0]), group_size=3)
    s = math.sqrt(3) + 1e-4
    assert adv[:3].tolist() == pytest.approx([-1 / s, -1 / s, 2 / s])
    assert adv[3:].tolist() == [0.0, 0.0, 0.0]                 # a group of equal scores teaches nothing
    assert group_advantages(T([1.0, 1.0, 4.0]), 3, scale_by_std=False).tolist() == [-1.0, -1.0, 2.0]
    assert group_advantages(T([1.0, 3.0]), 2, eps=1.0).tolist() == pytest.approx([-1 / (math.sqrt(2) + 1),
                                                                                    1 / (math.sqrt(2) + 1)])
    with pytest.raises(ValueError, match="groups of 2"):
        group_advantages(T([1.0, 2.0, 3.0]), 2)


def test_rloo_advantages_by_hand():
    # (1, 1, 4): the others' means are 2.5, 2.5 and 1
    assert rloo_advantages(T([1.0, 1.0, 4.0]), 3).tolist() == [-1.5, -1.5, 3.0]
    assert rloo_advantages(T([2.0, 2.0, 0.0, 1.0]), 2).tolist() == [0.0, 0.0, -1.0, 1.0]


def test_sequence_rewards_put_the_summed_kl_in_the_score():
    kl, m = T([[0.1, 0.2, 9.0], [0.3, 0.0, 0.0]]), T([[1, 1, 0], [1, 1, 1]])
    assert sequence_rewards(T([1.0, 2.0]), kl, m, kl_coef=0.5).tolist() == pytest.approx([0.85, 1.85])


def test_reinforce_loss_by_hand():
    logp = T([[-1.0, -2.0, -7.0]]).requires_grad_()
    adv, m = T([[2.0, 2.0, 2.0]]), T([[1, 1, 0]])
    loss, stats = reinforce_loss(logp, logp.detach().clone(), adv, m)
    assert loss.item() == pytest.approx(-(2 * -1.0 + 2 * -2.0) / 2)
    loss.backward()
    assert logp.grad.tolist() == [[-1.0, -1.0, 0.0]]            # −A / (tokens on the mask)
    assert stats["ratio"].item() == 1.0 and stats["approx_kl"].item() == 0.0


def test_clipped_surrogate_with_sequence_aggregation_by_hand():
    logp = T([[-1.0, -2.0], [-0.5, -3.0]])
    adv, m = T([[1.0, 1.0], [-2.0, -2.0]]), T([[1, 1], [1, 0]])
    # ratio 1: the per-token loss is −A; sequence means 1 → −1, 2 → +2
    loss, _ = policy_loss(logp, logp.clone(), adv, m, clip_eps=0.2, agg="seq_mean_token_mean")
    assert loss.item() == pytest.approx((-1.0 + 2.0) / 2)
    loss, _ = policy_loss(logp, logp.clone(), adv, m, clip_eps=0.2)
    assert loss.item() == pytest.approx((-1 - 1 + 2) / 3)


def test_best_of_n_kl_bound_and_log_ratio_by_hand():
    from rlhf_exp.core.bon import best_of_n_kl_bound, best_of_n_log_ratio
    assert best_of_n_kl_bound(4) == pytest.approx(math.log(4) - 0.75)
    assert best_of_n_kl_bound(1) == 0.0
    # no mass (a continuous reward): the ratio is n·F^(n−1); n = 2 at the median: 2·0.5 = 1
    assert best_of_n_log_ratio(T([0.5]), T([1e-12]), 2).item() == pytest.approx(0.0, abs=1e-9)
    assert best_of_n_log_ratio(T([0.9]), T([0.0]), 3).item() == pytest.approx(math.log(3 * 0.81))
    # a policy that always says the same thing: best-of-n is that policy, KL 0 (the bound says 0.636)
    assert best_of_n_log_ratio(T([0.0]), T([1.0]), 4).item() == pytest.approx(0.0)
    # an atom of mass 0.5 above the other half: ((0.5 + 0.5)^2 − 0.5^2) / 0.5 = 1.5
    assert best_of_n_log_ratio(T([0.5]), T([0.5]), 2).item() == pytest.approx(math.log(1.5))
    # estimates that overshoot (b + p > 1) are capped: b = 1 − p
    assert best_of_n_log_ratio(T([0.8]), T([0.5]), 2).item() == pytest.approx(math.log(1.5))
    # float64 with a tiny mass: no cancellation, n·F^(n−1)
    r = best_of_n_log_ratio(torch.tensor([0.3], dtype=torch.float64), torch.tensor([1e-30], dtype=torch.float64), 5)
    assert r.item() == pytest.approx(math.log(5 * 0.3 ** 4))


def test_best_of_n_kl_is_the_bound_for_a_continuous_reward_and_less_with_atoms():
    """Monte Carlo: best-of-4 from a uniform distribution over many distinct responses has KL
    log n − (n−1)/n; over 3 responses it is the exact discrete sum, below the bound."""
    from rlhf_exp.core.bon import best_of_n_kl_bound, best_of_n_log_ratio
    g = torch.Generator().manual_seed(0)
    n, m = 4, 100_000
    u = torch.rand(m, n, generator=g, dtype=torch.float64)       # F of each sample's reward, continuous
    best = u.max(1).values
    kl = best_of_n_log_ratio(best, torch.zeros(m, dtype=torch.float64), n).mean().item()
    assert kl == pytest.approx(best_of_n_kl_bound(n), abs=0.01)
    # three responses with probabilities 0.5, 0.3, 0.2, rewards ranked 3rd, 2nd, 1st (best)
    p = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    below = torch.tensor([0.0, 0.5, 0.8], dtype=torch.float64)
    ratio = best_of_n_log_ratio(below, p, n).exp()
    bon = ratio * p
    assert bon.sum().item() == pytest.approx(1.0)                 # π_bon is a distribution
    exact = (bon * ratio.log()).sum().item()
    assert exact < best_of_n_kl_bound(n)
    assert bon.tolist() == pytest.approx([0.5 ** 4, 0.8 ** 4 - 0.5 ** 4, 1 - 0.8 ** 4])


def test_mass_below_by_hand_and_the_estimate_converges_to_the_bound():
    from rlhf_exp.core.bon import best_of_n_kl_bound, best_of_n_log_ratio, mass_below
    # no mass: the mid-rank; 3 of 8 below, itself alone: (3 + 0.5) / 8
    assert mass_below(T([3.0]), T([1.0]), 8, T([0.0])).item() == pytest.approx(3.5 / 8)
    # one response that is the whole pool: 0 below
    assert mass_below(T([0.0]), T([8.0]), 8, T([1.0])).item() == 0.0
    # an atom of mass 0.5 on top of a continuous half: 0.5 below
    assert mass_below(T([4.0]), T([4.0]), 8, T([0.5])).item() == pytest.approx(0.5)
    # a continuous reward, pools of 16 groups of 4 (eval's defaults): the estimate is near the exact KL
    g = torch.Generator().manual_seed(0)
    P, k, n = 2000, 16, 4
    s = torch.rand(P, k, n, generator=g, dtype=torch.float64)
    best = s.max(2).values.unsqueeze(2)
    pool = s.view(P, 1, k * n)
    below = mass_below((pool < best).double().sum(2), (pool == best).double().sum(2), k * n, torch.zeros(P, k))
    kl = best_of_n_log_ratio(below.flatten(), torch.zeros(P * k, dtype=torch.float64), n).mean().item()
    assert kl == pytest.approx(best_of_n_kl_bound(n), rel=0.05)
