"""What the on-policy algorithms (PPO, GRPO, RLOO, online DPO) share, as functions: their life cycle
(`begin_loop`: the frozen reference and the loop's state; the hooks assigned in each class body:
`on_fit_start`, `on_train_start`, `on_train_batch_start`, `sampler`, `on_save_checkpoint`,
`on_load_checkpoint`; `end_iteration`: the count and the stopping rule), sampling and scoring a
rollout batch, the KL controller, the epochs × minibatches update loop with its first-minibatch
invariant and `target_kl` early stop, and the samples table.

Each LightningModule keeps its loop's state as attributes (iteration, score history, samples, the
minibatch generator, the KL controller) under its record's name (`loop_key`)."""
from __future__ import annotations

import math
from statistics import mean
from typing import Callable

import torch

from rlhf_exp.core.ppo import AdaptiveKLController, FixedKLController
from rlhf_exp.distributed import global_mean
from rlhf_exp.models.generation import Rollout, generate
from rlhf_exp.models.sampler import rollout_model
from rlhf_exp.modules.algorithms import record_of
from rlhf_exp.modules.metrics import to_floats
from rlhf_exp.modules.optim import clip_grad_norm


class InvariantError(AssertionError):
    """The first minibatch of an iteration saw a policy that differs from the rollout policy."""


# -- the life cycle -----------------------------------------------------------------------------

def begin_loop(module, ref, s, seed: int | None = None, kl_ctl=None) -> None:
    """The state of an on-policy loop, set on `module`: its reference frozen (a copy; a LoRA policy's
    reference is itself, adapters off), the iteration count, the score history the stopping rule
    reads, the samples table, the timings, the minibatch shuffle's generator (None without
    minibatches) and the KL controller (None for a fixed β), and its checkpoint key (its record's name)."""
    if isinstance(ref, torch.nn.Module):
        ref.requires_grad_(False)
    module.loop_key = record_of(s).name
    module.iteration, module.score_means, module.samples, module.timings = 0, [], [], []
    module.stop_reason, module._rollout_model = "", None
    module.shuffle = torch.Generator().manual_seed(seed) if seed is not None else None
    module.kl_ctl = kl_ctl


def sampler(module):
    """The model the next rollout samples with (`algorithm.rollout`): the policy, or its merged copy
    refreshed; made at the first rollout, once the policy is on its device. (A module's `sampled`
    is its language model.)"""
    if module._rollout_model is None:
        module._rollout_model = rollout_model(module.sampled, module.s.rollout)
    return module._rollout_model()


def reward_to_device(module) -> None:
    """on_fit_start: the reward source (a model) on the policy's device."""
    if hasattr(module.reward, "to"):
        module.reward.to(module.device)


def stop_if_finished(module) -> None:
    """on_train_start: a run resumed from one that had already finished trains nothing."""
    if module.iteration >= module.s.max_steps:
        module.trainer.should_stop = True


def eval_mode(module, batch, batch_idx) -> None:
    """on_train_batch_start: dropout off in every model (eval mode; gradients flow as usual), so the
    rollout and the update see the same function. Per batch, as Lightning restores modes."""
    module.eval()


def end_iteration(module, score_mean: float) -> None:
    """Count the iteration, then stop at max_steps or when the moving average of the score reaches
    reward_threshold (`stop_reason`)."""
    module.iteration += 1
    module.score_means.append(score_mean)
    module.stop_reason = stop_reason(module.score_means, module.iteration, module.s)
    if module.stop_reason:
        module.trainer.should_stop = True


def save_loop(module, checkpoint: dict) -> None:
    """on_save_checkpoint: the loop's state under the module's key."""
    checkpoint[module.loop_key] = loop_state(module)


def load_loop(module, checkpoint: dict) -> None:
    """on_load_checkpoint: the loop's state from under the module's key."""
    load_loop_state(module, checkpoint[module.loop_key])


@torch.no_grad()
def sample_scored(lm, tokenizer, reward, batch: dict, s, n: int = 1) -> tuple[Rollout, list, torch.Tensor]:
    """`n` responses to each prompt of the batch (rows i·n … i·n + n − 1 answer prompt i), sampled with
    `s.max_new_tokens` and `s.temperature`, and scored by `reward`; a response cut off before EOS gets
    `s.missing_eos_penalty` when set. Returns the rollout, the prompt of each row and the scores (B·n,)."""
    roll = generate(lm, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=s.max_new_tokens,
                    temperature=s.temperature, n=n)
    prompts = [p for p in batch["prompts"] for _ in range(n)]
    scores = reward.score(prompts, roll.texts).to(roll.response.device).float()          # (B·n,)
    if s.missing_eos_penalty is not None:
        scores = torch.where(roll.has_eos, scores, torch.full_like(scores, s.missing_eos_penalty))
    return roll, prompts, scores


def kl_controller(s):
    """The KL coefficient's controller from `kl_coef`, `kl_controller`, `kl_target`, `kl_horizon`."""
    if s.kl_controller == "adaptive":
        return AdaptiveKLController(s.kl_coef, s.kl_target, s.kl_horizon)
    return FixedKLController(s.kl_coef)


