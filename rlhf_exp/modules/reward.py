"""The reward model: a sequence classifier with one output, trained on preference pairs."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from rlhf_exp.core.reward import centering_loss, pairwise_loss


class RewardModule(pl.LightningModule):
    def __init__(self, model, lr: float, weight_decay: float, center_coef: float, use_margin: bool):
        super().__init__()
        self.model = model
        self.lr, self.weight_decay = lr, weight_decay
        self.center_coef, self.use_margin = center_coef, use_margin

    def on_fit_start(self):
        self.model.train()  # from_pretrained returns eval mode; dropout is on while the RM trains

    def rewards(self, batch) -> tuple[torch.Tensor, torch.Tensor]:
        """One forward over the batch's distinct texts; (P,) rewards of each pair's chosen and rejected."""
        r = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]
        return r[batch["chosen_idx"]], r[batch["rejected_idx"]]

    def _step(self, batch):
        chosen, rejected = self.rewards(batch)
        loss, stats = pairwise_loss(chosen, rejected, batch["margin"] if self.use_margin else None)
        if self.center_coef:
            loss = loss + self.center_coef * centering_loss(chosen, rejected)
        return loss, stats, chosen, rejected

    def training_step(self, batch, batch_idx):
        loss, stats, _, _ = self._step(batch)
        bs = batch["margin"].shape[0]
        self.log("reward/train/loss", loss, prog_bar=True, batch_size=bs)
        self.log("reward/train/accuracy", stats["accuracy"], batch_size=bs)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, stats, chosen, rejected = self._step(batch)
        bs = batch["margin"].shape[0]
        self.log_dict({"reward/val/loss": loss, "reward/val/accuracy": stats["accuracy"],
                       "reward/val/margin": stats["margin"]}, prog_bar=True, batch_size=bs)
        correct = (chosen > rejected).float()
        unanimous = batch["agreement"] >= 1.0
        for name, mask in (("unanimous", unanimous), ("split", ~unanimous)):
            if mask.any():  # accuracy by how much the labelers agreed on the pair
                self.log(f"reward/val/accuracy_{name}", correct[mask].mean(), batch_size=int(mask.sum()))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.model.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = max(1, self.trainer.estimated_stepping_batches)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: max(0.0, 1 - step / total))  # linear decay to 0
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
