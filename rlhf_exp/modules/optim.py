"""The one optimizer and schedule every LightningModule uses, and gradient clipping for manual
optimisation."""
from __future__ import annotations

import torch


def adamw(params, *, lr: float, weight_decay: float = 0.0, eps: float = 1e-8, fused: bool = True,
          warmup_steps: int = 0, decay_steps: int | None = None):
    """AdamW and Lightning's optimizer config for it: the learning rate rises linearly over
    `warmup_steps`, then stays, or decays linearly to 0 at step `decay_steps` when given.
    `fused` runs one kernel over all parameters (the for-each kernel rounds differently in the last
    bit; SFT and the reward model keep it, so their results stay those of earlier runs)."""
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, eps=eps, fused=fused or None)
    warmup = max(1, warmup_steps)

    def factor(step: int) -> float:
        rise = min(1.0, (step + 1) / warmup)
        return rise * (max(0.0, 1 - step / decay_steps) if decay_steps else 1.0)

    sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def fused_allowed(module) -> bool:
    """Whether a LightningModule may use the fused AdamW: not under a mixed-precision plugin
    (`trainer.precision` bf16-mixed or 16-mixed), which refuses to clip gradients around an optimizer
    that unscales inside its step, bfloat16 included (found by the GPU check's CPU fallback)."""
    trainer = getattr(module, "_trainer", None)
    return trainer is None or not str(trainer.precision).endswith("-mixed")


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Scale the gradients to a global norm of at most `max_norm`, only when above it (a multiply
    over every gradient costs as much as the optimizer step). Returns the norm."""
    params = [p for p in params if p.grad is not None]
    norm = torch.nn.utils.get_total_norm([p.grad for p in params])
    if hasattr(norm, "full_tensor"):  # sharded gradients (trainer=fsdp2): the norm over every rank's shard
        norm = norm.full_tensor()
    if norm > max_norm:
        torch.nn.utils.clip_grads_with_norm_(params, max_norm, norm)
    return norm
