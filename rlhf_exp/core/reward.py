"""Reward-model losses (Bradley-Terry). Inputs are (B,) scalar rewards of chosen and rejected."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def pairwise_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor,
                  margin: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean of −log σ(r_chosen − r_rejected − margin) over the batch.

    chosen_rewards, rejected_rewards, margin: (B,). Stats (detached): accuracy (share with
    r_chosen > r_rejected), margin (mean r_chosen − r_rejected), chosen and rejected means.
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    logits = diff if margin is None else diff - margin
    loss = -F.logsigmoid(logits).mean()
    d = diff.detach()
    stats = {"accuracy": (d > 0).float().mean(), "margin": d.mean(),
             "chosen": chosen_rewards.detach().mean(), "rejected": rejected_rewards.detach().mean()}
    return loss, stats


def centering_loss(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> torch.Tensor:
    """Reward centering (Eisenstein et al., 2023): mean of (r_chosen + r_rejected)², which pulls the
    rewards of each pair towards a zero mean without changing their difference. (B,) -> scalar."""
    return ((chosen_rewards + rejected_rewards) ** 2).mean()
