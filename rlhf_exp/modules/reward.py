"""The reward model: a sequence classifier with one output trained on preference pairs
(Bradley-Terry) or on whole rankings (Plackett-Luce), or a two-class classifier trained on thumbs up/down (cross-entropy) whose
positive-class logit is the reward."""
from __future__ import annotations

from typing import Annotated, Literal

import pydantic
import pytorch_lightning as pl
import torch
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.core.listwise import plackett_luce_loss
from rlhf_exp.distributed import global_mean_loss
from rlhf_exp.core.reward import centering_loss, classifier_loss, pairwise_loss
from rlhf_exp.modules.optim import adamw


@schema
class RewardModelSettings:
    """`stage=reward_model` (conf/reward_model/default.yaml gives each its default and meaning)."""
    objective: Literal["bradley_terry", "plackett_luce", "classifier"]
    pairs: str | None           # pairs.jsonl; null = this pipeline's prepare output
    thumbs: str | None          # classifier: binary feedback; null = this pipeline's collect output
    class_names: Annotated[list[str], Field(min_length=2, max_length=2)]  # label 0 (thumbs down), 1 (up)
    classifier_input: Literal["completion", "prompt_completion"]
    backbone: str | None        # model dir to start from; null = this pipeline's sft/, else the `model` group
    epochs: Annotated[int, Field(ge=1)]
    checkpoint_every: Annotated[int, Field(ge=1)] | None  # steps between checkpoints; null: each epoch's end
    ckpt_path: str | None                      # a Lightning checkpoint of this stage to resume from
    batch_size: Annotated[int, Field(ge=1)]          # comparison sets (classifier: texts) per step
    lr: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    center_coef: Annotated[float, Field(ge=0)]       # weight of the reward-centering term (r_c + r_r)²
    use_margin: bool                                  # subtract a pair's `margin` inside the sigmoid
    val_fraction: Annotated[float, Field(ge=0, lt=1)]
    max_len: Annotated[int, Field(ge=8)]
    condition_on: Literal["none", "labeler", "group"]  # whose preferences: the pair's field, "[id] " before its prompt
    person: str | None          # one person's reward model: only the pairs whose `labeler` or `group` is this

    @pydantic.model_validator(mode="after")
    def _one_way(self):
        if self.person is not None and self.condition_on != "none":
            raise ValueError(f"person = {self.person!r} trains on one person's pairs alone, condition_on = "
                             f"{self.condition_on!r} on everyone's with their id in the input: expected one of "
                             "them (condition_on=none with person, or person=null)")
        return self


class RewardModule(pl.LightningModule):
    def __init__(self, model, s: RewardModelSettings):
        """model: a one-output sequence classifier (its logit is the reward)."""
        super().__init__()
        self.model, self.s = model, s

    def on_fit_start(self):
        self.model.train()  # from_pretrained returns eval mode; dropout is on while the RM trains

    def rewards(self, batch) -> torch.Tensor:
        """One forward over the batch's distinct texts: (N,) rewards."""
        return self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0]

    def _step(self, batch):
        r = self.rewards(batch)
        chosen, rejected = r[batch["chosen_idx"]], r[batch["rejected_idx"]]
        if self.s.objective == "plackett_luce":  # each comparison set's whole ranking at once
            loss, stats = plackett_luce_loss(r[batch["set_idx"]], batch["set_rank"], batch["set_mask"])
        else:
            loss, stats = pairwise_loss(chosen, rejected, batch["margin"] if self.s.use_margin else None)
        if self.s.center_coef:
            loss = loss + self.s.center_coef * centering_loss(chosen, rejected)
        return loss, stats, chosen, rejected

    def training_step(self, batch, batch_idx):
        loss, stats, _, _ = self._step(batch)
        bs = batch["margin"].shape[0]
        # under DDP: the mean over every rank's pairs (sets, for plackett_luce)
        loss, shown = global_mean_loss(loss, batch["set_idx"].shape[0] if self.s.objective == "plackett_luce" else bs)
        self.log("reward/train/loss", shown, prog_bar=True, batch_size=bs)
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
        return adamw(self.model.parameters(), lr=self.s.lr, weight_decay=self.s.weight_decay, fused=False,
                     decay_steps=max(1, self.trainer.estimated_stepping_batches))


class ClassifierModule(pl.LightningModule):
    """A two-class sequence classifier trained with cross-entropy on thumbs up (1) and down (0)."""

    def __init__(self, model, s: RewardModelSettings):
        super().__init__()
        self.model, self.s = model, s

    def on_fit_start(self):
        self.model.train()

    def _step(self, batch):
        logits = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return classifier_loss(logits, batch["labels"])

    def training_step(self, batch, batch_idx):
        loss, stats = self._step(batch)
        bs = batch["labels"].shape[0]
        loss, shown = global_mean_loss(loss, bs)  # under DDP: the mean over every rank's texts
        self.log("reward/train/loss", shown, prog_bar=True, batch_size=bs)
        self.log("reward/train/accuracy", stats["accuracy"], batch_size=bs)
        return loss

    def validation_step(self, batch, batch_idx):
        loss, stats = self._step(batch)
        self.log_dict({"reward/val/loss": loss, "reward/val/accuracy": stats["accuracy"],
                       "reward/val/margin": stats["margin"]}, prog_bar=True, batch_size=batch["labels"].shape[0])

    def configure_optimizers(self):
        return adamw(self.model.parameters(), lr=self.s.lr, weight_decay=self.s.weight_decay, fused=False,
                     decay_steps=max(1, self.trainer.estimated_stepping_batches))
