"""GRPO and RLOO: critic-free policy optimisation (manual optimisation; one `training_step` is one
iteration). Each prompt of the batch is answered `group_size` times; the group is the baseline.

Phase 1 (no grad): sample groups, score them, old and reference log-probs (one forward each), a
sequence advantage per response from its group (GRPO: (r − mean) / std; RLOO: r − mean of the
others), given to every token. Phase 2: `ppo_epochs` passes over shuffled minibatches of the
clipped surrogate (GRPO; RLOO by choice, else REINFORCE), plus β·KL to the reference as a loss term
for GRPO's default form. PPO's sampling, scoring, update loop, invariants and stopping rules are
shared (`modules.pg`).
"""
from __future__ import annotations

import time
from typing import Annotated, Literal

import pydantic
import pytorch_lightning as pl
import torch
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.modules.algorithms import Algorithm, register
from rlhf_exp.core.grpo import group_advantages, reinforce_loss, rloo_advantages, sequence_rewards
from rlhf_exp.core.kl import KL_ESTIMATORS
from rlhf_exp.core.ops import AGGREGATIONS, aggregate_loss, entropy_from_logits, logprobs_from_logits, masked_mean
from rlhf_exp.core.ppo import policy_loss
from rlhf_exp.distributed import world_size
from rlhf_exp.models.sharding import shard_models
from rlhf_exp.models.value import response_logits
from rlhf_exp.modules.heldout import InLoopEvalSettings
from rlhf_exp.modules.optim import adamw
from rlhf_exp.modules import pg as on_policy
from rlhf_exp.modules.pg import (check_first_minibatch, kl_controller, log_iteration, sample_rows, sample_scored,
                                 update_epochs)
from rlhf_exp.modules.rollout import Experience, rollout_logprobs

Aggregation = Literal[AGGREGATIONS]


@schema
class _GroupSettings(InLoopEvalSettings):
    """What GRPO and RLOO share (each algorithm's YAML gives every default and meaning)."""
    policy: str | None
    ckpt_path: str | None
    checkpoint_every: Annotated[int, Field(ge=1)]  # iterations between checkpoints
    max_steps: Annotated[int, Field(ge=1)]
    reward_threshold: float | None
    threshold_window: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=2)]    # B: responses per iteration, batch_size / group_size prompts
    group_size: Annotated[int, Field(ge=2)]    # responses per prompt
    max_new_tokens: Annotated[int, Field(ge=1)]
    temperature: Annotated[float, Field(gt=0)]
    rollout: Literal["policy", "merged"]       # sample with the policy, or its LoRA-merged copy (models/sampler.py)
    missing_eos_penalty: float | None
    ppo_epochs: Annotated[int, Field(ge=1)]
    minibatches: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0)]
    max_grad_norm: Annotated[float, Field(gt=0)]
    clip_eps: Annotated[float, Field(gt=0, lt=1)]
    target_kl: Annotated[float, Field(gt=0)] | None
    kl_estimator: Literal["k1", "k3"]
    loss_agg: Aggregation
    norm_len: Annotated[int, Field(ge=1)] | None
    check_invariants: bool
    sample_every: Annotated[int, Field(ge=0)]
    n_samples: Annotated[int, Field(ge=0)]

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.batch_size % self.group_size:
            raise ValueError(f"batch_size = {self.batch_size}: expected a multiple of group_size ({self.group_size})")
        if self.minibatches > self.batch_size:
            raise ValueError(f"minibatches = {self.minibatches}: expected at most batch_size ({self.batch_size})")
        return self


@schema
class GRPOSettings(_GroupSettings):
    """GRPO (DeepSeekMath), `algorithm=grpo` (conf/algorithm/grpo.yaml)."""
    beta: Annotated[float, Field(ge=0)]        # β: weight of KL(π ‖ π_ref)
    kl_penalty: Literal["loss", "reward"]      # β·KL as a loss term (DeepSeekMath) or subtracted from the score
    scale_by_std: bool                         # divide by the group's std (false: Dr. GRPO)
    std_eps: Annotated[float, Field(gt=0)]


