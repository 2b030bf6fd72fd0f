"""Every method's frontier: the world's gold (or the judge) against KL to the reference, one point per
setting with its mean ± standard error over seeds, a line per method. Each aligned run gives its
algorithm's point at its KL knob's value; each run's eval also gives a best-of-n point of the
reference at its `eval.best_of_n` (the same for every algorithm of one seed, so counted once per seed).
Drawn by `rlhf-exp-compare` (frontier_gold_vs_kl.png and a table in compare.md)."""
from __future__ import annotations

import math
from dataclasses import dataclass

from rlhf_exp.core.stats import format_mean_se, mean_se
from rlhf_exp.modules.algorithms import records

@dataclass
class Point:
    """One setting of one method, over its seeds."""
    method: str
    setting: str          # the knob's value (best-of-n: n)
    n: int                # seeds
    kl: tuple[float, float]
    score: tuple[float, float]


def score_key(jobs) -> str | None:
    """The world's score the runs report: gold (synthetic world) or the judge (real-text world)."""
    for name in ("gold", "judge"):
        if any(f"eval/{name}/policy" in j.metrics for j in jobs):
            return name
    return None


def frontier_points(jobs) -> list[Point]:
    """Points of the finished runs, grouped by (method, setting) over seeds, by method then KL."""
    name = score_key(jobs)
    if name is None:
        return []
    samples: dict[tuple[str, str], dict[str, tuple[float, float]]] = {}
    knobs = {name: r.kl_knob for name, r in records().items()}  # each method's KL knob labels its points
    for j in (j for j in jobs if j.status == "FINISHED"):
        seed = j.params.get("seed", "0")
        m = j.metrics
        if "eval/kl/policy_ref" in m and f"eval/{name}/policy" in m:
            setting = j.params.get(knobs.get(j.algorithm, ""), "")
            samples.setdefault((j.algorithm, setting), {})[seed] = (m["eval/kl/policy_ref"], m[f"eval/{name}/policy"])
        if "eval/kl/bon_ref" in m and f"eval/{name}/bon" in m:
            n = j.params.get("eval.best_of_n", "?")
            samples.setdefault(("best-of-n", n), {})[seed] = (m["eval/kl/bon_ref"], m[f"eval/{name}/bon"])
    points = [Point(method, setting, len(by_seed), mean_se([k for k, _ in by_seed.values()]),
                    mean_se([s for _, s in by_seed.values()])) for (method, setting), by_seed in samples.items()]
    return sorted(points, key=lambda p: (p.method, p.kl[0]))


def frontier_table(points: list[Point], score: str) -> str:
    lines = [f"| method | setting | n | KL to the reference | {score} |", "|---|---|---|---|---|"]
    lines += [f"| {p.method} | {p.setting} | {p.n} | {format_mean_se(*p.kl)} | {format_mean_se(*p.score)} |" for p in points]
    return "\n".join(lines)


def frontier_plot(points: list[Point], score: str, path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 5))
    for method in sorted({p.method for p in points}):
        pts = [p for p in points if p.method == method]
        se = [0.0 if math.isnan(v) else v for v in (p.score[1] for p in pts)]
        xse = [0.0 if math.isnan(v) else v for v in (p.kl[1] for p in pts)]
        ax.errorbar([p.kl[0] for p in pts], [p.score[0] for p in pts], yerr=se, xerr=xse, marker="o", capsize=3,
                    label=method)
        for p in pts:
            ax.annotate(p.setting, (p.kl[0], p.score[0]), fontsize=7, alpha=0.7)
    ax.set(xlabel="KL(policy ‖ reference), nats per response", ylabel=f"{score} score (held out)",
           title=f"{score} against KL: mean ± standard error over seeds")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