def check_first_minibatch(name: str, iteration: int, logp: torch.Tensor, old_logp: torch.Tensor,
                          mask: torch.Tensor, approx_kl: float, exact: bool) -> None:
    """Before any update of an iteration the policy is the rollout policy: ratio 1, KL 0 (to 1e-4 in
    float32, 2e-2 in lower precision: `exact` False)."""
    tol = 1e-4 if exact else 2e-2
    max_log_ratio = ((logp - old_logp).abs() * mask).max().item()
    if max_log_ratio > tol or abs(approx_kl) > tol:
        raise InvariantError(
            f"{name} invariant broken at iteration {iteration}: on the first minibatch of the first "
            f"epoch the ratio must be 1 and the KL to the rollout policy 0, but max |log ratio| = "
            f"{max_log_ratio:.2e} and approx_kl = {approx_kl:.2e} (tolerance {tol:g}). Rollout and "
            f"update see different inputs or models (padding, position ids, dropout, temperature).")


def update_epochs(module, exp, minibatch_loss: Callable, s, prefix: str, generator: torch.Generator,
                  check: Callable | None) -> tuple[dict, int]:
    """`s.ppo_epochs` passes over `s.minibatches` shuffled minibatches of `exp` (an Experience): for each,
    `minibatch_loss(mb) -> (loss, stats, logp)`, `check(logp, mb, stats)` on the very first one, a
    backward pass, gradients clipped to `s.max_grad_norm` over `module.trained`, an optimizer step.
    An epoch stops early once approx KL(old ‖ new) exceeds `s.target_kl`. Returns the stats averaged
    over the minibatches that ran, and the number of epochs."""
    opt = module.optimizers()
    size = math.ceil(len(exp) / s.minibatches)
    stats, epochs, past_target = [], 0, False
    while epochs < s.ppo_epochs and not past_target:
        order = torch.randperm(len(exp), generator=generator).to(exp.input_ids.device)
        for k, rows in enumerate(order.split(size)):
            mb = exp[rows]
            loss, mb_stats, logp = minibatch_loss(mb)
            if check is not None and epochs == 0 and k == 0:
                check(logp, mb, mb_stats)
            opt.zero_grad()
            module.manual_backward(loss)
            mb_stats[f"{prefix}/policy/grad_norm"] = clip_grad_norm(module.trained, s.max_grad_norm)
            opt.step()
            stats.append(mb_stats)
            past_target = s.target_kl is not None and \
                global_mean({"kl": mb_stats[f"{prefix}/policy/approx_kl"]})["kl"].item() > s.target_kl  # every rank alike
            if past_target:
                break
        epochs += 1
    return {k: torch.stack([d[k] for d in stats]).mean() for k in stats[0]}, epochs


def stop_reason(score_means: list[float], iteration: int, s) -> str:
    """Why to stop after `iteration` iterations (empty: go on): the moving average of the last
    `s.threshold_window` mean scores reached `s.reward_threshold`, or `s.max_steps` is reached."""
    threshold, window = getattr(s, "reward_threshold", None), getattr(s, "threshold_window", 1)  # online DPO: none
    recent = score_means[-window:]
    if threshold is not None and len(recent) == window and mean(recent) >= threshold:
        return f"moving-average score {mean(recent):.3f} >= reward_threshold {threshold}"
    if iteration >= s.max_steps:
        return f"max_steps ({s.max_steps}) reached"
    return ""


def sample_rows(iteration: int, prompts: list, texts: list[str], scores: torch.Tensor, n: int) -> list[dict]:
    """The first `n` rows of an iteration's samples table."""
    return [{"iteration": iteration, "prompt": p, "response": t, "score": float(sc)}
            for p, t, sc in zip(prompts, texts, scores.tolist())][:n]


def log_iteration(module, prefix: str, stats: dict, exp, epochs: int, t0: float, t1: float, t2: float) -> dict:
    """Add the update and timing figures to an iteration's stats, average them over the ranks (so the
    logged figures, the stopping rule and the KL controller read the whole batch's), log them (and
    score and KL to the progress bar), note the timings in `module.timings`; returns them as floats."""
    tokens = exp.mask.sum().item()
    stats.update({f"{prefix}/update/epochs": float(epochs), f"{prefix}/perf/rollout_s": t1 - t0,
                  f"{prefix}/perf/update_s": t2 - t1, f"{prefix}/perf/tokens_per_s": tokens / (t2 - t0)})
    stats = to_floats(global_mean(stats))
    module.log_dict(stats, on_step=True, on_epoch=False, batch_size=len(exp))
    module.log_dict({"score": stats[f"{prefix}/reward/score_mean"], "kl": stats[f"{prefix}/kl/ref"]},
                    prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=len(exp))
    module.timings.append({"rollout_s": t1 - t0, "update_s": t2 - t1, "width": exp.response.shape[1]})
    return stats


def loop_state(module) -> dict:
    """What a resumed run needs beyond weights and optimizer: iteration, score history, samples, the
    minibatch shuffle's generator, and the KL coefficient where a controller moves it. (The data's
    order and place are the data module's state, the random generators the RandomStates callback's.)"""
    state = {"iteration": module.iteration, "score_means": module.score_means, "samples": module.samples}
    if module.shuffle is not None:
        state["shuffle"] = module.shuffle.get_state()
    if module.kl_ctl is not None:
        state["kl_coef"] = module.kl_ctl.value
    return state


def load_loop_state(module, state: dict) -> None:
    module.iteration, module.score_means, module.samples = state["iteration"], state["score_means"], state["samples"]
    if module.shuffle is not None:
        module.shuffle.set_state(state["shuffle"])
    if "kl_coef" in state:
        module.kl_ctl.value = state["kl_coef"]
