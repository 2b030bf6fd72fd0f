"""PPO for a language model (manual optimisation): one `training_step` is one PPO iteration.

Phase 1 (no grad): sample responses, score them, old log-probs and values (one forward of the
policy), reference log-probs; per-token rewards (score − kl_coef·KL), GAE, whitened advantages.
Phase 2: `ppo_epochs` passes over shuffled minibatches of clipped policy and value updates.
"""
from __future__ import annotations

import math
import time
from statistics import mean
from typing import Annotated, Literal

import pydantic
import pytorch_lightning as pl
import torch
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.core.kl import KL_ESTIMATORS
from rlhf_exp.core.ops import entropy_from_logits, logprobs_from_logits, masked_mean, masked_whiten
from rlhf_exp.core.ppo import (AdaptiveKLController, FixedKLController, gae, policy_loss, shape_rewards,
                               total_loss, value_loss)
from rlhf_exp.modules.metrics import to_floats
from rlhf_exp.modules.optim import adamw, clip_grad_norm
from rlhf_exp.models.generation import generate
from rlhf_exp.modules.rollout import Experience, rollout_logprobs


@schema
class PPOSettings:
    """PPO's hyperparameters, `algorithm=ppo` (conf/algorithm/ppo.yaml gives each its default and meaning)."""
    policy: str | None                         # policy to align; null = this pipeline's sft/, else the model group
    ckpt_path: str | None                      # a Lightning checkpoint to resume from
    max_steps: Annotated[int, Field(ge=1)]     # PPO iterations
    reward_threshold: float | None             # stop when the moving-average score reaches it
    threshold_window: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]    # rollouts per iteration
    max_new_tokens: Annotated[int, Field(ge=1)]
    temperature: Annotated[float, Field(gt=0)]
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


class InvariantError(AssertionError):
    """The first minibatch of an iteration saw a policy that differs from the rollout policy."""


