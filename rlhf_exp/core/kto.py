"""Kahneman-Tversky optimisation (Ethayarajh et al., 2024): thumbs up/down trained on as they are,
no pairs, as pure functions of (B,) sums of completion-token log-probs."""
from __future__ import annotations

import torch


def kto_reference_point(policy_kl_logps: torch.Tensor, ref_kl_logps: torch.Tensor) -> torch.Tensor:
    """z₀, KTO's reference point: an estimate of KL(π ‖ π_ref) from completions paired with prompts
    they were not written for (each row's completion under another row's prompt), the batch mean of
    log π − log π_ref, clamped at 0 and detached (no gradient flows through it, as in the paper)."""
    return (policy_kl_logps - ref_kl_logps).mean().clamp(min=0).detach()


def kto_loss(policy_logps: torch.Tensor, ref_logps: torch.Tensor, desirable: torch.Tensor, z0: torch.Tensor,
             beta: float, desirable_weight: float = 1.0, undesirable_weight: float = 1.0
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The KTO loss over a batch of single completions (B,), each desirable (thumbs up) or not.

    r = log π(y|x) − log π_ref(y|x) (the implied reward, over β);
    v = λ_D·σ(β(r − z₀)) for a desirable completion, λ_U·σ(β(z₀ − r)) for an undesirable one;
    loss = mean over the batch of λ_y − v = λ_y·(1 − σ(…)). λ_D and λ_U weigh unbalanced feedback
    (the paper keeps λ_D·n_D / λ_U·n_U within [1, 4/3]). Stats: the loss, z₀, and the mean implied
    reward β·r of each kind (NaN where the batch has none), detached."""
    r = policy_logps - ref_logps
    desirable = desirable.bool()
    up = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    down = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    losses = torch.where(desirable, up, down)
    loss = losses.mean()
    rewards = (beta * r).detach()
    nan = torch.tensor(float("nan"), dtype=rewards.dtype, device=rewards.device)
    stats = {"loss": loss.detach(), "kl": z0.detach(),
             "rewards/desirable": rewards[desirable].mean() if desirable.any() else nan,
             "rewards/undesirable": rewards[~desirable].mean() if (~desirable).any() else nan}
    return loss, stats
