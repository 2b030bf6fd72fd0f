"""Run what `stage` names: check the whole config first, then each stage in its own MLflow run.

`stage=pipeline` runs every stage in order, as nested runs under one parent run.
"""
from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from rlhf_exp.config import ConfigError, build_node, flatten, setting, settings
from rlhf_exp.errors import UserError
from rlhf_exp.stages import PIPELINE, stage_function
from rlhf_exp.stages.context import StageContext


@settings
class RunSettings:
    stage: str = setting(choices=("pipeline",) + PIPELINE)
    seed: int = setting(ge=0)
    experiment_name: str


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
        tags = {"sweep_id": hc.sweep.dir, "sweep_job": hc.job.num}
    choices = {k: v for k, v in hc.runtime.choices.items() if v is not None}
    return choices, tags


def run_stages(cfg: DictConfig, choices: dict[str, str], extra_tags: dict) -> None:
    """Validate, then run the requested stage(s) with tracking. Raises UserError on bad input."""
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

    if stage == "pipeline":
        with tracked("pipeline") as parent:
            for name in PIPELINE:
                run_stage(name, parent)
        if "eval_summary" in outputs:
            from rlhf_exp.stages.eval import summary_table
            summary = json.loads(outputs["eval_summary"].read_text(encoding="utf-8"))
            print(f"\n== before (reference) and after (aligned), {summary['prompts']} held-out prompts ==\n"
                  f"{summary_table(summary)}\noutputs: {run_dir}")
    else:
        run_stage(stage)


def main(cfg: DictConfig):
    """The Hydra task: report user errors in words; in a multirun, a failed job lets the sweep go on."""
    choices, sweep_tags = hydra_info()
    try:
        run_stages(cfg, choices, sweep_tags)
    except UserError as err:
        kind = "config error" if isinstance(err, ConfigError) else "input error"
        where = f"job {sweep_tags['sweep_job']}: " if sweep_tags else ""
        print(f"{where}{kind}: {err}", file=sys.stderr)
        if not sweep_tags:
            sys.exit(2)
    return None
