"""The labeler report `prepare` writes for ranked feedback: each labeler's agreement with the consensus
over time (the order the sets were labeled in), and who agrees with whom (a labeler-by-labeler
matrix of mean Kendall tau-b). Drawing only; the numbers come from `consensus`."""
from __future__ import annotations

from pathlib import Path

from rlhf_exp.feedback.consensus import agreement_series, pairwise_agreement
from rlhf_exp.feedback.formats import RankedSet
from rlhf_exp.files import atomic_path


def rolling_mean(points: list[tuple[int, float | None]], window: int) -> tuple[list[int], list[float]]:
    """(the k-th compared set, 1-based; the mean tau over its last `window` compared sets), skipping
    sets where tau is undefined."""
    taus = [t for _, t in points if t is not None]
    xs, ys = [], []
    for k in range(len(taus)):
        recent = taus[max(0, k + 1 - window):k + 1]
        xs.append(k + 1)
        ys.append(sum(recent) / len(recent))
    return xs, ys


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path: Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_over_time(sets: list[RankedSet], path: Path, set_aside: set[str], window: int = 25) -> Path:
    """Each labeler's rolling-mean agreement with the others' consensus, set after set; a labeler
    set aside is drawn dashed."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for lab, points in sorted(agreement_series(sets).items()):
        xs, ys = rolling_mean(points, window)
        ax.plot(xs, ys, ls="--" if lab in set_aside else "-", label=lab + (" (set aside)" if lab in set_aside else ""))
    ax.axhline(0, color="grey", lw=0.8)
    ax.set(xlabel="sets ranked by the labeler (in file order)", ylim=(-1.05, 1.05),
           ylabel=f"Kendall tau-b vs consensus\n(mean of the last {window} sets)",
           title="Labeler agreement with the others' consensus over time")
    ax.legend(fontsize=8, ncol=2, loc="lower left")
    return _save(fig, path)


def plot_matrix(sets: list[RankedSet], path: Path) -> Path:
    """The labeler-by-labeler matrix of mean Kendall tau-b over the sets both ranked (blank: never
    ranked the same set), each cell annotated with its mean and count."""
    import numpy as np
    plt = _pyplot()
    labs, tau, count = pairwise_agreement(sets)
    values = np.array([[np.nan if t is None else t for t in row] for row in tau], dtype=float)
    size = max(4.0, 0.7 * len(labs) + 2)
    fig, ax = plt.subplots(figsize=(size + 1, size))
    im = ax.imshow(values, cmap="RdYlGn", vmin=-1, vmax=1)
    ax.set_xticks(range(len(labs)), labs, rotation=45, ha="right")
    ax.set_yticks(range(len(labs)), labs)
    for a in range(len(labs)):
        for b in range(len(labs)):
            if a != b and tau[a][b] is not None:
                ax.text(b, a, f"{tau[a][b]:+.2f}\n({count[a][b]})", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, label="mean Kendall tau-b (sets both ranked)")
    ax.set_title("Who agrees with whom")
    return _save(fig, path)
