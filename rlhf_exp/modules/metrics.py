"""Turning logged statistics into plain numbers cheaply."""
from __future__ import annotations

import torch


def to_floats(stats: dict) -> dict[str, float]:
    """Scalar tensors and numbers -> floats, with one device transfer for all the tensors."""
    keys = [k for k, v in stats.items() if torch.is_tensor(v)]
    floats = dict(zip(keys, torch.stack([stats[k].float() for k in keys]).tolist())) if keys else {}
    return {k: floats[k] if k in floats else float(v) for k, v in stats.items()}
