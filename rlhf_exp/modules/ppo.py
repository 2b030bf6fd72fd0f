"""PPO for a language model (manual optimisation): one `training_step` is one PPO iteration.

Phase 1 (no grad): sample responses, score them, old log-probs and values (one forward of the
policy), reference log-probs; per-token rewards (score − kl_coef·KL), GAE, whitened advantages.
Phase 2: `ppo_epochs` passes over shuffled minibatches of clipped policy and value updates.
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
from rlhf_exp.core.kl import KL_ESTIMATORS
from rlhf_exp.core.ops import entropy_from_logits, logprobs_from_logits, masked_mean, masked_whiten
from rlhf_exp.core.ppo import gae, policy_loss, shape_rewards, total_loss, value_loss
from rlhf_exp.distributed import masked_moments, world_size
from rlhf_exp.models.sharding import shard_models
from rlhf_exp.modules.heldout import InLoopEvalSettings
from rlhf_exp.modules.optim import adamw
from rlhf_exp.modules import pg as on_policy
from rlhf_exp.modules.pg import (InvariantError, check_first_minibatch, kl_controller,  # noqa: F401
                                 log_iteration, sample_rows, sample_scored, update_epochs)
from rlhf_exp.modules.rollout import Experience, rollout_logprobs


@schema
class PPOSettings(InLoopEvalSettings):
    """PPO's hyperparameters, `algorithm=ppo` (conf/algorithm/ppo.yaml gives each its default and meaning)."""
    policy: str | None                         # policy to align; null = this pipeline's sft/, else the model group
    ckpt_path: str | None                      # a Lightning checkpoint to resume from
    checkpoint_every: Annotated[int, Field(ge=1)]  # iterations between checkpoints
    max_steps: Annotated[int, Field(ge=1)]     # PPO iterations
    reward_threshold: float | None             # stop when the moving-average score reaches it
    threshold_window: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]    # rollouts per iteration
    max_new_tokens: Annotated[int, Field(ge=1)]
    temperature: Annotated[float, Field(gt=0)]
    rollout: Literal["policy", "merged"]       # sample with the policy, or its LoRA-merged copy (models/sampler.py)
    missing_eos_penalty: float | None
    ppo_epochs: Annotated[int, Field(ge=1)]
    minibatches: Annotated[int, Field(ge=1)]
    lr: Annotated[float, Field(gt=0)]
    max_grad_norm: Annotated[float, Field(gt=0)]
    clip_eps: Annotated[float, Field(gt=0, lt=1)]
    value_clip_eps: Annotated[float, Field(gt=0)]
    vf_coef: Annotated[float, Field(ge=0)]
    ent_coef: Annotated[float, Field(ge=0)]
    target_kl: Annotated[float, Field(gt=0)] | None
    kl_coef: Annotated[float, Field(ge=0)]
    kl_estimator: Literal["k1", "k3"]
    kl_controller: Literal["fixed", "adaptive"]
    kl_target: Annotated[float, Field(gt=0)]
    kl_horizon: Annotated[int, Field(ge=1)]
    gamma: Annotated[float, Field(ge=0, le=1)]
    lam: Annotated[float, Field(ge=0, le=1)]
    whiten_rewards: bool
    whiten_advantages: bool
    value_model: Literal["shared", "separate"]
    value_init: Literal["zero", "reward"]
    check_invariants: bool
    sample_every: Annotated[int, Field(ge=0)]
    n_samples: Annotated[int, Field(ge=0)]

    @pydantic.model_validator(mode="after")
    def _consistent(self):
        if self.minibatches > self.batch_size:
            raise ValueError(f"minibatches = {self.minibatches}: expected at most batch_size ({self.batch_size})")
        if self.value_init == "reward" and self.value_model != "separate":
            raise ValueError("value_init = 'reward': expected value_model = 'separate' (the critic is a "
                             "copy of the reward model)")
        return self


register(Algorithm(name="ppo", settings=PPOSettings, stage="rlhf_exp.stages.ppo.run", on_policy=True, shardable=True,
                   resumes_by="iterations", curve="ppo/reward/score_mean", kl_knob="algorithm.kl_coef"))


