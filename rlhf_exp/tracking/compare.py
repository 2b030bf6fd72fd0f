"""Pipeline runs read back from MLflow, and what `rlhf-exp-compare` (`tools/compare.py`) makes of them:
one row per pipeline run (a Hydra job) with the params that differ between the runs and the final
metrics of its stages (`table`), each setting over its seeds (`over_seeds`), and the PNG plots
(`plots`: reward against KL to the reference, one series per algorithm; gold score against
reward-model score; learning curves; the metric against each swept param), each run labelled by
the settings that vary across the runs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_exp.core.stats import format_mean_se, mean_se
from rlhf_exp.modules.algorithms import records

SHOWN = ["eval/gold/policy", "eval/judge/policy", "eval/reward/policy", "eval/kl/policy_ref", "eval/toxicity/policy",
         "eval/refusal/policy", "eval/truthful/policy", "eval/win_rate"]  # those some run logged (the world decides)
NOT_SWEPT = ("paths.", "hydra", "logger.", "reuse", "trainer.default_root_dir",
             "model.tokenizer_dir")  # where things are, not knobs


@dataclass
class Job:
    """A pipeline run and what its stages logged."""
    run_id: str
    name: str
    status: str
    algorithm: str
    params: dict[str, str]
    metrics: dict[str, float] = field(default_factory=dict)
    curve: list[tuple[int, float]] = field(default_factory=list)
    gold_curve: list[tuple[int, float]] = field(default_factory=list)  # the world's gold of the same rollouts
    error: str = ""
    tags: dict[str, str] = field(default_factory=dict)


def load_jobs(client, experiment: str, sweep: str | None) -> list[Job]:
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"--experiment {experiment!r}: no such MLflow experiment at {client.tracking_uri}")
    query = "tags.stage = 'pipeline'" + (f" and tags.sweep_id = '{sweep}'" if sweep else "")
    jobs, known = [], records()
    for run in client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time ASC"]):
        algorithm = run.data.tags.get("algorithm", "?")
        job = Job(run.info.run_id, run.info.run_name, run.info.status, algorithm, dict(run.data.params),
                  dict(run.data.metrics), error=run.data.tags.get("error", ""), tags=dict(run.data.tags))
        children = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        for child in children:
            job.metrics.update(child.data.metrics)
            if child.data.tags.get("stage") == "align" and algorithm in known:
                history = client.get_metric_history(child.info.run_id, known[algorithm].curve)  # its learning curve
                job.curve = sorted((m.step, m.value) for m in history)
                gold = client.get_metric_history(child.info.run_id, f"{algorithm}/gold/score_mean")
                job.gold_curve = sorted((m.step, m.value) for m in gold)
        jobs.append(job)
    return jobs


def swept_params(jobs: list[Job]) -> list[str]:
    """The knobs of the sweep: params with more than one value among the jobs that have them (an
    `algorithm.*` key among the jobs of one algorithm: PPO's batch size is not swept by comparing
    PPO with DPO), less copies of another knob's column (`data.seed` follows `seed`)."""
    def varies(key: str) -> bool:  # an algorithm's key varies only among the runs of that algorithm
        groups = {j.algorithm if key.startswith("algorithm.") else "" for j in jobs}
        return any(len({j.params.get(key) for j in jobs if key in j.params
                        and (j.algorithm == g or not g)}) > 1 for g in groups)

    swept, columns = [], set()
    for key in sorted({k for j in jobs for k in j.params}, key=lambda k: (k.count("."), k)):
        column = tuple(j.params.get(key) for j in jobs)
        if key.startswith(NOT_SWEPT) or not varies(key) or column in columns:
            continue
        swept.append(key)
        columns.add(column)
    return swept


def run_labels(jobs: list[Job], swept: list[str]) -> dict[str, str]:
    """Each run named by what varies across the runs: its algorithm when there are several, then the
    last part of each swept key that it has (`clip_eps=0.1`, `algorithm=dpo beta=0.5`); the run id
    when nothing varies or two runs would read the same."""
    several = len({j.algorithm for j in jobs}) > 1
    labels = {}
    for j in jobs:
        parts = [f"algorithm={j.algorithm}"] if several else []
        parts += [f"{k.rsplit('.', 1)[-1]}={j.params[k]}" for k in swept if k in j.params]
        labels[j.run_id] = " ".join(parts) or j.run_id[:8]
    if len(set(labels.values())) < len(labels):
        labels = {rid: label if label == rid[:8] else f"{label} ({rid[:8]})" for rid, label in labels.items()}
    return labels


def sort_key(metric: str):
    def key(job: Job):
        value = job.metrics.get(metric)
        return (value is None or math.isnan(value), -(value or 0.0))
    return key


