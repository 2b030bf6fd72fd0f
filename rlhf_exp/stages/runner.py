"""Running stages, for the pipeline and for a series of rounds alike: which stages there are and what
each leaves for a later run to reuse, one stage in its own tracked run (resumed, recorded, its outputs
shared across ranks), and the parent run that holds them."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from rlhf_exp.distributed import barrier, initialized, is_main, rank
from rlhf_exp.errors import UserError
from rlhf_exp.stages import align, collect, eval as eval_stage, label, prepare, reward_model, sft
from rlhf_exp.stages.context import StageContext
from rlhf_exp.stages.record import RunRecord
from rlhf_exp.stages.tracked import Tracking
from rlhf_exp.tracking.tracker import NoTracker

if TYPE_CHECKING:  # a type only: checks.py, which builds it, imports this module
    from rlhf_exp.stages.checks import Built

STAGES = {"sft": sft.run, "collect": collect.run, "prepare": prepare.run,
          "reward_model": reward_model.run, "align": align.run, "eval": eval_stage.run}  # in pipeline order
# stages people run on their own, never part of stage=pipeline: no tracked run, no run record
STANDALONE = {"label": label.run}
RANK0_STAGES = ("collect", "prepare", "eval")  # under DDP: run by rank 0 alone (they sample and write; nothing trains)

# what an earlier pipeline run left that a later one can take as it is (`reuse=DIR`):
# output name -> path in that run's directory, and the stage that writes it
REUSABLE = {"policy": ("sft", "sft"), "feedback": ("feedback.jsonl", "collect"),
            "heldout": ("heldout.jsonl", "collect"), "thumbs": ("thumbs.jsonl", "collect"),
            "pairs": ("pairs.jsonl", "prepare"),
            "reward_model": ("reward_model", "reward_model")}


def planned(stage: str | list[str]) -> list[str]:
    """The stages a `stage` setting names: every one for `pipeline`, a list's, or the one."""
    return list(STAGES) if stage == "pipeline" else stage if isinstance(stage, list) else [stage]


def stages_to_run(reused: dict[str, Path]) -> list[str]:
    """The pipeline's stages, less those whose every output is reused."""
    writes = {stage: [n for n, (_, s) in REUSABLE.items() if s == stage] for stage in STAGES}
    return [s for s in STAGES if not writes[s] or not all(n in reused for n in writes[s])]


def reused_outputs(run_dir: str) -> dict[str, Path]:
    """The outputs an earlier run left in run_dir, by name (see REUSABLE)."""
    return {name: Path(run_dir) / path for name, (path, _) in REUSABLE.items() if (Path(run_dir) / path).exists()}


def share_outputs(outputs: dict[str, Path], main_dir: Path) -> dict[str, Path]:
    """After a stage that rank 0 ran alone: every rank waits for it, then takes its outputs (sent by
    rank 0; or, before the process group exists, which is before any other rank does, found in its
    run dir). In one process: the outputs as they are."""
    if not initialized():
        return outputs if is_main() else reused_outputs(str(main_dir))
    barrier()
    shared = [outputs if is_main() else None]
    torch.distributed.broadcast_object_list(shared, src=0)
    return shared[0]


def this_rank(built: Built) -> Built:
    """The built config as this rank uses it: another rank of a DDP run does the same work with no
    tracking (its files go to a scratch dir, `scratch`)."""
    return built if is_main() else dataclasses.replace(built, logger=NoTracker())


def scratch(where: Path) -> Path:
    """Where this rank writes: `where` for rank 0, a scratch dir under it for the others."""
    out = where if is_main() else where / f".rank{rank()}"
    out.mkdir(parents=True, exist_ok=True)
    return out


def begin_record(main_dir: Path, resume: str | None, stage: str = "pipeline") -> RunRecord:
    """run.json of this invocation: a new one, or (resume=DIR) the interrupted run's, refused if it
    (or the one stage it ran) finished."""
    if not resume:
        return RunRecord(main_dir, write=is_main())
    record = RunRecord.load(main_dir, write=is_main())
    if "pipeline" in record.done or stage in record.done:
        raise UserError(f"resume = {resume}: that run finished ({', '.join(record.done)}); nothing to resume")
    return record


def run_stage(name: str, ctx: StageContext, tracking: Tracking, record: RunRecord, parent=None,
              resumed: bool = False):
    """Stage `name` in its own tracked run under `parent` (continued when this invocation resumes it),
    begun and finished in `record`; a stage that rank 0 runs alone hands its outputs to every rank."""
    if name in RANK0_STAGES and not is_main():  # rank 0 samples and writes; this rank takes its files
        ctx.outputs.update(share_outputs(ctx.outputs, ctx.main_dir))
        return None
    with tracking.run(name, parent, continue_id=record.runs.get(name) if resumed else None) as run:
        record.began(name, run.id)
        ctx.run = run
        t0 = time.perf_counter()
        STAGES[name](ctx)
        seconds = time.perf_counter() - t0
        run.log_metrics({f"{name}/perf/seconds": seconds})
        if is_main():
            print(f"[{ctx.run_dir.name}/{name}] done in {seconds:.1f} s" if ctx.run_dir.name.startswith("round_")
                  else f"[{name}] done in {seconds:.1f} s; outputs in {ctx.run_dir}")
    if name in RANK0_STAGES:
        share_outputs(ctx.outputs, ctx.main_dir)
    record.finished(name, ctx.outputs)
    return run


@contextlib.contextmanager
def parent_run(tracking: Tracking, record: RunRecord, resumed: bool):
    """The run that holds an invocation's stage runs (continued when it resumes), begun in `record`."""
    with tracking.run("pipeline", continue_id=record.runs.get("pipeline") if resumed else None) as parent:
        record.began("pipeline", parent.id)
        yield parent


def eval_summary(outputs: dict[str, Path]) -> dict | None:
    """What the last eval wrote (eval_summary.json), if an eval ran."""
    return json.loads(Path(outputs["eval_summary"]).read_text(encoding="utf-8")) if "eval_summary" in outputs else None


def print_ui_links(run) -> None:
    """Where to look at a tracked run in the MLflow UI (its model-training view)."""
    if (urls := run.ui_urls()) is None:
        return
    serve = "" if run.tracking_uri.startswith(("http://", "https://")) else \
        f" (serve the store first: mlflow ui --backend-store-uri {run.tracking_uri} --host 127.0.0.1)"
    print(f"MLflow: {urls[0]}\n        runs table: {urls[1]}{serve}")
