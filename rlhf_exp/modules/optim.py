"""Optimizers, schedules and gradient clipping the LightningModules share."""
from __future__ import annotations

import torch


def ppo_optimizer(params, lr: float) -> torch.optim.Optimizer:
    """AdamW (ε 1e-5, no weight decay), as one fused kernel over all parameters."""
    return torch.optim.AdamW(params, lr=lr, eps=1e-5, weight_decay=0.0, fused=True)


def linear_warmup(opt: torch.optim.Optimizer, warmup_steps: int) -> dict:
    """Lightning's optimizer config: the learning rate rises linearly over `warmup_steps`, then stays."""
    warmup = max(1, warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / warmup))
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients to a global norm of at most `max_norm`, only when above it (a multiply
    over every gradient costs as much as the optimizer step). Returns the norm."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
