"""Plackett-Luce: the likelihood of a whole ranking of K items from their scores, the listwise
generalisation of Bradley-Terry (for K = 2 it is −log σ(s_1 − s_2)). Used on a reward model's
scores and on DPO's implicit rewards β·(log π − log π_ref) (the DPO paper's appendix A.3).

Ties follow the pairs' rule: tied items are preferred to neither, so an item competes only with
those ranked strictly below it; an item with none below contributes nothing.
"""
from __future__ import annotations

import torch


def plackett_luce_loss(scores: torch.Tensor, ranks: torch.Tensor, mask: torch.Tensor
                       ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean over sets of −Σ_i [s_i − log(e^{s_i} + Σ_{j ranked below i} e^{s_j})].

    scores (S, K) with grad; ranks (S, K), 1 = best, equal = tie; mask (S, K), 1 on the set's items
    (sets of fewer than K items are padded). Stats (detached): accuracy, the share of ordered pairs
    (i ranked above j) with s_i > s_j; margin, the mean s_i − s_j over those pairs."""
    m = mask.bool()
    below = (ranks.unsqueeze(1) > ranks.unsqueeze(2)) & m.unsqueeze(1) & m.unsqueeze(2)   # (S, i, j): j below i
    rivals = below | torch.eye(scores.shape[1], dtype=torch.bool, device=scores.device)   # i competes with itself too
    lse = torch.logsumexp(scores.unsqueeze(1).expand(-1, scores.shape[1], -1).masked_fill(~rivals, float("-inf")), dim=2)
    counted = m & below.any(dim=2)                                                        # (S, K)
    loss = -((scores - lse) * counted).sum(1).mean()
    with torch.no_grad():
        diff = scores.unsqueeze(2) - scores.unsqueeze(1)                                  # (S, i, j): s_i − s_j
        n = below.sum().clamp(min=1)
        stats = {"accuracy": ((diff > 0) & below).sum() / n, "margin": (diff * below).sum() / n}
    return loss, stats
