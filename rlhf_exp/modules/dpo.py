"""DPO: the policy learns from preference pairs directly (or, with loss_type=plackett_luce, from each
comparison set's whole ranking), against a frozen reference whose log-probs are computed once,
before training (`cache_reference_logps`), not at every step."""
from __future__ import annotations

from typing import Annotated, Literal

import pytorch_lightning as pl
import torch
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.modules.algorithms import Algorithm, register
from rlhf_exp.core.dpo import dpo_loss
from rlhf_exp.core.listwise import plackett_luce_loss
from rlhf_exp.distributed import global_mean_loss
from rlhf_exp.core.ops import logprobs_from_logits
from rlhf_exp.models.training import adapters_off
from rlhf_exp.modules.metrics import to_floats
from rlhf_exp.modules.heldout import InLoopEvalSettings
from rlhf_exp.modules.optim import adamw, fused_allowed


def completion_logps(lm, batch) -> torch.Tensor:
    """Σ log p of each row's completion tokens (labels ≠ −100), right-padded rows: (N,).
    Only the positions that predict a completion token go through the LM head (a boolean
    `logits_to_keep`), not the prompt's or the padding's."""
    labels = batch["labels"]                                               # (N, L)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != -100                                   # position t predicts token t + 1
    logits = lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep,
                use_cache=False).logits                                    # (K, V), K kept positions
    logp = logprobs_from_logits(logits, labels[:, 1:][keep[:, :-1]])      # (K,)
    rows = keep.nonzero()[:, 0]                                            # the row of each kept position
    return torch.zeros(labels.shape[0], dtype=logp.dtype, device=logp.device).index_add(0, rows, logp)


@schema
class DPOSettings(InLoopEvalSettings):
    """DPO's hyperparameters, `algorithm=dpo` (conf/algorithm/dpo.yaml gives each its default and meaning)."""
    policy: str | None           # policy to align; null = this pipeline's sft/, else the model group
    pairs: str | None            # pairs.jsonl; null = this pipeline's prepare output
    beta: Annotated[float, Field(gt=0)]
    loss_type: Literal["sigmoid", "ipo", "hinge", "plackett_luce"]
    label_smoothing: Annotated[float, Field(ge=0, lt=0.5)]
    epochs: Annotated[int, Field(ge=1)]
    checkpoint_every: Annotated[int, Field(ge=1)] | None  # steps between checkpoints; null: each epoch's end
    ckpt_path: str | None                      # a Lightning checkpoint of this stage to resume from
    batch_size: Annotated[int, Field(ge=1)]     # pairs (plackett_luce: comparison sets) per step
    lr: Annotated[float, Field(gt=0)]
    warmup_steps: Annotated[int, Field(ge=0)]
    max_len: Annotated[int, Field(ge=8)]
    val_fraction: Annotated[float, Field(ge=0, lt=1)]


register(Algorithm(name="dpo", settings=DPOSettings, stage="rlhf_exp.stages.dpo.run", on_policy=False, shardable=False,
                   resumes_by="epochs", curve="dpo/rewards/margin", kl_knob="algorithm.beta"))


def pair_refs(chunk: list[dict], logps: list[float]) -> list[tuple[float, float]]:
    """Encoded pairs are collated chosen rows then rejected rows: (chosen, rejected) of each."""
    return list(zip(logps[:len(chunk)], logps[len(chunk):]))


def set_refs(chunk: list[dict], logps: list[float]) -> list[list[float]]:
    """Encoded sets are collated set after set: each set's items' log-probs."""
    out, start = [], 0
    for row in chunk:
        out.append(logps[start:start + len(row["items"])])
        start += len(row["items"])
    return out


@torch.no_grad()
def cache_reference_logps(lm, rows: list[dict], collate, batch_size: int = 64, refs=pair_refs) -> None:
    """Add to every encoded row (a pair, or with `refs=set_refs` a set) its completions' log-probs
    under `lm`, the reference (in eval mode: no dropout; a LoRA model with its adapters off), as
    `row["ref"]`; computed once, before training."""
    was_training = lm.training
    lm.eval()
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        with adapters_off(lm):
            logps = completion_logps(lm, collate(chunk)).tolist()
        for row, ref in zip(chunk, refs(chunk, logps), strict=True):
            row["ref"] = ref
    lm.train(was_training)


class DPOModule(pl.LightningModule):
    def __init__(self, policy, s: DPOSettings):
        """policy: the causal LM being aligned (its reference log-probs are in the batches)."""
        super().__init__()
        self.policy, self.s = policy, s

    def on_train_batch_start(self, batch, batch_idx):
        """Dropout off, as for the reference log-probs (eval mode; gradients flow as usual)."""
        self.policy.eval()

    def _step(self, batch, stage: str):
        if self.s.loss_type == "plackett_luce":
            return self._listwise_step(batch, stage)
        logps = completion_logps(self.policy, batch)         # chosen rows, then rejected rows: (2P,)
        n = logps.shape[0] // 2
        ref = batch["ref_logps"]
        losses, chosen, rejected = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], self.s.beta,
                                            self.s.loss_type, self.s.label_smoothing)
        loss, shown = global_mean_loss(losses.mean(), n)  # under DDP: the mean over every rank's pairs
        prefix = "dpo/train" if stage == "train" else "dpo/val"
        rewards = "dpo/rewards" if stage == "train" else "dpo/val/rewards"
        stats = to_floats({f"{prefix}/loss": shown, f"{rewards}/chosen": chosen.mean(),
                           f"{rewards}/rejected": rejected.mean(),
                           f"{rewards}/accuracy": (chosen > rejected).float().mean(),
                           f"{rewards}/margin": (chosen - rejected).mean()})  # one device sync
        self.log_dict(stats, prog_bar=stage == "train", batch_size=n)
        return loss

    def _listwise_step(self, batch, stage: str):
        """Plackett-Luce on each set's implicit rewards β·(log π − log π_ref) (the DPO paper, A.3)."""
        rewards = self.s.beta * (completion_logps(self.policy, batch) - batch["ref_logps"])   # (rows,)
        loss, stats = plackett_luce_loss(rewards[batch["set_idx"]], batch["set_rank"], batch["set_mask"])
        prefix = "dpo/train" if stage == "train" else "dpo/val"
        group = "dpo/rewards" if stage == "train" else "dpo/val/rewards"
        n = batch["set_idx"].shape[0]
        loss, shown = global_mean_loss(loss, n)  # under DDP: the mean over every rank's sets
        self.log_dict(to_floats({f"{prefix}/loss": shown, f"{group}/accuracy": stats["accuracy"],
                                 f"{group}/margin": stats["margin"]}), prog_bar=stage == "train", batch_size=n)
        return loss

    def training_step(self, batch, batch_idx):
        return self._step(batch, "train")

    def validation_step(self, batch, batch_idx):
        self._step(batch, "val")

    def configure_optimizers(self):
        return adamw(self.policy.parameters(), lr=self.s.lr, warmup_steps=self.s.warmup_steps, fused=fused_allowed(self))
