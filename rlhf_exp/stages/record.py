"""run.json: what a run has done so far, so that `rlhf-exp resume=DIR` can go on from there."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rlhf_exp.errors import UserError
from rlhf_exp.files import write_json

if TYPE_CHECKING:  # a type only: checks.py, which builds it, imports this module
    from rlhf_exp.stages.checks import Built

RECORD = "run.json"
CHECKPOINTED = {"sft": "sft", "reward_model": "reward_model", "align": "algorithm"}  # stage -> its settings


class RunRecord:
    """run.json in a run's directory, rewritten atomically as the run goes: the MLflow run of the
    pipeline and of each stage begun, the stages finished, and the outputs they left."""

    def __init__(self, run_dir: Path, write: bool = True, data: dict | None = None):
        self.path, self.write = Path(run_dir) / RECORD, write
        data = data or {}
        self.runs: dict[str, str | None] = data.get("runs", {})
        self.done: list[str] = data.get("done", [])
        self.outputs: dict[str, str] = data.get("outputs", {})

    @classmethod
    def load(cls, run_dir: Path, write: bool) -> RunRecord:
        path = Path(run_dir) / RECORD
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise UserError(f"resume = {run_dir}: cannot read {path} ({type(err).__name__}: {err}); expected the "
                            "directory of a run begun by rlhf-exp") from None
        return cls(run_dir, write, data)

    def began(self, name: str, run_id: str | None) -> None:
        self.runs[name] = run_id
        self._save()

    def finished(self, name: str, outputs: dict[str, Path]) -> None:
        self.done.append(name)
        self.outputs = {k: str(v) for k, v in outputs.items()}
        self._save()

    def output_paths(self) -> dict[str, Path]:
        return {k: Path(v) for k, v in self.outputs.items()}

    def _save(self) -> None:
        if self.write:
            write_json(self.path, {"runs": self.runs, "done": self.done, "outputs": self.outputs})


def resume_checkpoints(built: Built, record: RunRecord, run_dir: Path) -> Built:
    """The settings with `ckpt_path` set to the last checkpoint of the stage that was interrupted
    (begun, not finished), so that it goes on from there. A checkpoint of a stage whose training had
    ended (the crash came while saving its model) leaves nothing to resume: that stage runs again."""
    from rlhf_exp.modules.checkpoints import check_resume
    for stage, node in CHECKPOINTED.items():
        ckpt = run_dir / "checkpoints" / stage / "last.ckpt"
        if stage not in record.runs or stage in record.done or not ckpt.is_file() \
                or not hasattr(getattr(built, node), "ckpt_path"):
            continue
        s = dataclasses.replace(getattr(built, node), ckpt_path=str(ckpt))
        try:
            check_resume(s, f"{node}.ckpt_path")
        except UserError as err:
            print(f"resume: {stage} starts again ({err})")
            continue
        print(f"resume: {stage} goes on from {ckpt}")
        built = dataclasses.replace(built, **{node: s})
    return built
