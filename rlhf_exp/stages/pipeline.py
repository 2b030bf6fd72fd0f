"""The pipeline: check the whole config (`checks.py`), then run the requested stage, or every stage in
order (skipping those whose outputs an earlier run left, `reuse=DIR`), each in its own tracked run
(`runner.py`); `rounds=N` hands the work to a series of rounds (`rounds.py`)."""
from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from rlhf_exp.distributed import is_main
from rlhf_exp.modules.algorithms import record_of
from rlhf_exp.stages import eval as eval_stage
from rlhf_exp.stages.checks import check_reused_split, validate_config
from rlhf_exp.stages.context import StageContext
from rlhf_exp.stages.record import resume_checkpoints
from rlhf_exp.stages.rounds import run_series
from rlhf_exp.stages.runner import (STANDALONE, begin_record, eval_summary, parent_run, planned, print_ui_links,
                                    reused_outputs, run_stage, scratch, stages_to_run, this_rank)
from rlhf_exp.stages.tracked import Tracking
from rlhf_exp.tracking.tracker import NullRun


def run_stages(cfg: DictConfig, choices: dict[str, str], sweep_tags: dict) -> float | None:
    """Validate, then run the requested stage(s) with tracking; return the value of `metric` from
    the pipeline's evaluation, if there was one. Raises UserError on bad input."""
    built = validate_config(cfg, choices)
    stage = built.run.stage
    main_dir = Path(cfg.paths.output_dir)
    if isinstance(stage, str) and stage in STANDALONE:
        if is_main():
            STANDALONE[stage](StageContext(cfg, built, main_dir, NullRun()))
        return None
    tags = {"algorithm": record_of(built.algorithm).name, "seed": cfg.seed, **sweep_tags}
    if built.run.rounds > 1:  # iterated RLHF: sft, then rounds of collect -> ... -> align
        return run_series(cfg, built, tags)
    built, run_dir = this_rank(built), scratch(main_dir)
    outputs: dict[str, Path] = {}  # files of the stages run so far, passed on to the next
    if cfg.reuse and (stage == "pipeline" or isinstance(stage, list)):
        outputs.update(reused_outputs(cfg.reuse))
        check_reused_split(cfg.reuse, built.data)
        tags["reused_from"] = str(Path(cfg.reuse).resolve())
    record = begin_record(main_dir, cfg.resume, stage if isinstance(stage, str) else "pipeline")
    if cfg.resume:  # the same directory (the CLI set it): the same MLflow runs, finished stages skipped
        outputs.update(record.output_paths())
        built = resume_checkpoints(built, record, main_dir)
    tracking = Tracking(built.logger, cfg, tags)
    ctx = StageContext(cfg, built, run_dir, None, outputs, main_dir)

    with built.logger.keeping_writes(main_dir):  # what a failing tracking store could not take, kept
        if isinstance(stage, str) and stage != "pipeline":
            print_ui_links(run_stage(stage, ctx, tracking, record, resumed=bool(cfg.resume)))
            return None
        with parent_run(tracking, record, bool(cfg.resume)) as parent:
            for name in (s for s in planned(stage) if s in stages_to_run(outputs)):  # less what is reused
                if name not in record.done:
                    run_stage(name, ctx, tracking, record, parent, resumed=bool(cfg.resume))
            summary = eval_summary(outputs)
            if summary:
                parent.log_metrics({k: v for k, v in summary.items() if k.startswith("eval/")})
        record.finished("pipeline", outputs)
    if summary and is_main():
        print(f"\n== before (reference) and after (aligned), {summary['prompts']} held-out prompts ==\n"
              f"{eval_stage.summary_table(summary)}\noutputs: {run_dir}")
    print_ui_links(parent)
    return summary.get(cfg.metric) if summary else None
