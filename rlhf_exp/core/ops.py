"""Masked statistics and log-prob helpers. Tensors are (B, T) with a `mask` that is 1 on the
positions that count (response tokens) and 0 elsewhere; every mean is a token mean over the mask,
sum(x·mask) / sum(mask)."""
from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """sum(x·mask) / sum(mask), over everything or along `dim`. x, mask: (B, T)."""
    mask = mask.to(x.dtype)
    if dim is None:
        return (x * mask).sum() / mask.sum()
    return (x * mask).sum(dim) / mask.sum(dim)


AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token_mean",
                   norm_len: int | None = None) -> torch.Tensor:
    """A per-token loss (B, T) reduced to a scalar over the mask:

    - token_mean: Σ x·m / Σ m (every token of the batch weighs the same; PPO);
    - seq_mean_token_mean: the mean over sequences of each sequence's token mean (GRPO as published:
      every sequence weighs the same, so a long response's tokens weigh less);
    - seq_mean_token_sum_norm: Σ x·m / (B · norm_len), norm_len defaulting to T (Dr. GRPO: a constant
      normaliser, no length bias).
    """
    m = mask.to(per_token.dtype)
    if mode == "token_mean":
        return (per_token * m).sum() / m.sum()
    if mode == "seq_mean_token_mean":
        return ((per_token * m).sum(1) / m.sum(1)).mean()
    if mode == "seq_mean_token_sum_norm":
        return (per_token * m).sum() / (per_token.shape[0] * (per_token.shape[1] if norm_len is None else norm_len))
    raise ValueError(f"aggregation mode {mode!r}: expected one of {', '.join(AGGREGATIONS)}")


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the masked entries (Bessel-corrected by default). x, mask: (B, T) -> scalar."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.sum()
        var = var * n / (n - 1)
    return var


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8,
                  moments: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """(x − mean) / std over the masked entries; the mean is kept when `shift_mean` is False.
    Masked-out positions come back as 0. `moments` (mean, unbiased variance) computed elsewhere (over
    every rank's batch) replace the local ones. x, mask: (B, T) -> (B, T)."""
    mean, var = moments if moments is not None else (masked_mean(x, mask), masked_var(x, mask))
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return out * mask.to(x.dtype)


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under softmax(logits). logits: (B, T, V), tokens: (B, T) -> (B, T)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) at each position: logsumexp(z) − Σ softmax(z)·z.
    logits: (B, T, V) -> (B, T)."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - (torch.softmax(logits, dim=-1) * logits).sum(-1)
