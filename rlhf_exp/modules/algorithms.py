"""The algorithm record: one declaration beside each algorithm's settings class (`register(Algorithm(…))`
at the end of its module) is the only place that knows the algorithm. Align, resuming, the strategy
checks, compare and the frontier read the record; nothing dispatches on class names.

The records are found through the `algorithm` config group: each conf/algorithm/<name>.yaml names its
settings class as `_target_`, and loading that class registers the record of its module."""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Literal

from hydra.utils import get_class, get_method
from omegaconf import OmegaConf

from rlhf_exp.config import conf_dir


@dataclass(frozen=True)
class Algorithm:
    name: str                 # `algorithm=<name>`: its config file, its metrics' prefix, its runs' tag
    settings: type            # its settings schema (the YAML's `_target_`)
    stage: str                # its stage function `run(ctx, settings)`, by import path as a `_target_` is
    on_policy: bool           # generates its training data while it trains (rank-split batches, generation)
    shardable: bool           # shards its weights under trainer=fsdp2
    resumes_by: Literal["iterations", "steps", "epochs"]  # iterations/steps: its loop state under `name`; epochs: Lightning's
    curve: str                # the metric compare draws as its learning curve
    kl_knob: str              # the config key that sets its closeness to the reference (a frontier point's label)

    def run(self) -> Callable:
        """The stage function."""
        return get_method(self.stage)


_BY_SETTINGS: dict[type, Algorithm] = {}


def register(record: Algorithm) -> Algorithm:
    """Declare an algorithm (at import of its settings' module)."""
    known = _BY_SETTINGS.get(record.settings)
    if known is not None and known != record:
        raise ValueError(f"{record.settings.__name__} has two algorithm records: {known.name!r} and {record.name!r}")
    _BY_SETTINGS[record.settings] = record
    return record


def record_of(settings) -> Algorithm | None:
    """The record of a settings object (or class); None for a stage's settings that are no algorithm."""
    cls = settings if isinstance(settings, type) else type(settings)
    return _BY_SETTINGS.get(cls)


@functools.cache
def records() -> dict[str, Algorithm]:
    """Every algorithm of the `algorithm` config group, by name (read once: the strategy checks,
    compare and the frontier all ask)."""
    out = {}
    for path in sorted((conf_dir() / "algorithm").glob("*.yaml")):
        record = record_of(get_class(OmegaConf.load(path)["_target_"]))
        if record is None or record.name != path.stem:
            raise ValueError(f"{path}: its _target_ declares no algorithm record named {path.stem!r} "
                             f"(found {record.name if record else None!r}); expected register(Algorithm(name="
                             f"{path.stem!r}, …)) beside the settings class")
        out[record.name] = record
    return out
