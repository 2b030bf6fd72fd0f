"""Exact resume of the on-policy algorithms: a run stopped after its checkpoint (a crash) and resumed
from it logs the very metrics of the uninterrupted run from the checkpoint on, and ends with the
same weights. Iterations cross epochs (12 prompts, 4 a batch), so the data's order and position,
every random generator, the optimizer and the KL controller must all come back."""
import pytest
import pytorch_lightning as pl
import torch

from rlhf_exp.modules.checkpoints import PeriodicCheckpoint
from tests.test_grpo import group
from tests.test_ppo import ppo, trainer


class Crash(RuntimeError):
    pass


class Record(pl.Callback):
    """Each iteration's logged statistics; `crash_after` stops the run there, as a crash would."""

    def __init__(self, crash_after=None):
        self.rows, self.crash_after = [], crash_after

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.rows.append({k: float(v) for k, v in outputs.items() if "perf/" not in k})  # timings differ
        if module.iteration == self.crash_after:
            raise Crash(f"crashed after iteration {module.iteration}")


def build(spec, tok, algorithm, steps):
    kw = dict(max_steps=steps, sample_every=2, kl_controller="adaptive", kl_target=0.01, kl_horizon=10) \
        if algorithm == "ppo" else dict(max_steps=steps, sample_every=2)
    pl.seed_everything(0, verbose=False)
    return ppo(spec, tok, **kw) if algorithm == "ppo" else group(spec, tok, algorithm, **kw)


def weights(module):
    return torch.cat([p.detach().flatten() for p in module.policy.parameters()])


@pytest.mark.parametrize("algorithm", ["ppo", "grpo"])
def test_a_run_resumed_from_its_checkpoint_goes_on_exactly_as_the_uninterrupted_run(tiny, tmp_path, algorithm):
    spec, tok = tiny
    steps, every = 8, 3  # checkpoints after iterations 3 and 6; the crash comes at iteration 5
    module, dm = build(spec, tok, algorithm, steps)
    whole = Record()
    trainer(callbacks=[whole]).fit(module, datamodule=dm)
    assert module.iteration == steps and len(whole.rows) == steps

    crashed, dm = build(spec, tok, algorithm, steps)
    record = Record(crash_after=5)
    with pytest.raises(Crash):
        trainer(callbacks=[PeriodicCheckpoint(tmp_path, every), record]).fit(crashed, datamodule=dm)
    assert crashed.iteration == 5 and record.rows == whole.rows[:5]  # the same run, up to the crash

    resumed, dm = build(spec, tok, algorithm, steps)
    again = Record()
    trainer(callbacks=[again]).fit(resumed, datamodule=dm, ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert resumed.iteration == steps and len(again.rows) == steps - every  # from iteration 4 on, once each
    assert again.rows == whole.rows[every:]  # every statistic, iteration for iteration
    assert torch.equal(weights(resumed), weights(module))
    assert resumed.score_means == module.score_means and resumed.samples == module.samples
