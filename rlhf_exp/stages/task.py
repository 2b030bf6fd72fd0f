"""The Hydra task: run the pipeline, report user errors in words (exit status 2), and in a
multirun let a failed job (its MLflow run FAILED, with the error) not stop the sweep."""
from __future__ import annotations

import sys
import traceback

from omegaconf import DictConfig

from rlhf_exp.errors import UserError


def hydra_info() -> tuple[dict[str, str], dict[str, str]]:
    """(group choices, multirun tags) from Hydra's runtime config."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    hc = HydraConfig.get()
    tags = {}
    if hc.mode == RunMode.MULTIRUN:
        tags = {"sweep_id": hc.sweep.dir, "sweep_job": hc.job.num,
                "sweep_overrides": " ".join(hc.overrides.task)}
    choices = {k: v for k, v in hc.runtime.choices.items() if v is not None}
    return choices, tags


def main(cfg: DictConfig) -> float | None:
    """Returns the value of `metric` for a sweeper; NaN for a failed job."""
    choices, sweep_tags = hydra_info()
    try:
        from rlhf_exp.stages.pipeline import run_stages
        return run_stages(cfg, choices, sweep_tags)
    except UserError as err:
        kind = err.kind
        where = f"job {sweep_tags['sweep_job']}: " if sweep_tags else ""
        print(f"{where}{kind}: {err}", file=sys.stderr)
        if not sweep_tags:
            sys.exit(2)
    except Exception:
        if not sweep_tags:
            raise
        print(f"job {sweep_tags['sweep_job']} failed:\n{traceback.format_exc()}", file=sys.stderr)
    return float("nan")  # a failed job: a sweeper (Optuna) records a failed trial
