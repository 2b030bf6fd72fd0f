"""`stage=eval`: the reference policy and the aligned policy on the same held-out prompts.

Both sample the same number of responses per prompt; the `reward` group scores them, the gold
scorer too in the synthetic world (gold score and toxicity); the KL of the aligned policy to the
reference is measured on the aligned policy's own samples; the win rate pairs the i-th response of
each policy to each prompt and counts a tie as half a win. Writes eval_samples.md (side by side),
eval_rewards.png (distributions before and after) and eval_summary.json.
"""
from __future__ import annotations

import json
from statistics import mean
from typing import Annotated

import pytorch_lightning as pl
from pydantic import Field

from rlhf_exp.config import schema
from rlhf_exp.feedback.sources import gold_scores
from rlhf_exp.models.generation import encode_prompts, generate, left_pad_collate
from rlhf_exp.modules.rollout import rollout_logprobs
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


def sample_rollouts(lm, tokenizer, prompts: list[str], s: EvalSettings):
    """Responses to each prompt (one per row), `batch_size` rows per generate call, as Rollouts."""
    rows, collate = encode_prompts(tokenizer, prompts), left_pad_collate(tokenizer.pad_token_id)
    for i in range(0, len(rows), s.batch_size):
        b = collate(rows[i:i + s.batch_size])
        yield generate(lm, tokenizer, b["input_ids"].to(lm.device), b["attention_mask"].to(lm.device),
                       max_new_tokens=s.max_new_tokens, temperature=s.temperature)


def sequence_kl(policy, ref, rollout, temperature: float) -> list[float]:
    """Σ_t log π(y_t) − log π_ref(y_t) over each of the policy's own responses (EOS included)."""
    diff = rollout_logprobs(policy, rollout, temperature) - rollout_logprobs(ref, rollout, temperature)
    return (diff * rollout.mask).sum(1).tolist()


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


def side_by_side(prompts, ref, pol, ref_r, pol_r) -> str:
    lines = ["# Reference vs aligned policy on held-out prompts", ""]
    for i, p in enumerate(prompts):
        lines += [f"## {p}", "", f"- **reference** ({ref_r[i]:+.2f}): {ref[i]}",
                  f"- **aligned** ({pol_r[i]:+.2f}): {pol[i]}", ""]
    return "\n".join(lines)


def run(ctx: StageContext) -> None:
    s: EvalSettings = ctx.built["eval"]
    pl.seed_everything(ctx.cfg.seed, workers=True, verbose=False)
    data = ctx.built["data"]
    prompts = data.heldout_prompts() or data.train_prompts()
    policy_dir = ctx.input_path(s.policy, "aligned_policy", "eval.policy")
    policy_spec = ctx.model_spec(str(policy_dir))
    ref_spec = ctx.model_spec(s.reference, "policy")  # the directory given, this pipeline's sft/, or the model group
    tokenizer = policy_spec.tokenizer()
    device = ctx.device()
    policy, ref = policy_spec.causal_lm(tokenizer).to(device), ref_spec.causal_lm(tokenizer).to(device)
    flat_prompts = [p for p in prompts for _ in range(s.samples_per_prompt)]
    texts, kl = {"ref": [], "policy": []}, []
    for r in sample_rollouts(ref, tokenizer, flat_prompts, s):
        texts["ref"] += r.texts
    for r in sample_rollouts(policy, tokenizer, flat_prompts, s):
        texts["policy"] += r.texts
        kl += sequence_kl(policy, ref, r, s.temperature)

    reward = ctx.reward_source()
    if hasattr(reward, "to"):
        reward.to(device)
    rewards = {k: reward.score(flat_prompts, v).tolist() for k, v in texts.items()}
    wins = [1.0 if a > b else 0.5 if a == b else 0.0 for a, b in zip(rewards["policy"], rewards["ref"])]
    metrics = {f"eval/reward/{k}": mean(v) for k, v in rewards.items()}
    metrics.update({"eval/kl/policy_ref": mean(kl), "eval/win_rate": mean(wins)})
    plotted = {"reward": {"reference": rewards["ref"], "aligned": rewards["policy"]}}
    if data.simulated:
        gold = {k: [g for gs in gold_scores([(p, [t]) for p, t in zip(flat_prompts, v)]) for g in gs]
                for k, v in texts.items()}
        for k, gs in gold.items():
            metrics[f"eval/gold/{k}"] = mean(g.overall for g in gs)
            metrics[f"eval/toxicity/{k}"] = mean(g.toxicity for g in gs)
        plotted["gold score"] = {"reference": [g.overall for g in gold["ref"]],
                                 "aligned": [g.overall for g in gold["policy"]]}
    ctx.run.log_metrics(metrics)

    ctx.save_text("eval_samples", "eval_samples.md",
                  side_by_side(flat_prompts, texts["ref"], texts["policy"], rewards["ref"], rewards["policy"]))
    reward_plot(ctx.run_dir / "eval_rewards.png", plotted)
    ctx.save("eval_plot", ctx.run_dir / "eval_rewards.png")
    summary = {"prompts": len(prompts), "responses_per_policy": len(flat_prompts), **metrics}
    ctx.save_text("eval_summary", "eval_summary.json", json.dumps(summary, indent=2) + "\n")
    print(summary_table(metrics))


def summary_table(metrics: dict[str, float]) -> str:
    """Before (reference) and after (aligned) side by side."""
    rows = [("reward", "eval/reward"), ("gold score", "eval/gold"), ("toxicity", "eval/toxicity")]
    lines = [f"{'':12} {'reference':>10} {'aligned':>10}"]
    lines += [f"{name:12} {metrics[f'{key}/ref']:>10.3f} {metrics[f'{key}/policy']:>10.3f}"
              for name, key in rows if f"{key}/ref" in metrics]
    lines.append(f"KL(aligned ‖ reference) {metrics['eval/kl/policy_ref']:.2f} nats per response; "
                 f"win rate (reward model) {metrics['eval/win_rate']:.2f}")
    return "\n".join(lines)
