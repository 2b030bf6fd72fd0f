"""`stage=eval`: the reference policy and the aligned policy on the same held-out prompts.

Both sample the same number of responses per prompt; the `reward` group scores them, the gold
scorer too in the synthetic world (gold score and toxicity); the KL of the aligned policy to the
reference is measured on the aligned policy's own samples; the win rate pairs the i-th response of
each policy to each prompt and counts a tie as half a win. With `best_of_n`, the best-of-n policy of
the reference (the reward keeps the best of n of its samples) is scored the same way, with its KL
to the reference estimated and bounded. Writes eval_samples.md (side by side),
eval_rewards.png (distributions before and after) and eval_summary.json.
"""
from __future__ import annotations

import json
import math
from statistics import mean
from typing import Annotated

import pytorch_lightning as pl
import torch
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.core.bon import best_of_n_kl_bound, best_of_n_log_ratio, mass_below
from rlhf_exp.core.stats import format_mean_se, mean_se
from rlhf_exp.modules.rollout import rollout_logprobs, sample_rollouts, sequence_kl
from rlhf_exp.stages.context import StageContext


@schema
class EvalSettings:
    """`stage=eval` (conf/eval/default.yaml gives each its default and meaning)."""
    policy: str | None        # aligned policy dir; null = this pipeline's align output
    reference: str | None     # reference policy dir; null = this pipeline's sft/ (where alignment started)
    samples_per_prompt: Annotated[int, Field(ge=1)]
    temperature: Annotated[float, Field(gt=0)]
    max_new_tokens: Annotated[int, Field(ge=1)]
    batch_size: Annotated[int, Field(ge=1)]     # responses per generate call
    best_of_n: Annotated[int, Field(ge=2)] | None  # n of the best-of-n reference policy (null = not reported)


def best_of_n(ref, tokenizer, reward, prompts: list, s: EvalSettings) -> tuple[list[str], list[float], float]:
    """The best-of-n policy of the reference: for each prompt, `samples_per_prompt` times, n samples of
    the reference of which the reward keeps the highest (the first of equals). Returns the kept texts
    (prompt-major, as the other policies' are), their rewards, and the estimate of KL(π_bon ‖ π_ref):
    the mean over the kept responses of log π_bon/π_ref (`core.bon`). P_ref(r = r(y)) is the
    reference's own probability of the distinct sampled texts with y's reward; P_ref(r < r(y)) comes
    from the ranks among the prompt's n·samples_per_prompt samples (`core.bon.mass_below`). The
    estimate converges to the exact KL as the pool grows (for a continuous reward it is within 5%
    of log n − (n−1)/n with a pool of 64); it is capped at that bound."""
    n, k = s.best_of_n, s.samples_per_prompt
    flat = [p for p in prompts for _ in range(k * n)]
    texts, logps = [], []
    for r in sample_rollouts(ref, tokenizer, flat, s.batch_size, s.max_new_tokens, s.temperature):
        texts += r.texts
        logps += (rollout_logprobs(ref, r, s.temperature).double() * r.mask).sum(1).tolist()
    scores = reward.score(flat, texts).tolist()
    kept, n_below, n_equal, mass = [], [], [], []  # kept: indices of the chosen samples
    for start in range(0, len(flat), k * n):            # one prompt's pool: k groups of n
        pool = range(start, start + k * n)
        levels: dict[float, dict[str, float]] = {}      # reward -> {distinct text: log π_ref}
        for i in pool:
            levels.setdefault(scores[i], {})[texts[i]] = logps[i]
        for group in range(start, start + k * n, n):
            best = max(range(group, group + n), key=lambda i: (scores[i], -i))  # the first of equals
            kept.append(best)
            n_below.append(sum(scores[i] < scores[best] for i in pool))
            n_equal.append(sum(scores[i] == scores[best] for i in pool))
            mass.append(sum(math.exp(lp) for lp in levels[scores[best]].values()))
    f64 = lambda xs: torch.tensor(xs, dtype=torch.float64)  # noqa: E731
    below = mass_below(f64(n_below), f64(n_equal), k * n, f64(mass))
    kl = best_of_n_log_ratio(below, f64(mass), n)
    # the bound is a theorem; a small pool's estimate can overshoot it (ranks are coarse)
    return [texts[i] for i in kept], [scores[i] for i in kept], min(float(kl.mean()), best_of_n_kl_bound(n))


