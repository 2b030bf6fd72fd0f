"""Direct preference optimisation (Rafailov et al.) and its IPO and hinge variants, as pure
functions of (B,) sums of completion-token log-probs."""
from __future__ import annotations

import torch
import torch.nn.functional as F

LOSS_TYPES = ("sigmoid", "ipo", "hinge")


def dpo_loss(policy_chosen_logps: torch.Tensor, policy_rejected_logps: torch.Tensor,
             ref_chosen_logps: torch.Tensor, ref_rejected_logps: torch.Tensor, beta: float,
             loss_type: str = "sigmoid", label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-pair losses (B,) and the implicit rewards of the chosen and rejected completions (B,).

    logits = (π_c − π_r) − (ref_c − ref_r), all (B,) sums of log-probs over completion tokens.
    - sigmoid (DPO): −(1 − ls)·log σ(β·logits) − ls·log σ(−β·logits)  (ls: label smoothing, cDPO)
    - ipo: (logits − 1/(2β))²
    - hinge: relu(1 − β·logits)
    Rewards: β·(π_c − ref_c) and β·(π_r − ref_r), detached.
    """
    logits = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    if loss_type == "sigmoid":
        losses = -(1 - label_smoothing) * F.logsigmoid(beta * logits) - label_smoothing * F.logsigmoid(-beta * logits)
    elif loss_type == "ipo":
        losses = (logits - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = torch.relu(1 - beta * logits)
    else:
        raise ValueError(f"loss_type = {loss_type!r}: expected one of {', '.join(LOSS_TYPES)}")
    chosen_rewards = (beta * (policy_chosen_logps - ref_chosen_logps)).detach()
    rejected_rewards = (beta * (policy_rejected_logps - ref_rejected_logps)).detach()
    return losses, chosen_rewards, rejected_rewards


def simpo_loss(chosen_avg_logps: torch.Tensor, rejected_avg_logps: torch.Tensor, beta: float, gamma: float
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """SimPO (Meng et al., 2024): reference-free, length-normalised. Per-pair losses (B,) and the
    implicit rewards of the chosen and rejected completions (B,).

    Inputs are (B,) means of log-probs over each completion's tokens (log π(y|x) / |y|).
    loss = −log σ(β·(c − r) − γ), γ the target reward margin; rewards β·c and β·r, detached.
    """
    chosen_rewards, rejected_rewards = beta * chosen_avg_logps, beta * rejected_avg_logps
    losses = -F.logsigmoid(chosen_rewards - rejected_rewards - gamma)
    return losses, chosen_rewards.detach(), rejected_rewards.detach()