@schema
class RLOOSettings(_GroupSettings):
    """RLOO (Ahmadian et al., 2024), `algorithm=rloo` (conf/algorithm/rloo.yaml)."""
    loss: Literal["reinforce", "clipped"]
    kl_coef: Annotated[float, Field(ge=0)]     # KL β in the reward: score − kl_coef·Σ KL
    kl_controller: Literal["fixed", "adaptive"]
    kl_target: Annotated[float, Field(gt=0)]
    kl_horizon: Annotated[int, Field(ge=1)]


register(Algorithm(name="grpo", settings=GRPOSettings, stage="rlhf_exp.stages.grpo.run", on_policy=True, shardable=True,
                   resumes_by="iterations", curve="grpo/reward/score_mean", kl_knob="algorithm.beta"))
register(Algorithm(name="rloo", settings=RLOOSettings, stage="rlhf_exp.stages.grpo.run", on_policy=True, shardable=True,
                   resumes_by="iterations", curve="rloo/reward/score_mean", kl_knob="algorithm.kl_coef"))


def grpo_advantages(s: GRPOSettings, scores, kl, mask, kl_coef) -> torch.Tensor:
    """(B,) sequence advantages: group-normalised scores (minus β·Σ KL when the penalty is in the reward)."""
    rewards = sequence_rewards(scores, kl, mask, s.beta) if s.kl_penalty == "reward" else scores
    return group_advantages(rewards, s.group_size, s.scale_by_std, s.std_eps)


def rloo_sequence_advantages(s: RLOOSettings, scores, kl, mask, kl_coef) -> torch.Tensor:
    """(B,) sequence advantages: leave-one-out baseline of score − kl_coef·Σ KL."""
    return rloo_advantages(sequence_rewards(scores, kl, mask, kl_coef), s.group_size)


