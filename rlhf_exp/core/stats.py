"""Means with their standard errors, as every comparison the project prints reports them."""
from __future__ import annotations

import math


def mean_se(values) -> tuple[float, float]:
    """The mean of the values that are not NaN and its standard error, sample std / √n (NaN for one
    value; both NaN for none)."""
    kept = [float(v) for v in values if not math.isnan(v)]
    if not kept:
        return float("nan"), float("nan")
    m = sum(kept) / len(kept)
    se = math.sqrt(sum((v - m) ** 2 for v in kept) / (len(kept) - 1) / len(kept)) if len(kept) > 1 else float("nan")
    return m, se


def format_mean_se(mean: float, se: float) -> str:
    """`0.300 ± 0.100`, or the mean alone where there is no standard error (one value)."""
    return f"{mean:.3f}" + ("" if se is None or math.isnan(se) else f" ± {se:.3f}")
