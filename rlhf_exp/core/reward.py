"""Reward-model losses: Bradley-Terry on pairs ((B,) rewards of chosen and rejected), and the
cross-entropy of a two-class classifier trained on thumbs up/down."""
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


def classifier_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy of a classifier: mean of −log softmax(logits)[label]. logits (B, C), labels (B,)
    class indices. Stats: accuracy (argmax = label), and the mean logit margin of the true class
    over the best other class."""
    loss = F.cross_entropy(logits.float(), labels)
    with torch.no_grad():
        true = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
        other = logits.scatter(1, labels.unsqueeze(1), float("-inf")).max(1).values
        stats = {"accuracy": (logits.argmax(1) == labels).float().mean(), "margin": (true - other).float().mean()}
    return loss, stats