class PPOModule(pl.LightningModule):
    def __init__(self, actor_critic, ref_lm, tokenizer, reward, s: PPOSettings, seed: int = 0):
        """actor_critic: ActorCritic; ref_lm: the starting policy, frozen (`models.training.reference`); reward: has
        `score(prompts, completions) -> (B,)`; s: PPOSettings."""
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.ref, self.tokenizer, self.reward, self.s = actor_critic, ref_lm, tokenizer, reward, s
        self.sampled = actor_critic.lm  # what rollouts sample with (on_policy.sampler)
        on_policy.begin_loop(self, ref_lm, s, seed=seed, kl_ctl=kl_controller(s))
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
        s = self.s
        roll, prompts, scores = sample_scored(self.sampler(), self.tokenizer, self.reward, batch, s)  # scores (B,)
        logits, values = self.policy(roll.input_ids, roll.attention_mask, roll.n_response, s.temperature)
        logprobs = logprobs_from_logits(logits, roll.response)                              # (B, T)
        ref_logprobs = rollout_logprobs(self.ref, roll, s.temperature)                    # (B, T)
        mask = roll.mask
        kl = self.kl_estimator(logprobs, ref_logprobs) * mask                              # (B, T)
        rewards, reward_stats = shape_rewards(scores, kl, mask, self.kl_ctl.value)
        if s.whiten_rewards:  # over every rank's batch (`distributed.masked_moments`)
            rewards = masked_whiten(rewards, mask, shift_mean=False, moments=masked_moments(rewards, mask))
        advantages, returns = gae(rewards, values, mask, s.gamma, s.lam)
        if s.whiten_advantages:
            advantages = masked_whiten(advantages, mask, moments=masked_moments(advantages, mask))
        exp = Experience(roll.input_ids, roll.attention_mask, roll.response, mask, logprobs, advantages,
                         values=values, returns=returns)
        stats = {"ppo/reward/score_mean": scores.mean(), "ppo/reward/score_std": scores.std(correction=0),
                 "ppo/reward/total_mean": reward_stats["total"], "ppo/kl/ref": kl.sum(1).mean(),
                 "ppo/kl/coef": torch.tensor(float(self.kl_ctl.value)),
                 "ppo/returns/mean": masked_mean(returns, mask),
                 "ppo/response/len_mean": mask.sum(1).float().mean(),
                 "ppo/response/eos_rate": roll.has_eos.float().mean()}
        if s.ent_coef == 0:  # the rollout policy's entropy (with a bonus, the update's is logged)
            stats["ppo/policy/entropy"] = masked_mean(entropy_from_logits(logits), mask)
        if s.sample_every and self.iteration % s.sample_every == 0:
            self.samples += sample_rows(self.iteration, prompts, roll.texts, scores, s.n_samples)
        return exp, stats

    # -- phase 2 -------------------------------------------------------------------------------
    def minibatch_loss(self, mb: Experience):
        s = self.s
        logits, values = self.policy(mb.input_ids, mb.attention_mask, mb.response.shape[1], s.temperature)
        logp = logprobs_from_logits(logits, mb.response)                                    # (b, T)
        pg, pg_stats = policy_loss(logp, mb.logprobs, mb.advantages, mb.mask, s.clip_eps)
        vf, vf_stats = value_loss(values, mb.values, mb.returns, mb.mask, s.value_clip_eps)
        bonus = s.ent_coef > 0  # without an entropy bonus, the entropy is logged once per rollout
        entropy = masked_mean(entropy_from_logits(logits), mb.mask) if bonus else logits.new_zeros(())
        loss = total_loss(pg, vf, entropy, s.vf_coef, s.ent_coef)
        stats = {"ppo/policy/loss": pg.detach(), "ppo/policy/clipfrac": pg_stats["clipfrac"],
                 "ppo/policy/approx_kl": pg_stats["approx_kl"], "ppo/policy/ratio": pg_stats["ratio"],
                 "ppo/value/loss": vf.detach(),
                 "ppo/value/clipfrac": vf_stats["clipfrac"], "ppo/value/explained_var": vf_stats["explained_var"],
                 "ppo/loss/total": loss.detach()}
        if bonus:
            stats["ppo/policy/entropy"] = entropy.detach()
        return loss, stats, logp.detach()

    def check_invariants(self, logp: torch.Tensor, mb: Experience, stats: dict) -> None:
        """Before any update of this iteration the policy is the rollout policy: ratio 1, KL 0."""
        exact = logp.dtype == torch.float32 and self.policy.lm.dtype == torch.float32
        check_first_minibatch("PPO", self.iteration, logp, mb.logprobs, mb.mask,
                              stats["ppo/policy/approx_kl"].item(), exact)

    # -- one iteration -------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        t0 = time.perf_counter()
        exp, stats = self.experience(batch)
        t1 = time.perf_counter()
        update_stats, epochs = update_epochs(self, exp, self.minibatch_loss, self.s, "ppo", self.shuffle,
                                             self.check_invariants if self.s.check_invariants else None)
        t2 = time.perf_counter()
        stats = log_iteration(self, "ppo", {**stats, **update_stats}, exp, epochs, t0, t1, t2)  # global
        self.kl_ctl.update(stats["ppo/kl/ref"], len(exp) * world_size())
        on_policy.end_iteration(self, stats["ppo/reward/score_mean"])
        return stats  # checked by the stage's StopOnNonFinite callback

    def configure_model(self):
        """trainer=fsdp2: shard the policy, its value head or critic, and a frozen reference copy
        (models/sharding.py); nothing under any other strategy."""
        shard_models(self, self.policy.lm, (self.policy.value_head, self.policy.critic, self.ref))

    def configure_optimizers(self):
        self.trained = [p for p in self.policy.parameters() if p.requires_grad]
        return adamw(self.trained, lr=self.s.lr, eps=1e-5)  # ε 1e-5 as in cleanRL; no schedule
