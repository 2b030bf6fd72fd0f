"""SFT: fine-tune the policy on demonstrations, the loss on completion tokens only."""
from __future__ import annotations

from typing import Annotated, Literal

import pytorch_lightning as pl
import torch
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.distributed import global_mean_loss
from rlhf_exp.models.generation import sample
from rlhf_exp.modules.optim import adamw


@schema
class SFTSettings:
    """`stage=sft` (conf/sft/default.yaml gives each its default and meaning)."""
    styles: Literal["mixed", "helpful"]     # synthetic world: what the demonstrations show
    per_prompt: Annotated[int, Field(ge=1)]
    epochs: Annotated[int, Field(ge=1)]
    checkpoint_every: Annotated[int, Field(ge=1)] | None  # steps between checkpoints; null: each epoch's end
    ckpt_path: str | None                      # a Lightning checkpoint of this stage to resume from
    batch_size: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    warmup_steps: Annotated[int, Field(ge=0)]
    val_fraction: Annotated[float, Field(ge=0, lt=1)]
    max_len: Annotated[int, Field(ge=8)]
    n_samples: Annotated[int, Field(ge=0)]
    sample_max_new_tokens: Annotated[int, Field(ge=1)]


class SFTModule(pl.LightningModule):
    def __init__(self, policy, tokenizer, s: SFTSettings, sample_prompts: list[str]):
        """policy: the causal LM to fine-tune; sample_prompts: sampled (greedy) after each validation."""
        super().__init__()
        self.policy, self.tokenizer, self.s = policy, tokenizer, s
        self.sample_prompts = sample_prompts
        self.samples: list[str] = []  # one block of text per validation epoch

    def _loss(self, batch) -> torch.Tensor:
        # transformers shifts the labels and averages over tokens whose label is not −100
        return self.policy(**batch).loss

    def training_step(self, batch, batch_idx):
        # under DDP: the mean over every rank's completion tokens (one process's loss on the whole batch)
        loss, shown = global_mean_loss(self._loss(batch), (batch["labels"][:, 1:] != -100).sum())
        self.log("sft/train/loss", shown, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("sft/val/loss", self._loss(batch), prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or not self.sample_prompts:
            return
        out = sample(self.policy, self.tokenizer, self.sample_prompts, 1, temperature=0.0, top_p=1.0,
                     max_new_tokens=self.s.sample_max_new_tokens, batch_size=len(self.sample_prompts))
        lines = [f"## epoch {self.current_epoch}"]
        lines += [f"{p}\n  -> {t[0]}" for p, t in zip(self.sample_prompts, out.texts)]
        self.samples.append("\n".join(lines))

    def configure_optimizers(self):
        return adamw(self.policy.parameters(), lr=self.s.lr, weight_decay=self.s.weight_decay,
                     fused=False, warmup_steps=self.s.warmup_steps)