class PPOModule(pl.LightningModule):
    def __init__(self, actor_critic, ref_lm, tokenizer, reward, s: PPOSettings, seed: int = 0):
        """actor_critic: ActorCritic; ref_lm: the starting policy, frozen (`models.training.reference`); reward: has
        `score(prompts, completions) -> (B,)`; s: PPOSettings."""
        super().__init__()
        self.automatic_optimization = False
        self.policy, self.ref, self.tokenizer, self.reward, self.s = actor_critic, ref_lm, tokenizer, reward, s
        if isinstance(ref_lm, torch.nn.Module):  # a copy (a LoRA policy's reference is itself, adapters off)
            ref_lm.requires_grad_(False)
        self.kl_ctl = AdaptiveKLController(s.kl_coef, s.kl_target, s.kl_horizon) \
            if s.kl_controller == "adaptive" else FixedKLController(s.kl_coef)
        self.kl_estimator = KL_ESTIMATORS[s.kl_estimator]
        self.shuffle = torch.Generator().manual_seed(seed)
        self.iteration = 0
        self.score_means: list[float] = []  # per iteration, for the stopping rule
        self.samples: list[dict] = []       # rows of the samples table
        self.timings: list[dict] = []       # per iteration: rollout_s, update_s, response width
        self.stop_reason = ""

    def on_train_batch_start(self, batch, batch_idx):
        """Dropout off in every model during RL: all in eval mode (gradients flow as usual), so the
        rollout and the update see the same function. Set per batch, as Lightning restores modes."""
        self.eval()

    def on_fit_start(self):
        if hasattr(self.reward, "to"):
            self.reward.to(self.device)

    def on_train_start(self):
        if self.iteration >= self.s.max_steps:  # resumed from a run that had already finished
            self.trainer.should_stop = True

    # -- phase 1 -------------------------------------------------------------------------------
    @torch.no_grad()
    def experience(self, batch) -> tuple[Experience, dict]:
        s = self.s
        roll = generate(self.policy.lm, self.tokenizer, batch["input_ids"], batch["attention_mask"],
                        max_new_tokens=s.max_new_tokens, temperature=s.temperature)
        scores = self.reward.score(batch["prompts"], roll.texts).to(self.device).float()     # (B,)
        if s.missing_eos_penalty is not None:  # a response cut off before EOS gets a fixed score
            scores = torch.where(roll.has_eos, scores, torch.full_like(scores, s.missing_eos_penalty))
        logits, values = self.policy(roll.input_ids, roll.attention_mask, roll.n_response, s.temperature)
        logprobs = logprobs_from_logits(logits, roll.response)                              # (B, T)
        ref_logprobs = rollout_logprobs(self.ref, roll, s.temperature)                    # (B, T)
        mask = roll.mask
        kl = self.kl_estimator(logprobs, ref_logprobs) * mask                              # (B, T)
        rewards, reward_stats = shape_rewards(scores, kl, mask, self.kl_ctl.value)
        if s.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = gae(rewards, values, mask, s.gamma, s.lam)
        if s.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        exp = Experience(roll.input_ids, roll.attention_mask, roll.response, mask, logprobs, values,
                         advantages, returns)
        stats = {"ppo/reward/score_mean": scores.mean(), "ppo/reward/score_std": scores.std(correction=0),
                 "ppo/reward/total_mean": reward_stats["total"], "ppo/kl/ref": kl.sum(1).mean(),
                 "ppo/kl/coef": torch.tensor(float(self.kl_ctl.value)),
                 "ppo/returns/mean": masked_mean(returns, mask),
                 "ppo/response/len_mean": mask.sum(1).float().mean(),
                 "ppo/response/eos_rate": roll.has_eos.float().mean()}
        if s.ent_coef == 0:  # the rollout policy's entropy (with a bonus, the update's is logged)
            stats["ppo/policy/entropy"] = masked_mean(entropy_from_logits(logits), mask)
        if s.sample_every and self.iteration % s.sample_every == 0:
            self.samples += [{"iteration": self.iteration, "prompt": p, "response": t, "score": float(sc)}
                             for p, t, sc in zip(batch["prompts"], roll.texts, scores.tolist())][:s.n_samples]
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
        tol = 1e-4 if logp.dtype == torch.float32 and self.policy.lm.dtype == torch.float32 else 2e-2
        max_log_ratio = ((logp - mb.logprobs).abs() * mb.mask).max().item()
        approx_kl = stats["ppo/policy/approx_kl"].item()
        if max_log_ratio > tol or abs(approx_kl) > tol:
            raise InvariantError(
                f"PPO invariant broken at iteration {self.iteration}: on the first minibatch of the first "
                f"epoch the ratio must be 1 and the KL to the rollout policy 0, but max |log ratio| = "
                f"{max_log_ratio:.2e} and approx_kl = {approx_kl:.2e} (tolerance {tol:g}). Rollout and "
                f"update see different inputs or models (padding, position ids, dropout, temperature).")

    def update(self, exp: Experience) -> tuple[dict, int]:
        """ppo_epochs × minibatches of clipped updates; stops early past target_kl.
        Returns the stats averaged over the minibatches that ran, and the number of epochs."""
        s, opt = self.s, self.optimizers()
        size = math.ceil(len(exp) / s.minibatches)
        stats, epochs, past_target = [], 0, False
        while epochs < s.ppo_epochs and not past_target:
            order = torch.randperm(len(exp), generator=self.shuffle).to(exp.input_ids.device)
            for k, rows in enumerate(order.split(size)):
                mb = exp[rows]
                loss, mb_stats, logp = self.minibatch_loss(mb)
                if s.check_invariants and epochs == 0 and k == 0:
                    self.check_invariants(logp, mb, mb_stats)
                opt.zero_grad()
                self.manual_backward(loss)
                mb_stats["ppo/policy/grad_norm"] = clip_grad_norm(self.trained, s.max_grad_norm)
                opt.step()
                stats.append(mb_stats)
                past_target = s.target_kl is not None and mb_stats["ppo/policy/approx_kl"].item() > s.target_kl
                if past_target:
                    break
            epochs += 1
        return {k: torch.stack([d[k] for d in stats]).mean() for k in stats[0]}, epochs

    # -- one iteration -------------------------------------------------------------------------
    def training_step(self, batch, batch_idx):
        t0 = time.perf_counter()
        exp, stats = self.experience(batch)
        t1 = time.perf_counter()
        update_stats, epochs = self.update(exp)
        t2 = time.perf_counter()
        self.kl_ctl.update(stats["ppo/kl/ref"].item(), len(exp))
        tokens = exp.mask.sum().item()
        stats.update(update_stats)
        stats.update({"ppo/update/epochs": float(epochs), "ppo/perf/rollout_s": t1 - t0,
                      "ppo/perf/update_s": t2 - t1, "ppo/perf/tokens_per_s": tokens / (t2 - t0)})
        stats = to_floats(stats)
        self.log_dict(stats, on_step=True, on_epoch=False, batch_size=len(exp))
        self.log_dict({"score": stats["ppo/reward/score_mean"], "kl": stats["ppo/kl/ref"]},
                      prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=len(exp))
        self.timings.append({"rollout_s": t1 - t0, "update_s": t2 - t1, "width": exp.response.shape[1]})
        self.after_iteration(stats["ppo/reward/score_mean"])
        return stats  # checked by the stage's StopOnNonFinite callback

    def after_iteration(self, score_mean: float) -> None:
        """Count the iteration; stop at max_steps or when the moving average of the score reaches
        reward_threshold."""
        s = self.s
        self.iteration += 1
        self.score_means.append(score_mean)
        recent = self.score_means[-s.threshold_window:]
        if s.reward_threshold is not None and len(recent) == s.threshold_window \
                and mean(recent) >= s.reward_threshold:
            self.stop_reason = f"moving-average score {mean(recent):.3f} >= reward_threshold {s.reward_threshold}"
        elif self.iteration >= s.max_steps:
            self.stop_reason = f"max_steps ({s.max_steps}) reached"
        if self.stop_reason:
            self.trainer.should_stop = True

    def configure_optimizers(self):
        self.trained = [p for p in self.policy.parameters() if p.requires_grad]
        return adamw(self.trained, lr=self.s.lr, eps=1e-5)  # ε 1e-5 as in cleanRL; no schedule

    # -- resuming ------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint):
        checkpoint["ppo"] = {"iteration": self.iteration, "kl_coef": self.kl_ctl.value,
                             "score_means": self.score_means, "samples": self.samples,
                             "shuffle": self.shuffle.get_state()}

    def on_load_checkpoint(self, checkpoint):
        state = checkpoint["ppo"]
        self.iteration, self.kl_ctl.value = state["iteration"], state["kl_coef"]
        self.score_means, self.samples = state["score_means"], state["samples"]
        self.shuffle.set_state(state["shuffle"])