class GroupModule(pl.LightningModule):
    """GRPO or RLOO, as the settings' type says; metrics under `grpo/` or `rloo/`."""

    def __init__(self, lm, ref_lm, tokenizer, reward, s: GRPOSettings | RLOOSettings, seed: int = 0):
        """lm: the policy (a causal LM, no value head); ref_lm: the frozen starting policy
        (`models.training.reference`); reward: has `score(prompts, completions) -> (B,)`."""
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.ref, self.tokenizer, self.reward, self.s = lm, ref_lm, tokenizer, reward, s
        self.sampled = lm  # what rollouts sample with (on_policy.sampler)
        on_policy.begin_loop(self, ref_lm, s, seed=seed,  # GRPO's β is fixed; RLOO's KL coefficient may move
                      kl_ctl=kl_controller(s) if isinstance(s, RLOOSettings) else None)
        self.prefix = self.loop_key  # metrics, checkpoint state and samples under grpo/ or rloo/
        self.sequence_advantages = grpo_advantages if isinstance(s, GRPOSettings) else rloo_sequence_advantages
        self.kl_estimator = KL_ESTIMATORS[s.kl_estimator]

    # the on-policy life cycle (modules/pg.py)
    sampler = on_policy.sampler
    on_fit_start = on_policy.reward_to_device
    on_train_start = on_policy.stop_if_finished
    on_train_batch_start = on_policy.eval_mode
    on_save_checkpoint, on_load_checkpoint = on_policy.save_loop, on_policy.load_loop

    # -- phase 1 -------------------------------------------------------------------------------
    @torch.no_grad()
    def experience(self, batch) -> tuple[Experience, dict]:
        s, p = self.s, self.prefix
        roll, prompts, scores = sample_scored(self.sampler(), self.tokenizer, self.reward, batch, s, n=s.group_size)
        logits, _ = response_logits(self.policy, roll.input_ids, roll.attention_mask, roll.n_response, s.temperature)
        logprobs = logprobs_from_logits(logits, roll.response)                             # (B, T)
        ref_logprobs = rollout_logprobs(self.ref, roll, s.temperature)                    # (B, T)
        mask = roll.mask
        kl = self.kl_estimator(logprobs, ref_logprobs) * mask                              # (B, T)
        kl_coef = self.kl_ctl.value if self.kl_ctl is not None else s.beta
        seq_adv = self.sequence_advantages(s, scores, kl, mask, kl_coef)                   # (B,)
        advantages = seq_adv.unsqueeze(1) * mask.to(seq_adv.dtype)                         # (B, T)
        exp = Experience(roll.input_ids, roll.attention_mask, roll.response, mask, logprobs, advantages,
                         ref_logprobs=ref_logprobs)
        groups = scores.view(-1, s.group_size)
        stats = {f"{p}/reward/score_mean": scores.mean(), f"{p}/reward/score_std": scores.std(correction=0),
                 f"{p}/reward/group_std": groups.std(dim=1, correction=0).mean(),
                 f"{p}/reward/equal_groups": (groups == groups[:, :1]).all(dim=1).float().mean(),
                 f"{p}/kl/ref": kl.sum(1).mean(), f"{p}/kl/coef": torch.tensor(float(kl_coef)),
                 f"{p}/advantages/abs_mean": seq_adv.abs().mean(),
                 f"{p}/policy/entropy": masked_mean(entropy_from_logits(logits), mask),
                 f"{p}/response/len_mean": mask.sum(1).float().mean(),
                 f"{p}/response/eos_rate": roll.has_eos.float().mean()}
        if s.sample_every and self.iteration % s.sample_every == 0:
            self.samples += sample_rows(self.iteration, prompts, roll.texts, scores, s.n_samples)
        return exp, stats

    # -- phase 2 -------------------------------------------------------------------------------
    def minibatch_loss(self, mb: Experience):
        s, p = self.s, self.prefix
        logits, _ = response_logits(self.policy, mb.input_ids, mb.attention_mask, mb.response.shape[1], s.temperature)
        logp = logprobs_from_logits(logits, mb.response)                                   # (b, T)
        if isinstance(s, RLOOSettings) and s.loss == "reinforce":
            pg, pg_stats = reinforce_loss(logp, mb.logprobs, mb.advantages, mb.mask, s.loss_agg, s.norm_len)
        else:
            pg, pg_stats = policy_loss(logp, mb.logprobs, mb.advantages, mb.mask, s.clip_eps, s.loss_agg, s.norm_len)
        loss, stats = pg, {f"{p}/policy/loss": pg.detach(), f"{p}/policy/clipfrac": pg_stats["clipfrac"],
                           f"{p}/policy/approx_kl": pg_stats["approx_kl"], f"{p}/policy/ratio": pg_stats["ratio"]}
        if isinstance(s, GRPOSettings) and s.kl_penalty == "loss":
            kl = aggregate_loss(self.kl_estimator(logp, mb.ref_logprobs), mb.mask, s.loss_agg, s.norm_len)
            loss = pg + s.beta * kl
            stats[f"{p}/loss/kl"] = kl.detach()
        stats[f"{p}/loss/total"] = loss.detach()
        return loss, stats, logp.detach()

    def check_invariants(self, logp: torch.Tensor, mb: Experience, stats: dict) -> None:
        """Before any update of this iteration the policy is the rollout policy: ratio 1, KL 0."""
        exact = logp.dtype == torch.float32 and self.policy.dtype == torch.float32
        check_first_minibatch(self.prefix.upper(), self.iteration, logp, mb.logprobs, mb.mask,
                              stats[f"{self.prefix}/policy/approx_kl"].item(), exact)

    # -- one iteration -------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        t0 = time.perf_counter()
        exp, stats = self.experience(batch)
        t1 = time.perf_counter()
        update_stats, epochs = update_epochs(self, exp, self.minibatch_loss, self.s, self.prefix, self.shuffle,
                                             self.check_invariants if self.s.check_invariants else None)
        t2 = time.perf_counter()
        stats = log_iteration(self, self.prefix, {**stats, **update_stats}, exp, epochs, t0, t1, t2)  # global
        if self.kl_ctl is not None:
            self.kl_ctl.update(stats[f"{self.prefix}/kl/ref"], len(exp) * world_size())
        on_policy.end_iteration(self, stats[f"{self.prefix}/reward/score_mean"])
        return stats  # checked by the stage's StopOnNonFinite callback

    def configure_model(self):
        """trainer=fsdp2: shard the policy and a frozen reference copy (models/sharding.py); nothing otherwise."""
        shard_models(self, self.policy, (self.ref,))

    def configure_optimizers(self):
        self.trained = [q for q in self.policy.parameters() if q.requires_grad]
        return adamw(self.trained, lr=self.s.lr, eps=1e-5)
