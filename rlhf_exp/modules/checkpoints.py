"""Checkpoints of the on-policy stages every N iterations, so that a crash loses at most N."""
from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl


class PeriodicCheckpoint(pl.Callback):
    """`dirpath/last.ckpt` after every `every`-th training batch (an iteration of PPO, GRPO or RLOO)
    and at the end of fit. Lightning writes it atomically (into a temporary file that replaces the
    old one), so a crash while writing leaves the previous checkpoint whole. Lightning's
    ModelCheckpoint counts optimizer steps under manual optimisation, of which an iteration makes a
    varying number (`target_kl` stops its epochs early), hence this count of batches."""

    def __init__(self, dirpath: str | Path, every: int):
        self.path, self.every = Path(dirpath) / "last.ckpt", every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.fit_loop.total_batch_idx + 1) % self.every == 0:
            trainer.save_checkpoint(self.path)

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)
