"""Reward-model over-optimisation (Gao et al., 2022, "Scaling laws for reward model overoptimization"):
the gain in score over the starting policy as a function of d = sqrt(KL(π ‖ π_ref)),

- best-of-n: R(d) = d·(α − β·d),
- RL:        R(d) = d·(α − β·log d),

fitted by least squares (both are linear in α and β), for the gold score and for the proxy (the
reward model that was optimised). A gold curve that peaks while the proxy keeps rising is
over-optimisation.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

FORMS = ("bon", "rl")


def features(d: np.ndarray, form: str) -> np.ndarray:
    """The two columns whose combination α·x1 − β·x2 is R(d): (d, d²) for best-of-n, (d, d·log d) for RL."""
    d = np.asarray(d, dtype=float)
    if form == "bon":
        return np.stack([d, d * d], axis=1)
    if form == "rl":
        return np.stack([d, d * np.log(np.where(d > 0, d, 1.0))], axis=1)  # d·log d → 0 at d = 0
    raise ValueError(f"form {form!r}: expected one of {FORMS}")


def curve(d, alpha: float, beta: float, form: str) -> np.ndarray:
    x = features(d, form)
    return alpha * x[:, 0] - beta * x[:, 1]


@dataclass
class Fit:
    form: str
    alpha: float
    beta: float
    points: int

    @property
    def peak(self) -> float | None:
        """d where R(d) is highest, when it has a maximum (β > 0): α/(2β) for best-of-n, exp(α/β − 1) for RL."""
        if self.beta <= 0:
            return None
        if self.form == "bon":
            return self.alpha / (2 * self.beta)
        ratio = self.alpha / self.beta - 1
        return math.exp(ratio) if ratio < 700 else math.inf


def fit(d, r, form: str) -> Fit:
    """Least-squares α, β of R(d) through the origin (the starting policy: d = 0, R = 0)."""
    x = features(d, form)
    (alpha, beta_neg), *_ = np.linalg.lstsq(x, np.asarray(r, dtype=float), rcond=None)
    return Fit(form, float(alpha), float(-beta_neg), len(x))


def study_points(jobs) -> dict[tuple[str, str], tuple[list[float], list[float]]]:
    """(form, score) -> (d, gain) over the jobs that evaluated it: RL from each job's aligned policy,
    best-of-n from its best-of-n policy; score is `gold` or `proxy` (the reward), gain over the
    reference in the same job."""
    out: dict[tuple[str, str], tuple[list[float], list[float]]] = {}
    for job in jobs:
        m = job.metrics
        for form, kl_key, pol in (("rl", "eval/kl/policy_ref", "policy"), ("bon", "eval/kl/bon_ref", "bon")):
            for score, key in (("gold", "eval/gold"), ("proxy", "eval/reward")):
                if kl_key in m and f"{key}/{pol}" in m and f"{key}/ref" in m:
                    ds, rs = out.setdefault((form, score), ([], []))
                    ds.append(math.sqrt(max(m[kl_key], 0.0)))
                    rs.append(m[f"{key}/{pol}"] - m[f"{key}/ref"])
    return out


def study(jobs, out_path) -> str | None:
    """Fit every (form, score) with at least 3 points, draw points and curves in one plot (gold
    solid, proxy dashed; best-of-n and RL in two colours) at `out_path`, and return a Markdown table
    of the coefficients and peaks; None when no series has 3 points."""
    points = {k: v for k, v in study_points(jobs).items() if len(v[0]) >= 3}
    if not points:
        return None
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    colours = {"bon": "tab:blue", "rl": "tab:red"}
    names = {"bon": "best-of-n", "rl": "RL"}
    rows = ["| policy | score | α | β | points | peak d | peak KL | gain at peak |", "|---|---|---|---|---|---|---|---|"]
    fig, ax = plt.subplots(figsize=(7, 4.8))
    for (form, score), (ds, rs) in sorted(points.items()):
        f = fit(ds, rs, form)
        style = dict(color=colours[form], linestyle="-" if score == "gold" else "--")
        ax.scatter(ds, rs, color=colours[form], marker="o" if score == "gold" else "x", s=30)
        grid = np.linspace(0, max(ds) * 1.1, 200)
        ax.plot(grid, curve(grid, f.alpha, f.beta, form), label=f"{names[form]}, {score}", **style)
        peak = f.peak
        shown = (f"{peak:.2f}", f"{peak * peak:.2f}", f"{float(curve([peak], f.alpha, f.beta, form)[0]):+.3f}") \
            if peak is not None and math.isfinite(peak) else ("none (still rising)", "", "")
        rows.append(f"| {names[form]} | {score} | {f.alpha:.4f} | {f.beta:.4f} | {f.points} | " + " | ".join(shown) + " |")
    ax.axhline(0, color="grey", linewidth=0.6)
    ax.set(xlabel="d = sqrt(KL(π ‖ π_ref)), nats^½", ylabel="score − the reference's score",
           title="Over-optimisation: gold (solid, o) and proxy (dashed, x)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_path, dpi=100)
    plt.close(fig)
    return "\n".join(rows)
