"""A trained stage stops at the first non-finite loss or statistic, with a named error, before it
saves anything: a diverged model is never a stage's output, and the last checkpoint stays as it was."""
from __future__ import annotations

import math

import pytorch_lightning as pl

from rlhf_exp.errors import DivergenceError


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
