"""SFT: fine-tune the policy on demonstrations, the loss on completion tokens only."""
from __future__ import annotations

import pytorch_lightning as pl
import torch

from rlhf_exp.models.generation import sample
from rlhf_exp.modules.optim import linear_warmup


class SFTModule(pl.LightningModule):
    def __init__(self, policy, tokenizer, lr: float, weight_decay: float, warmup_steps: int,
                 sample_prompts: list[str], sample_max_new_tokens: int):
        super().__init__()
        self.policy, self.tokenizer = policy, tokenizer
        self.lr, self.weight_decay, self.warmup_steps = lr, weight_decay, warmup_steps
        self.sample_prompts, self.sample_max_new_tokens = sample_prompts, sample_max_new_tokens
        self.samples: list[str] = []  # one block of text per validation epoch

    def _loss(self, batch) -> torch.Tensor:
        # transformers shifts the labels and averages over tokens whose label is not −100
        return self.policy(**batch).loss

    def training_step(self, batch, batch_idx):
        loss = self._loss(batch)
        self.log("sft/train/loss", loss, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch, batch_idx):
        self.log("sft/val/loss", self._loss(batch), prog_bar=True, batch_size=batch["input_ids"].shape[0])

    def on_validation_epoch_end(self):
        if self.trainer.sanity_checking or not self.sample_prompts:
            return
        out = sample(self.policy, self.tokenizer, self.sample_prompts, 1, temperature=0.0, top_p=1.0,
                     max_new_tokens=self.sample_max_new_tokens, batch_size=len(self.sample_prompts))
        lines = [f"## epoch {self.current_epoch}"]
        lines += [f"{p}\n  -> {t[0]}" for p, t in zip(self.sample_prompts, out.texts)]
        self.samples.append("\n".join(lines))

    def configure_optimizers(self):
        opt = torch.optim.AdamW(self.policy.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        return linear_warmup(opt, self.warmup_steps)
