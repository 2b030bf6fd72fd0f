"""Online DPO (Guo et al., 2024), `algorithm=online_dpo`: on-policy preferences. Each step the policy
answers every prompt of the batch twice, the `reward` group scores both, the higher becomes the
chosen and the lower the rejected (a tie gives no pair), and the DPO loss trains on those pairs
against the frozen starting policy. Sampling, scoring and the pair's log-probs happen in the step;
one optimizer step per batch (Lightning's automatic optimisation)."""
from __future__ import annotations

from typing import Annotated, Literal

import pytorch_lightning as pl
import torch
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.modules.algorithms import Algorithm, register
from rlhf_exp.core.dpo import dpo_loss
from rlhf_exp.distributed import global_mean, global_mean_loss
from rlhf_exp.models.value import response_logits
from rlhf_exp.core.ops import logprobs_from_logits
from rlhf_exp.modules.heldout import InLoopEvalSettings
from rlhf_exp.modules.metrics import to_floats
from rlhf_exp.modules.optim import adamw, fused_allowed
from rlhf_exp.modules import pg as on_policy
from rlhf_exp.modules.pg import sample_rows, sample_scored
from rlhf_exp.modules.rollout import rollout_logprobs


@schema
class OnlineDPOSettings(InLoopEvalSettings):
    """Online DPO's hyperparameters (conf/algorithm/online_dpo.yaml gives each its default and meaning)."""
    policy: str | None
    ckpt_path: str | None
    checkpoint_every: Annotated[int, Field(ge=1)]
    max_steps: Annotated[int, Field(ge=1)]        # steps: sample, score, pair, one update
    batch_size: Annotated[int, Field(ge=1)]       # prompts per step, each answered twice
    max_new_tokens: Annotated[int, Field(ge=1)]
    temperature: Annotated[float, Field(gt=0)]
    missing_eos_penalty: float | None
    rollout: Literal["policy", "merged"]
    beta: Annotated[float, Field(gt=0)]
    loss_type: Literal["sigmoid", "ipo", "hinge"]
    lr: Annotated[float, Field(gt=0)]
    warmup_steps: Annotated[int, Field(ge=0)]
    sample_every: Annotated[int, Field(ge=0)]
    n_samples: Annotated[int, Field(ge=1)]


register(Algorithm(name="online_dpo", settings=OnlineDPOSettings, stage="rlhf_exp.stages.online_dpo.run",
                   on_policy=True, shardable=False, resumes_by="steps", curve="online_dpo/reward/score_mean",
                   kl_knob="algorithm.beta"))


def pair_by_score(scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For scores (2B,) of two answers per prompt (rows 2i, 2i + 1): the row of each prompt's chosen
    and rejected answer (B,), and which prompts give a pair (B,) bool: a tie gives none."""
    two = scores.view(-1, 2)
    first_wins = two[:, 0] > two[:, 1]
    base = torch.arange(two.shape[0], device=scores.device) * 2
    chosen = base + torch.where(first_wins, 0, 1)
    rejected = base + torch.where(first_wins, 1, 0)
    return chosen, rejected, two[:, 0] != two[:, 1]


class OnlineDPOModule(pl.LightningModule):
    def __init__(self, lm, ref, tokenizer, reward, s: OnlineDPOSettings):
        """lm: the policy; ref: its frozen reference (the policy with adapters off, or a copy)."""
        super().__init__()
        self.policy, self.ref, self.tokenizer, self.reward, self.s = lm, ref, tokenizer, reward, s
        self.sampled = lm  # what it samples with (on_policy.sampler)
        on_policy.begin_loop(self, ref, s)  # no minibatches, a fixed β

    # the on-policy life cycle (modules/pg.py)
    sampler = on_policy.sampler
    on_fit_start = on_policy.reward_to_device
    on_train_start = on_policy.stop_if_finished
    on_train_batch_start = on_policy.eval_mode
    on_save_checkpoint, on_load_checkpoint = on_policy.save_loop, on_policy.load_loop

    def _sequence_logps(self, model, roll) -> torch.Tensor:
        """Σ log p of each row's response tokens (EOS included, padding after it not), temperature 1."""
        logits, _ = response_logits(model, roll.input_ids, roll.attention_mask, roll.n_response, 1.0)
        return (logprobs_from_logits(logits, roll.response) * roll.mask).sum(1)

    def training_step(self, batch, batch_idx):
        s, p = self.s, "online_dpo"
        roll, prompts, scores = sample_scored(self.sampler(), self.tokenizer, self.reward, batch, s, n=2)
        chosen, rejected, paired = pair_by_score(scores)
        logps = self._sequence_logps(self.policy, roll)                          # (2B,)
        ref = (rollout_logprobs(self.ref, roll, 1.0) * roll.mask).sum(1)         # (2B,)
        c, r = chosen[paired], rejected[paired]
        n = int(paired.sum())
        stats = {f"{p}/reward/score_mean": scores.mean(), f"{p}/pairs/kept": paired.float().mean(),
                 f"{p}/kl/ref": (logps - ref).detach().mean(),
                 f"{p}/response/eos_rate": roll.has_eos.float().mean()}
        if n:
            losses, cr, rr = dpo_loss(logps[c], logps[r], ref[c], ref[r], s.beta, s.loss_type)
            loss, shown = global_mean_loss(losses.mean(), n)
            stats.update({f"{p}/train/loss": shown, f"{p}/rewards/chosen": cr.mean(), f"{p}/rewards/rejected": rr.mean(),
                          f"{p}/rewards/accuracy": (cr > rr).float().mean(), f"{p}/rewards/margin": (cr - rr).mean(),
                          f"{p}/reward/score_margin": (scores[c] - scores[r]).mean()})
        else:  # every prompt tied: nothing to learn from this batch, but every rank must still step
            loss = logps.sum() * 0.0
        stats = to_floats(global_mean(stats))
        self.log_dict(stats, on_step=True, on_epoch=False, batch_size=len(prompts))
        if s.sample_every and self.iteration % s.sample_every == 0:
            self.samples += sample_rows(self.iteration, prompts, roll.texts, scores, s.n_samples)
        on_policy.end_iteration(self, stats[f"{p}/reward/score_mean"])
        return loss

    def configure_optimizers(self):
        return adamw([q for q in self.policy.parameters() if q.requires_grad], lr=self.s.lr,
                     warmup_steps=self.s.warmup_steps, fused=fused_allowed(self))
