"""Best-of-n sampling's KL to the policy it samples from (Beirami et al., 2024, "Theoretical guarantees
on the best-of-n alignment policy").

Best-of-n draws n responses from π_ref and keeps the one the reward ranks first. For a response y
whose reward level has probability p = P_ref(r = r(y)) and with b = P_ref(r < r(y)) below it,
π_bon(y) / π_ref(y) = ((b + p)^n − b^n) / p, so KL(π_bon ‖ π_ref) = E_{y∼π_bon}[log of that]. With
a continuous reward (every p → 0) this is n·F^{n−1} and the KL is log n − (n−1)/n exactly; where
responses have mass (a confident policy repeats itself) the KL is smaller, and log n − (n−1)/n
only an upper bound.
"""
from __future__ import annotations

import math

import torch


def best_of_n_kl_bound(n: int) -> float:
    """log n − (n − 1)/n: the KL of best-of-n to π_ref when no response has mass (an upper bound)."""
    return math.log(n) - (n - 1) / n


def mass_below(n_below: torch.Tensor, n_equal: torch.Tensor, pool: int, mass: torch.Tensor) -> torch.Tensor:
    """P_ref(r < r(y)) from a pool of `pool` samples of π_ref, of which n_below have a lower reward
    than y and n_equal (y included) the same, and the level's own probability `mass` (from the
    reference's log-probs): the empirical mid-distribution function (n_below + n_equal/2) / pool,
    which does not favour either side of a level, less half the level's exact mass. All (B,) -> (B,).
    A response with no mass sits at its mid-rank; a level that is the whole pool sits at 0."""
    return ((n_below + 0.5 * n_equal) / pool - 0.5 * mass).clamp(min=0.0)


def best_of_n_log_ratio(below: torch.Tensor, mass: torch.Tensor, n: int) -> torch.Tensor:
    """log π_bon(y)/π_ref(y) for chosen responses y: below = P_ref(r < r(y)) (B,), mass =
    P_ref(r = r(y)) (B,), both estimated by the caller. ((b + p)^n − b^n)/p is computed as
    Σ_{k<n} (b + p)^k · b^{n−1−k}, which does not cancel when p is tiny; b is capped at 1 − p so
    that b + p ≤ 1 when the estimates of b and p come from different samples. (B,) -> (B,)."""
    mass = mass.clamp(min=0.0, max=1.0)
    b = torch.minimum(below.clamp(min=0.0), 1.0 - mass)
    a = b + mass
    k = torch.arange(n, dtype=a.dtype, device=a.device)                      # (n,)
    terms = a.unsqueeze(1) ** k * b.unsqueeze(1) ** (n - 1 - k)              # (B, n)
    return torch.log(terms.sum(1))