def table(jobs: list[Job], swept: list[str], metric: str) -> str:
    """A Markdown table, best first by `metric`."""
    metrics = [metric] + [m for m in SHOWN if m != metric and any(m in j.metrics for j in jobs)]
    head = ["run", "status", "algorithm", *swept, *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for j in sorted(jobs, key=sort_key(metric)):
        values = [f"{j.metrics[m]:.3f}" if m in j.metrics else "" for m in metrics]
        lines.append("| " + " | ".join([j.run_id[:8], j.status, j.algorithm,
                                        *[j.params.get(k, "") for k in swept], *values]) + " |")
    return "\n".join(lines)


def over_seeds(jobs: list[Job], swept: list[str], metric: str) -> str | None:
    """When `seed` is among the swept keys: a Markdown table with one row per setting of the other
    swept keys (and algorithm), each metric as mean ± standard error over its seeds (sample std / √n)
    and n, best first by `metric`; None when no seed varies. Only finished runs count."""
    if "seed" not in swept:
        return None
    keys = [k for k in swept if k != "seed"]
    metrics = [metric] + [m for m in SHOWN if m != metric and any(m in j.metrics for j in jobs)]
    groups: dict[tuple, list[Job]] = {}
    for j in jobs:
        if j.status == "FINISHED":
            groups.setdefault((j.algorithm, *(j.params.get(k, "") for k in keys)), []).append(j)

    rows = []
    for setting, members in groups.items():
        cells = []
        for m in metrics:
            values = [j.metrics[m] for j in members if m in j.metrics and not math.isnan(j.metrics[m])]
            cells.append(mean_se(values) if values else None)
        rows.append((setting, len(members), cells))
    rows.sort(key=lambda r: (r[2][0] is None, -(r[2][0][0] if r[2][0] else 0.0)))
    head = ["algorithm", *keys, "n", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for setting, n, cells in rows:
        shown = ["" if c is None else format_mean_se(*c) for c in cells]
        lines.append("| " + " | ".join([*setting, str(n), *shown]) + " |")
    return "\n".join(lines)


def _number(text: str):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


def plots(jobs: list[Job], swept: list[str], metric: str, out: Path) -> list[Path]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    done = [j for j in jobs if j.status == "FINISHED"]
    algorithms = sorted({j.algorithm for j in done})
    label = run_labels(done, swept)
    paths = []

    def scatter(name, x, y, xlabel, ylabel, title):
        fig, ax = plt.subplots(figsize=(6, 4.5))
        for alg in algorithms:
            pts = [(j.metrics[x], j.metrics[y], j) for j in done if j.algorithm == alg and x in j.metrics and y in j.metrics]
            if pts:
                ax.scatter([p[0] for p in pts], [p[1] for p in pts], label=alg, s=40)
                for px, py, j in pts:
                    ax.annotate(label[j.run_id], (px, py), fontsize=7, alpha=0.7)
        ax.set(xlabel=xlabel, ylabel=ylabel, title=title)
        if algorithms:
            ax.legend()
        fig.tight_layout()
        fig.savefig(out / name, dpi=100)
        plt.close(fig)
        paths.append(out / name)

    scatter("frontier_reward_vs_kl.png", "eval/kl/policy_ref", "eval/reward/policy",
            "KL(aligned ‖ reference), nats per response", "reward-model score", "Reward against KL (the frontier)")
    scatter("gold_vs_reward.png", "eval/reward/policy", "eval/gold/policy", "reward-model score",
            "gold score", "Gold score against reward-model score (over-optimisation)")

    # the proxy along training, and below it the world's gold of the same rollouts where it was logged
    rows = 2 if any(j.gold_curve for j in done) else 1
    fig, axes = plt.subplots(rows, max(1, len(algorithms)), figsize=(6 * max(1, len(algorithms)), 4 * rows),
                             squeeze=False)
    known = records()
    for col, alg in enumerate(algorithms or ["-"]):
        curve = known[alg].curve if alg in known else ""
        for row, (attr, title) in enumerate([("curve", curve), ("gold_curve", f"{alg}/gold/score_mean")][:rows]):
            ax = axes[row][col]
            for j in (j for j in done if j.algorithm == alg and getattr(j, attr)):
                pts = getattr(j, attr)
                ax.plot([s for s, _ in pts], [v for _, v in pts], label=label[j.run_id], alpha=0.8)
            ax.set(title=f"{alg}: {title}", xlabel="step")
            if ax.lines:
                ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "learning_curves.png", dpi=100)
    plt.close(fig)
    paths.append(out / "learning_curves.png")

    if swept:
        fig, axes = plt.subplots(1, len(swept), figsize=(4.5 * len(swept), 3.8), squeeze=False)
        for ax, key in zip(axes[0], swept):
            pts = [(j.params[key], j.metrics[metric]) for j in done if key in j.params and metric in j.metrics]
            numeric = all(_number(x) is not None for x, _ in pts)
            cats = sorted({x for x, _ in pts}, key=lambda x: (_number(x) is None, _number(x) or 0, str(x)))
            xs = [_number(x) if numeric else cats.index(x) for x, _ in pts]
            ax.scatter(xs, [y for _, y in pts])
            if not numeric:
                ax.set_xticks(range(len(cats)), cats)
            ax.set(xlabel=key, ylabel=metric)
        fig.tight_layout()
        fig.savefig(out / "metric_by_param.png", dpi=100)
        plt.close(fig)
        paths.append(out / "metric_by_param.png")
    return paths
