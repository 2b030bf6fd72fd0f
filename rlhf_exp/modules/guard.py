"""A trained stage stops at the first non-finite loss or statistic, with a named error, before it
saves anything: a diverged model is never a stage's output, and the last checkpoint stays as it was.
Nor is a model that training left as it was."""
from __future__ import annotations

import math
import sys

import pytorch_lightning as pl
import torch

from rlhf_exp.errors import DivergenceError, StalledError


class StopOnNonFinite(pl.Callback):
    """Checks what each training step returns: the loss (automatic optimisation), or PPO's
    statistics of the iteration (losses, rewards, advantages and returns, gradient norms).

    `skip=True` (`nonfinite=skip`) goes on instead: before each optimizer step, gradients that are
    not all finite are dropped (every `grad` set to None, which the optimizer skips: no update, no
    moment or weight-decay change), and the steps so skipped are counted in
    `<stage>/nonfinite/skipped_steps`."""

    def __init__(self, stage: str, skip: bool = False):
        self.stage, self.skip, self.skipped = stage, skip, 0

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.skip:
            return
        params = [p for p in pl_module.parameters() if p.grad is not None]
        if params and not all(bool(torch.isfinite(p.grad).all()) for p in params):
            for p in params:
                p.grad = None
            self.skipped += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        values = outputs if isinstance(outputs, dict) else {"loss": outputs}
        bad = {k: float(v) for k, v in values.items() if v is not None and not math.isfinite(float(v))}
        if self.skip:
            pl_module.log(f"{self.stage}/nonfinite/skipped_steps", float(self.skipped), on_step=True, on_epoch=False)
            return
        if bad:
            where = f"iteration {pl_module.iteration}" if hasattr(pl_module, "iteration") else \
                f"step {trainer.global_step} (epoch {trainer.current_epoch}, batch {batch_idx})"
            raise DivergenceError(
                f"{self.stage} diverged at {where}: " + ", ".join(f"{k} = {v}" for k, v in bad.items())
                + f"; nothing of this stage was saved (its last checkpoint, if any, is in checkpoints/{self.stage}/)."
                " A lower learning rate or gradient-norm limit may help (or nonfinite=skip to skip such steps).")


def fingerprint(module) -> torch.Tensor:
    """One float64 sum per trainable tensor: cheap to keep, and changed by any update of it."""
    return torch.stack([p.detach().double().sum() for p in module.parameters() if p.requires_grad])


class WeightsMustMove(pl.Callback):
    """A stage that trains nothing is an error, not a silent success: no trainable parameter at the
    start; or, at the end of fit (before the stage saves anything), every trainable weight as it was
    although gradients flowed (a learning rate of 0, an optimizer over the wrong parameters). Steps
    whose gradients were all zero (GRPO when every group's scores were equal) only get a warning:
    there was nothing to learn."""

    def __init__(self, stage: str):
        self.stage, self.start, self.steps, self.gradients = stage, None, 0, False

    def on_train_start(self, trainer, pl_module):
        if not any(p.requires_grad for p in pl_module.parameters()):
            raise StalledError(f"{self.stage}: the model has no trainable parameter (all frozen); nothing to train")
        self.start, self.steps = fingerprint(pl_module), trainer.global_step

    def on_before_optimizer_step(self, trainer, pl_module, optimizer):
        if not self.gradients:  # until the first step with a gradient: then nothing more to look at
            self.gradients = any(p.grad is not None and bool(p.grad.any()) for p in pl_module.parameters())

    def on_train_end(self, trainer, pl_module):
        steps = trainer.global_step - self.steps
        if steps == 0 or not torch.equal(fingerprint(pl_module), self.start):
            return
        if self.gradients:
            raise StalledError(f"{self.stage}: {steps} optimizer step(s) changed no weight although gradients "
                               "flowed (a learning rate of 0? an optimizer over other parameters?); nothing of "
                               "this stage was saved")
        print(f"warning: {self.stage}: {steps} optimizer step(s) changed no weight: every gradient was zero "
              "(nothing to learn: e.g. every group's scores equal)", file=sys.stderr)
