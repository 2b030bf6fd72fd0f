"""Each stage in its own tracked run: the run's tags, every setting as a param, and the composed
config as an artifact."""
from __future__ import annotations

import contextlib
import subprocess
from pathlib import Path

from omegaconf import DictConfig, OmegaConf


def flatten(tree, prefix: str = "") -> dict[str, object]:
    """Nested dicts/lists -> {"a.b.c": leaf}; `_target_` keys are left out."""
    out: dict[str, object] = {}
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    for key, value in items:
        if key == "_target_":
            continue
        name = f"{prefix}{key}"
        if isinstance(value, (dict, list)) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


class Tracking:
    """Opens the tracked runs of one invocation, all with the same tags, params and config."""

    def __init__(self, tracker, cfg: DictConfig, tags: dict):
        from rlhf_exp.tracking.repeatability import repeatability_tags
        self.tracker = tracker
        self.tags = {**repeatability_tags(str(cfg.trainer.get("accelerator", "auto"))), **tags}
        self.params = flatten(OmegaConf.to_container(cfg, resolve=True))
        self.config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
        if commit := git_commit():
            self.tags.update({"git_commit": commit, "mlflow.source.git.commit": commit})

    @contextlib.contextmanager
    def run(self, name: str, parent=None, continue_id: str | None = None, stage: str | None = None):
        """A new tracked run for `name` (tagged `stage`, default: the name), with the tags, params and
        config; or run `continue_id` continued (its params and config were logged when it began)."""
        with self.tracker.run(name, tags={**self.tags, "stage": stage or name}, parent=parent,
                              continue_id=continue_id) as run:
            if not continue_id:
                run.log_params(self.params)
                run.log_text(self.config_yaml, "config.yaml")
            yield run
