"""The Hydra task: run the pipeline, report user errors in words (exit status 2), and in a
multirun let a failed job (its MLflow run FAILED, with the error) not stop the sweep; at the end
of the sweep, `FailedJobs` lists the jobs that failed and exits non-zero."""
from __future__ import annotations

import sys
import traceback
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from rlhf_exp.errors import UserError
from rlhf_exp.files import write_text

FAILED_MARK = "FAILED"  # written into a failed multirun job's directory, with its error


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
        where = f"job {sweep_tags['sweep_job']}: " if sweep_tags else ""
        print(f"{where}{err.kind}: {err}", file=sys.stderr)
        if not sweep_tags:
            sys.exit(2)
        error = f"{err.kind}: {err}"
    except Exception as err:
        if not sweep_tags:
            raise
        print(f"job {sweep_tags['sweep_job']} failed:\n{traceback.format_exc()}", file=sys.stderr)
        error = f"{type(err).__name__}: {err}"
    from hydra.core.hydra_config import HydraConfig
    write_text(Path(HydraConfig.get().runtime.output_dir) / FAILED_MARK, error + "\n")
    return float("nan")  # a failed job: a sweeper (Optuna) records a failed trial


class FailedJobs(Callback):
    """A Hydra callback (conf/hydra/default.yaml): when a multirun ends, name every job that failed,
    with its error and directory, and exit with status 1 if any did. The jobs still all ran."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        sweep = Path(config.hydra.sweep.dir)
        failed = sorted(sweep.glob(f"*/{FAILED_MARK}"), key=lambda p: (len(p.parent.name), p.parent.name))
        if not failed:
            return
        jobs = sum(1 for p in sweep.iterdir() if p.is_dir() and p.name.isdigit())
        lines = [f"job {p.parent.name} ({p.parent}): {' '.join(p.read_text(encoding='utf-8').split())[:300]}"
                 for p in failed]
        print(f"\n{len(failed)} of {jobs} jobs failed:\n  " + "\n  ".join(lines), file=sys.stderr)
        sys.exit(1)
