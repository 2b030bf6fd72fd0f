"""A trained stage stops at the first non-finite loss or statistic, with a named error, before it
saves anything: a diverged model is never a stage's output, and the last checkpoint stays as it was."""
from __future__ import annotations

import math

import pytorch_lightning as pl

import torch

from rlhf_exp.errors import DivergenceError, StalledError


class StopOnNonFinite(pl.Callback):
    """Checks what each training step returns: the loss (automatic optimisation), or PPO's
    statistics of the iteration (losses, rewards, advantages and returns, gradient norms)."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        values = outputs if isinstance(outputs, dict) else {"loss": outputs}
        bad = {k: float(v) for k, v in values.items() if v is not None and not math.isfinite(float(v))}
        if bad:
            where = f"iteration {pl_module.iteration}" if hasattr(pl_module, "iteration") else \
                f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
            raise DivergenceError(
                f"{self.stage} diverged at {where}: " + ", ".join(f"{k} = {v}" for k, v in bad.items())
                + f"; nothing of this stage was saved (its last checkpoint, if any, is in checkpoints/{self.stage}/)."
                " A lower learning rate or gradient-norm limit may help.")


def fingerprint(module) -> torch.Tensor:
    """One float64 sum per trainable tensor: cheap to keep, and changed by any update of it."""
    return torch.stack([p.detach().double().sum() for p in module.parameters() if p.requires_grad])


class WeightsMustMove(pl.Callback):
    """A stage that trains nothing is an error, not a silent success: no trainable parameter at
    the start, or, after the steps it ran, every trainable weight as it was (checked at the end of
    fit, before the stage saves anything)."""

    def __init__(self, stage: str):
        self.stage, self.start, self.steps = stage, None, 0

    def on_train_start(self, trainer, pl_module):
        if not any(p.requires_grad for p in pl_module.parameters()):
            raise StalledError(f"{self.stage}: the model has no trainable parameter (all frozen); nothing to train")
        self.start, self.steps = fingerprint(pl_module), trainer.global_step

    def on_train_end(self, trainer, pl_module):
        steps = trainer.global_step - self.steps
        if steps > 0 and torch.equal(fingerprint(pl_module), self.start):
            raise StalledError(f"{self.stage}: {steps} optimizer step(s) changed no weight (a learning rate of 0? "
                               "parameters the loss does not reach?); nothing of this stage was saved")
