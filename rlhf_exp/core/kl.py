"""Per-token estimators of KL(π ‖ π_ref) from samples of π (Schulman, "Approximating KL
divergence"). logp, ref_logp: (B, T) log-probs of the sampled tokens under π and π_ref."""
from __future__ import annotations

import torch


def kl_k1(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k1 = log π − log π_ref: unbiased, high variance, can be negative. (B, T)."""
    return logp - ref_logp


def kl_k3(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """k3 = (r − 1) − log r with r = π_ref / π: unbiased, low variance, never negative. (B, T)."""
    log_r = ref_logp - logp
    return torch.expm1(log_r) - log_r


KL_ESTIMATORS = {"k1": kl_k1, "k3": kl_k3}
