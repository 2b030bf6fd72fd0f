"""PPO for language models, as pure functions of (B, T) tensors with a response `mask`.

Order of use (cleanRL's): shape_rewards -> gae -> (whiten advantages) -> for each epoch and
minibatch: policy_loss, value_loss, entropy -> total_loss. The KL controllers set `kl_coef`.
"""
from __future__ import annotations

import math

import torch

from rlhf_exp.core.ops import aggregate_loss, masked_mean


def response_mask(response: torch.Tensor, eos_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Truncate sampled responses at their first EOS: (B, T) token ids -> (mask (B, T) that is 1 on
    every token up to and including the first EOS, has_eos (B,) bool). Tokens after it are not part
    of the response, whatever they are (generate fills them with PAD)."""
    is_eos = response == eos_id
    seen_before = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0     # an EOS earlier in the row
    return (~seen_before).long(), is_eos.any(dim=1)


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last 1 in each row of a (B, T) mask -> (B,). Rows must have at least one 1."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask.long()).argmax(dim=1)


def shape_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                  kl_coef: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Per-token rewards: −kl_coef·KL on every response token, plus the score on the last one.

    scores: (B,) reward-model scores; kl: (B, T) per-token KL estimate; mask: (B, T).
    Returns rewards (B, T) (0 off the mask) and stats (mean KL penalty and total reward per sequence).
    """
    m = mask.to(kl.dtype)
    penalty = -kl_coef * kl * m                                            # (B, T)
    rewards = penalty.clone()
    rows = torch.arange(mask.shape[0], device=mask.device)
    rewards[rows, last_token_index(mask)] += scores                       # score on the last token
    stats = {"non_score_reward": penalty.sum(1).mean().detach(),
             "total": rewards.sum(1).mean().detach()}
    return rewards, stats


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over the response tokens.

    δ_t = r_t + γ·V_{t+1} − V_t, A_t = δ_t + γλ·A_{t+1}; the value after the last response token is
    0, and rewards and values off the mask are ignored (treated as 0; the recursion restarts there).
    rewards, values, mask: (B, T) -> advantages (B, T), returns = advantages + values (B, T);
    both 0 off the mask.
    """
    m = mask.to(values.dtype)
    r, v = rewards * m, values * m
    advantages = torch.zeros_like(v)
    last = torch.zeros_like(v[:, 0])                                      # (B,)
    T = v.shape[1]
    for t in reversed(range(T)):
        next_value = v[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        delta = r[:, t] + gamma * next_value - v[:, t]
        last = (delta + gamma * lam * last) * m[:, t]
        advantages[:, t] = last
    return advantages.detach(), (advantages + v).detach()


def policy_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_eps: float, agg: str = "token_mean",
                norm_len: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped surrogate: aggregate(max(−A·ratio, −A·clip(ratio, 1−ε, 1+ε))), ratio = exp(logp − old);
    `agg`, `norm_len`: how the per-token loss is reduced (`ops.aggregate_loss`; PPO: token_mean).

    logp (with grad), old_logp, advantages, mask: (B, T). Stats: clipfrac (share of tokens where
    the clipped term is the larger), approx_kl (k3 estimate of KL(old ‖ new)), ratio mean.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_eps, 1 + clip_eps)
    loss = aggregate_loss(torch.maximum(unclipped, clipped), mask, agg, norm_len)
    with torch.no_grad():
        stats = {"clipfrac": masked_mean((clipped > unclipped).float(), mask),
                 "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
                 "ratio": masked_mean(ratio, mask)}
    return loss, stats


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
               mask: torch.Tensor, clip_eps: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """0.5·masked_mean(max((V − R)², (V_clipped − R)²)), V_clipped = old + clamp(V − old, −ε, ε).

    values (with grad), old_values, returns, mask: (B, T). Stats: clipfrac, explained variance
    of the returns by the values, 1 − Var[R − V] / Var[R] (population variances over the mask;
    0 when the returns do not vary: there is nothing to explain)."""
    clipped = old_values + torch.clamp(values - old_values, -clip_eps, clip_eps)
    err, err_clipped = (values - returns) ** 2, (clipped - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.maximum(err, err_clipped), mask, "token_mean")
    with torch.no_grad():
        resid = masked_mean((returns - values - masked_mean(returns - values, mask)) ** 2, mask)
        var_r = masked_mean((returns - masked_mean(returns, mask)) ** 2, mask)
        explained = torch.where(var_r > 0, 1 - resid / var_r.clamp(min=torch.finfo(var_r.dtype).tiny),
                                torch.zeros_like(var_r))
        stats = {"clipfrac": masked_mean((err_clipped > err).float(), mask), "explained_var": explained}
    return loss, stats


def total_loss(pg_loss: torch.Tensor, vf_loss: torch.Tensor, entropy: torch.Tensor,
               vf_coef: float, ent_coef: float) -> torch.Tensor:
    """L = L_policy + c1·L_value − c2·H (all scalars)."""
    return pg_loss + vf_coef * vf_loss - ent_coef * entropy


class FixedKLController:
    """kl_coef stays where it is set."""

    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019): move kl_coef towards a target KL with a proportional controller,
    β ← β·(1 + clip(KL/target − 1, −0.2, 0.2)·n_steps/horizon)."""

    def __init__(self, kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = kl_coef, target, horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        if not math.isfinite(current_kl):  # a skipped, non-finite iteration (nonfinite=skip) moves nothing
            return
        error = min(max(current_kl / self.target - 1, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
