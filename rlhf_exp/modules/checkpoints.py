"""What a checkpoint needs beyond Lightning's own state for a resumed run to go on exactly: every
random generator, and checkpoints every N batches (so that a crash loses at most N)."""
from __future__ import annotations

import zipfile
from pathlib import Path

import pytorch_lightning as pl
import torch

from rlhf_exp.errors import UserError
from rlhf_exp.modules.algorithms import record_of


class PeriodicCheckpoint(pl.Callback):
    """`dirpath/last.ckpt` after every `every`-th training batch (an iteration of PPO, GRPO or RLOO)
    and at the end of fit. Lightning writes it atomically (into a temporary file that replaces the
    old one), so a crash while writing leaves the previous checkpoint whole. Lightning's
    ModelCheckpoint counts optimizer steps under manual optimisation, of which an iteration makes a
    varying number (`target_kl` stops its epochs early), hence this count of batches."""

    def __init__(self, dirpath: str | Path, every: int):
        self.path, self.every = Path(dirpath) / "last.ckpt", every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if (trainer.fit_loop.total_batch_idx + 1) % self.every == 0:
            # Lightning sends a step's metrics to the logger only after this hook; a crash between the
            # checkpoint and that write would lose the step for good (a resumed run starts after it).
            # So they are sent first; the tracker's logger takes each step once, so Lightning's own
            # write of the same step adds nothing.
            trainer._logger_connector.update_train_step_metrics()
            trainer.save_checkpoint(self.path)

    def on_train_end(self, trainer, pl_module):
        trainer.save_checkpoint(self.path)


class RandomStates(pl.Callback):
    """Every rank's random generators (torch, CUDA, Python, NumPy) in the checkpoint, each rank's
    restored on resume: sampling, dropout and shuffles go on as if the run had never stopped."""

    def state_dict(self) -> dict:
        from rlhf_exp.distributed import gather_objects, random_states
        return {"ranks": gather_objects(random_states())}  # every rank calls this as the checkpoint is made

    def load_state_dict(self, state: dict) -> None:
        from rlhf_exp.distributed import rank, set_random_states
        set_random_states(state["ranks"][rank()])


def check_checkpoint(path: str | None, field: str, key: str | None = None, max_steps: int | None = None,
                     max_epochs: int | None = None) -> None:
    """A checkpoint to resume from (`field`, e.g. algorithm.ckpt_path): a file that loads with
    weights_only=True (no code runs), of this stage (the on-policy algorithms: their loop state under
    `key`), that leaves work to do (iterations below `max_steps`, or epochs below `max_epochs`); else
    a UserError naming it. A resume that would train nothing is refused, not run."""
    if path is None:
        return
    where = f"{field} = {path}"
    if not Path(path).is_file():
        raise UserError(f"{where}: no such file (resolved to {Path(path).resolve()})")
    if not zipfile.is_zipfile(path):
        raise UserError(f"{where}: not a checkpoint (torch.save writes a zip archive; this file is not one)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)  # mapped, not read
    except Exception as err:  # torch names the reason: a pickled class, a truncated archive, ...
        raise UserError(f"{where}: not a checkpoint that loads with weights_only=True "
                        f"({type(err).__name__}: {str(err).strip().splitlines()[0][:200]})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt and key is None:
        raise UserError(f"{where}: not a Lightning checkpoint (no state_dict)")
    if key is not None:
        state = ckpt.get(key)
        if not isinstance(state, dict) or "iteration" not in state:
            raise UserError(f"{where}: not a checkpoint of this algorithm (expected its loop state under {key!r})")
        if state["iteration"] >= max_steps:
            raise UserError(f"{where}: it is at iteration {state['iteration']} and algorithm.max_steps = {max_steps}, "
                            f"so resuming would train nothing; expected algorithm.max_steps above {state['iteration']}")
    elif max_epochs is not None:
        done = ckpt.get("loops", {}).get("fit_loop", {}).get("epoch_progress", {}).get("current", {}).get("completed", 0)
        if done >= max_epochs:
            stage = field.rsplit(".", 1)[0]
            raise UserError(f"{where}: it has finished {done} epoch(s) and {stage}.epochs = {max_epochs}, so resuming "
                            f"would train nothing; expected {stage}.epochs above {done}")


def check_resume(s, field: str) -> None:
    """check_checkpoint for a stage's settings `s` (their `ckpt_path`): by the algorithm's record, its
    loop state and iterations (or steps), or the epochs of the others (and of sft and the reward model)."""
    record = record_of(s)
    if record is not None and record.resumes_by != "epochs":
        limits = {"key": record.name, "max_steps": s.max_steps}
    else:
        limits = {"max_epochs": s.epochs}
    check_checkpoint(s.ckpt_path, field, **limits)
