"""Run what `stage` names: check the whole config first, then each stage in its own MLflow run.

`stage=pipeline` runs every stage in order, as nested runs under one parent run.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
import traceback
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlhf_exp.config import ConfigError, build_node, flatten, setting, settings
from rlhf_exp.errors import UserError
from rlhf_exp.stages import PIPELINE, REUSABLE, stage_function
from rlhf_exp.stages.context import StageContext


@settings
class RunSettings:
    stage: str = setting(choices=("pipeline",) + PIPELINE)
    seed: int = setting(ge=0)
    experiment_name: str
    reuse: str | None            # an earlier pipeline run dir whose stage outputs are taken as they are
    metric: str                  # the metric a sweep optimises (returned to Hydra's sweeper)

    def __post_init__(self):
        if self.reuse and not any((Path(self.reuse) / path).exists() for path, _ in REUSABLE.values()):
            raise ValueError(f"reuse = {self.reuse!r}: expected an earlier pipeline run directory (with "
                             + ", ".join(path for path, _ in REUSABLE.values()) + ")")


def reused_outputs(run_dir: str) -> dict[str, Path]:
    """The outputs an earlier run left in run_dir, by name (see REUSABLE)."""
    return {name: Path(run_dir) / path for name, (path, _) in REUSABLE.items() if (Path(run_dir) / path).exists()}


def stages_to_run(reused: dict[str, Path]) -> list[str]:
    """The pipeline's stages, less those whose every output is reused."""
    writes = {stage: [n for n, (_, s) in REUSABLE.items() if s == stage] for stage in PIPELINE}
    return [s for s in PIPELINE if not writes[s] or not all(n in reused for n in writes[s])]


def validate_config(cfg: DictConfig, choices: dict[str, str] | None = None) -> dict:
    """Build every node of the config; raise one ConfigError that lists every problem."""
    choices = choices or {}
    problems, built = [], {}
    scalars = {k: cfg[k] for k in cfg if not OmegaConf.is_dict(cfg[k])}
    top = OmegaConf.create({"_target_": f"{__name__}.RunSettings", **scalars})
    nodes = {"run": top, **{k: cfg[k] for k in cfg if OmegaConf.is_dict(cfg[k])}}
    for name, node in nodes.items():
        if "_target_" not in node:
            problems.append(f"top level: unknown key '{name}' (a node with no '_target_')")
            continue
        try:
            built[name] = build_node(node, "" if name == "run" else name)
        except ConfigError as err:
            source = f" (conf/{name}/{choices[name]}.yaml)" if choices.get(name) else ""
            where = "at the top level" if name == "run" else f"in '{name}'{source}"
            problems.append(f"{where}:\n  " + str(err).replace("\n", "\n  "))
    if problems:
        raise ConfigError("\n".join(problems))
    return built


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


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


def run_stages(cfg: DictConfig, choices: dict[str, str], extra_tags: dict) -> float | None:
    """Validate, then run the requested stage(s) with tracking; return the value of `metric` from
    the pipeline's evaluation, if there was one. Raises UserError on bad input."""
    built = validate_config(cfg, choices)
    stage = built["run"].stage
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    tracker = built["logger"]
    params = flatten(OmegaConf.to_container(cfg, resolve=True))
    config_yaml = OmegaConf.to_yaml(cfg, resolve=True)
    tags = {"algorithm": cfg.algorithm.name, "seed": cfg.seed, **extra_tags}
    if commit := git_commit():
        tags.update({"git_commit": commit, "mlflow.source.git.commit": commit})
    outputs: dict[str, Path] = {}  # files of the stages run so far, passed on to the next
    if cfg.reuse and stage == "pipeline":
        outputs.update(reused_outputs(cfg.reuse))
        tags["reused_from"] = str(Path(cfg.reuse).resolve())

    @contextlib.contextmanager
    def tracked(name: str, parent=None):
        with tracker.run(name, tags={**tags, "stage": name}, parent=parent) as run:
            run.log_params(params)
            run.log_text(config_yaml, "config.yaml")
            yield run

    def run_stage(name: str, parent=None) -> None:
        with tracked(name, parent) as run:
            t0 = time.perf_counter()
            stage_function(name)(StageContext(cfg, built, run_dir, run, outputs))
            seconds = time.perf_counter() - t0
            run.log_metrics({f"{name}/perf/seconds": seconds})
            print(f"[{name}] done in {seconds:.1f} s; outputs in {run_dir}")

    if stage != "pipeline":
        run_stage(stage)
        return None
    with tracked("pipeline") as parent:
        for name in stages_to_run(outputs):
            run_stage(name, parent)
        if "eval_summary" not in outputs:
            return None
        from rlhf_exp.stages.eval import summary_table
        summary = json.loads(outputs["eval_summary"].read_text(encoding="utf-8"))
        parent.log_metrics({k: v for k, v in summary.items() if k.startswith("eval/")})
    print(f"\n== before (reference) and after (aligned), {summary['prompts']} held-out prompts ==\n"
          f"{summary_table(summary)}\noutputs: {run_dir}")
    return summary.get(cfg.metric)


def main(cfg: DictConfig) -> float | None:
    """The Hydra task: report user errors in words; in a multirun, a failed job (its MLflow run
    FAILED, with the error) lets the sweep go on. Returns the value of `metric` for a sweeper."""
    choices, sweep_tags = hydra_info()
    try:
        return run_stages(cfg, choices, sweep_tags)
    except UserError as err:
        kind = "config error" if isinstance(err, ConfigError) else "input error"
        where = f"job {sweep_tags['sweep_job']}: " if sweep_tags else ""
        print(f"{where}{kind}: {err}", file=sys.stderr)
        if not sweep_tags:
            sys.exit(2)
    except Exception:
        if not sweep_tags:
            raise
        print(f"job {sweep_tags['sweep_job']} failed:\n{traceback.format_exc()}", file=sys.stderr)
    return float("nan")  # a failed job: a sweeper (Optuna) records a failed trial
