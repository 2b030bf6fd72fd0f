"""Agreement between labelers' rankings: Kendall's tau-b and Kendall's W, with ties.

A ranking is a list of numbers, one per completion, smaller = more preferred; equal numbers are ties.
Flags ("F") are turned into numbers before these functions see them (see `consensus.rank_values`).
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Sequence


def mid_ranks(values: Sequence[float]) -> list[float]:
    """Fractional ranks 1..n; tied values share the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            ranks[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Kendall's tau-b between two rankings of the same items; None when either is all ties."""
    if len(x) != len(y):
        raise ValueError(f"rankings of different lengths: {len(x)} and {len(y)}")
    concordant = discordant = ties_x = ties_y = 0
    for i, j in combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            ties_x += 1
            ties_y += 1
        elif dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif (dx > 0) == (dy > 0):
            concordant += 1
        else:
            discordant += 1
    n0 = len(x) * (len(x) - 1) // 2
    denom = math.sqrt((n0 - ties_x) * (n0 - ties_y))
    return None if denom == 0 else (concordant - discordant) / denom


def kendall_w(rankings: Sequence[Sequence[float]]) -> float | None:
    """Kendall's coefficient of concordance W of m raters over n items, tie-corrected.

    W = 12·S / (m²(n³ − n) − m·ΣT), S = Σ_i (R_i − R̄)², R_i the sum of item i's mid-ranks,
    T = Σ over a rater's tie groups of (t³ − t). None when undefined (m < 2, n < 2, all tied).
    """
    m = len(rankings)
    if m < 2:
        return None
    n = len(rankings[0])
    if n < 2:
        return None
    ranks = [mid_ranks(r) for r in rankings]
    sums = [sum(r[i] for r in ranks) for i in range(n)]
    mean = sum(sums) / n
    s = sum((r - mean) ** 2 for r in sums)
    tie_term = 0.0
    for r in ranks:
        for v in set(r):
            t = r.count(v)
            tie_term += t ** 3 - t
    denom = m * m * (n ** 3 - n) - m * tie_term
    return None if denom <= 0 else 12 * s / denom