def ordered_as_gold(rewards: list[float], gold: list[float], group: int, tie: float = 0.1) -> list[float]:
    """For each pair of answers to one prompt (consecutive runs of `group`) whose gold scores differ
    by at least `tie` (reward_model.GOLD_TIE), 1.0 where the reward orders them as the gold does, else
    0.0: the reward model's accuracy on a policy's own answers (NaN gold: the pair is left out)."""
    hits = []
    for start in range(0, len(rewards) - group + 1, group):
        for i in range(start, start + group):
            for j in range(i + 1, start + group):
                if abs(gold[i] - gold[j]) >= tie:  # False for NaN
                    hits.append(float((rewards[i] > rewards[j]) == (gold[i] > gold[j])))
    return hits


def reward_plot(path, scores: dict[str, dict[str, list[float]]]) -> None:
    """Histograms of each score (reward, gold) for the reference and the aligned policy."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(scores), figsize=(5 * len(scores), 3.5), squeeze=False)
    for ax, (name, by_model) in zip(axes[0], scores.items()):
        for label, values in by_model.items():
            ax.hist(values, bins=30, alpha=0.55, label=f"{label} (mean {mean(values):.2f})")
        ax.set_title(f"{name} on held-out prompts")
        ax.set_xlabel(name)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def side_by_side(prompts, by_policy: dict[str, tuple[list[str], list[float]]],
                 gold: dict[str, list[float]] | None = None, gold_name: str = "gold") -> str:
    """Markdown: each prompt, then each policy's response with its reward (and the world's score)."""
    lines = ["# " + " vs ".join(by_policy) + " on held-out prompts", ""]
    for i, p in enumerate(prompts):
        lines += [f"## {p}", ""]
        for name, (t, r) in by_policy.items():
            extra = f", {gold_name} {gold[name][i]:+.2f}" if gold else ""
            lines.append(f"- **{name}** (reward {r[i]:+.2f}{extra}): {t[i]}")
        lines.append("")
    return "\n".join(lines)


def run(ctx: StageContext) -> None:
    s: EvalSettings = ctx.built.eval
    pl.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
    data = ctx.built.data
    prompts = data.heldout_prompts() or data.train_prompts()
    policy_dir = ctx.input_path(s.policy, "aligned_policy", "eval.policy")
    policy_spec = ctx.model_spec(str(policy_dir), key="eval.policy")
    # the reference: the directory given, this pipeline's sft/, or the model group
    ref_spec = ctx.model_spec(s.reference, "policy", "eval.reference")
    tokenizer = policy_spec.tokenizer()
    device = ctx.device()
    policy, ref = policy_spec.causal_lm(tokenizer).to(device), ref_spec.causal_lm(tokenizer).to(device)
    flat_prompts = [p for p in prompts for _ in range(s.samples_per_prompt)]
    texts, kl = {"ref": [], "policy": []}, []
    for r in sample_rollouts(ref, tokenizer, flat_prompts, s.batch_size, s.max_new_tokens, s.temperature):
        texts["ref"] += r.texts
    for r in sample_rollouts(policy, tokenizer, flat_prompts, s.batch_size, s.max_new_tokens, s.temperature):
        texts["policy"] += r.texts
        kl += sequence_kl(policy, ref, r, s.temperature)

    reward = ctx.reward_source()
    if hasattr(reward, "to"):
        reward.to(device)
    rewards, metrics = {k: reward.score(flat_prompts, v).tolist() for k, v in texts.items()}, {}
    if s.best_of_n:  # seeded anew: the same best-of-n samples whichever policy was aligned
        torch.manual_seed(ctx.cfg.seed)
        texts["bon"], rewards["bon"], metrics["eval/kl/bon_ref"] = best_of_n(ref, tokenizer, reward, prompts, s)
        metrics["eval/kl/bon_bound"] = best_of_n_kl_bound(s.best_of_n)
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards["policy"], rewards["ref"])]
    for key, values in [*((f"eval/reward/{k}", v) for k, v in rewards.items()),
                        ("eval/kl/policy_ref", kl), ("eval/win_rate", wins)]:
        metrics[key], metrics[f"{key}_se"] = mean_se(values)  # each mean with its standard error
    names = {"ref": "reference", "policy": "aligned", "bon": f"best-of-{s.best_of_n}"}
    plotted = {"reward": {names[k]: v for k, v in rewards.items()}}
    if data.simulated:  # the world's own measures: gold (or judge) score, toxicity, refusals, ...
        measured = {k: data.eval_measures(flat_prompts, v) for k, v in texts.items()}
        for k, by_name in measured.items():
            for name, values in by_name.items():
                metrics[f"eval/{name}/{k}"], metrics[f"eval/{name}/{k}_se"] = mean_se(values)
        first = next(iter(measured["ref"]))  # the world's main score: gold, or judge
        plotted[f"{first} score"] = {names[k]: by_name[first] for k, by_name in measured.items()}
        if s.samples_per_prompt > 1:  # does the reward order each policy's own answers as the gold does?
            for k in ("ref", "policy"):
                hits = ordered_as_gold(rewards[k], measured[k][first], s.samples_per_prompt)
                if hits:
                    metrics[f"eval/reward_accuracy/{k}"], metrics[f"eval/reward_accuracy/{k}_se"] = mean_se(hits)
    ctx.run.log_metrics(metrics)

    ctx.save_text("eval_samples", "eval_samples.md",
                  side_by_side(flat_prompts, {names[k]: (texts[k], rewards[k]) for k in texts},
                               {names[k]: by_name[first] for k, by_name in measured.items()} if data.simulated else None,
                               first if data.simulated else "gold"))
    reward_plot(ctx.run_dir / "eval_rewards.png", plotted)
    ctx.save("eval_plot", ctx.run_dir / "eval_rewards.png")
    summary = {"prompts": len(prompts), "responses_per_policy": len(flat_prompts), **metrics}
    ctx.save_text("eval_summary", "eval_summary.json", json.dumps(summary, indent=2) + "\n")
    print(summary_table(metrics))


def summary_table(metrics: dict[str, float]) -> str:
    """Before (reference) and after (aligned) side by side, and best-of-n when reported."""
    rows = [("reward", "eval/reward"), ("gold score", "eval/gold"), ("judge score", "eval/judge"),
            ("toxicity", "eval/toxicity"), ("toxic > 0.5", "eval/toxic_rate"), ("refusal", "eval/refusal"),
            ("over-refusal", "eval/overrefusal"), ("truthful", "eval/truthful")]
    cols = [("ref", "reference"), ("policy", "aligned")] + ([("bon", "best-of-n")] if "eval/reward/bon" in metrics else [])
    def cell(key: str) -> str:  # the mean, ± its standard error where measured
        return format_mean_se(metrics[key], metrics.get(f"{key}_se"))
    lines = [f"{'':12}" + "".join(f" {title:>16}" for _, title in cols)]
    lines += [f"{name:12}" + "".join(f" {cell(f'{key}/{c}'):>16}" for c, _ in cols)
              for name, key in rows if f"{key}/ref" in metrics]
    lines.append(f"KL(aligned ‖ reference) {cell('eval/kl/policy_ref')} nats per response; "
                 f"win rate (reward model) {cell('eval/win_rate')}")
    if "eval/kl/bon_ref" in metrics:
        lines.append(f"KL(best-of-n ‖ reference) {metrics['eval/kl/bon_ref']:.2f} nats estimated "
                     f"(bound log n − (n−1)/n = {metrics['eval/kl/bon_bound']:.2f})")
    return "\n".join(lines)
