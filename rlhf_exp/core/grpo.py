"""Critic-free baselines from groups of responses to the same prompt (GRPO, RLOO), as pure functions.

`scores` is (B,) with B = groups × group_size and each group's members consecutive (the order in
which a prompt repeated `group_size` times is sampled). The sequence advantage (B,) is then given to
every token of the response.
"""
from __future__ import annotations

import torch

from rlhf_exp.core.ops import aggregate_loss, masked_mean


def _groups(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """(B,) -> (B / group_size, group_size); the members of a group are consecutive."""
    if group_size < 2 or scores.shape[0] % group_size:
        raise ValueError(f"{scores.shape[0]} scores in groups of {group_size}: expected group_size >= 2 "
                         "dividing the batch")
    return scores.view(-1, group_size)


def group_advantages(scores: torch.Tensor, group_size: int, scale_by_std: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """GRPO (DeepSeekMath): A_i = (r_i − mean_group) / (std_group + eps), with the unbiased standard
    deviation of the group; r_i − mean_group when `scale_by_std` is False (Dr. GRPO). (B,) -> (B,).
    A group whose scores are all equal gets advantage 0 for every member."""
    g = _groups(scores, group_size)
    centred = g - g.mean(dim=1, keepdim=True)
    if scale_by_std:
        centred = centred / (g.std(dim=1, keepdim=True, correction=1) + eps)
    return centred.reshape(-1)


def rloo_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO (Ahmadian et al., 2024): A_i = r_i − mean of the other members of its group,
    r_i − (Σ_group − r_i) / (k − 1). (B,) -> (B,)."""
    g = _groups(scores, group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    return (g - baseline).reshape(-1)


def sequence_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """The KL penalty put in the reward of a whole sequence: score − kl_coef · Σ_t KL_t over the
    response. scores (B,), kl (B, T) per-token estimate, mask (B, T) -> (B,)."""
    return scores - kl_coef * (kl * mask.to(kl.dtype)).sum(1)


def reinforce_loss(logp: torch.Tensor, old_logp: torch.Tensor, advantages: torch.Tensor, mask: torch.Tensor,
                   agg: str = "token_mean", norm_len: int | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """REINFORCE with a baseline: aggregate(−A · log π(token)) over the mask. logp (with grad),
    old_logp, advantages, mask: (B, T). Stats as the clipped surrogate's (approx_kl k3 of
    KL(old ‖ new), ratio mean; clipfrac 0), so the invariants and target_kl read the same numbers."""
    loss = aggregate_loss(-advantages * logp, mask, agg, norm_len)
    with torch.no_grad():
        log_ratio = logp - old_logp
        stats = {"clipfrac": torch.zeros((), device=logp.device),
                 "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, mask),
                 "ratio": masked_mean(torch.exp(log_ratio), mask)}
    return loss, stats
