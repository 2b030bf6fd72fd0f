"""Exact resume of the on-policy algorithms: a run stopped after its checkpoint (a crash) and resumed
from it logs the very metrics of the uninterrupted run from the checkpoint on, and ends with the
same weights. Iterations cross epochs (12 prompts, 4 a batch), so the data's order and position,
every random generator, the optimizer and the KL controller must all come back."""
import pytest
import pytorch_lightning as pl
import torch

from rlhf_exp.modules.checkpoints import PeriodicCheckpoint, RandomStates
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
        trainer(callbacks=[PeriodicCheckpoint(tmp_path, every), RandomStates(), record]).fit(crashed, datamodule=dm)
    assert crashed.iteration == 5 and record.rows == whole.rows[:5]  # the same run, up to the crash

    resumed, dm = build(spec, tok, algorithm, steps)
    again = Record()
    trainer(callbacks=[RandomStates(), again]).fit(resumed, datamodule=dm, ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert resumed.iteration == steps and len(again.rows) == steps - every  # from iteration 4 on, once each
    assert again.rows == whole.rows[every:]  # every statistic, iteration for iteration
    assert torch.equal(weights(resumed), weights(module))
    assert resumed.score_means == module.score_means and resumed.samples == module.samples


# -- SFT, the reward model and DPO: automatic optimisation, dropout on, validation each epoch -------

class RecordSteps(pl.Callback):
    """Each step's training loss; `crash_after` stops the run after that many steps."""

    def __init__(self, crash_after=None):
        self.losses, self.crash_after = [], crash_after

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"] if isinstance(outputs, dict) else outputs))
        if len(self.losses) == self.crash_after:
            raise Crash(f"crashed after step {self.crash_after}")


def rows_stage(tiny, stage):
    """(module, data module) of a stage at tiny sizes, built from the same seed each time: 9 training
    rows in batches of 4 (3 steps an epoch, the last one short), 3 for validation, dropout 0.1."""
    from rlhf_exp.feedback.formats import Pair
    from rlhf_exp.modules.data import (RowsDataModule, comparison_groups, encode_pairs, pair_collate,
                                       pair_rows_collate, sft_collate)
    from tests.conftest import settings
    spec, tok = tiny
    pl.seed_everything(0, verbose=False)
    pairs = [Pair(f"How do I {v} a {t}?", f"Carefully {v} the {t}.", f"No {t} for you.")
             for v in ("fix", "clean", "paint") for t in ("bike", "door", "lamp", "car")]
    if stage == "sft":
        from rlhf_exp.modules.sft import SFTModule
        s = settings("sft", batch_size=4, val_fraction=0.25, warmup_steps=2, n_samples=1, sample_max_new_tokens=3)
        rows = [{"prompt": p.prompt, "completion": p.chosen} for p in pairs]
        return SFTModule(spec.causal_lm(tok), tok, s, ["Hello"]), RowsDataModule(rows, sft_collate(tok, 32), 4, 0.25, 0)
    if stage == "reward_model":
        from rlhf_exp.modules.reward import RewardModule
        s = settings("reward_model", batch_size=4, val_fraction=0.25)
        return (RewardModule(spec.sequence_classifier(tok), s),
                RowsDataModule(comparison_groups(pairs), pair_collate(tok, 32), 4, 0.25, 0))
    from rlhf_exp.modules.dpo import DPOModule, cache_reference_logps
    s = settings("algorithm", "dpo", batch_size=4, val_fraction=0.25, warmup_steps=2)
    lm = spec.causal_lm(tok)
    rows, collate = encode_pairs(tok, pairs, s.max_len), pair_rows_collate(tok.pad_token_id)
    cache_reference_logps(lm, rows, collate)
    return DPOModule(lm, s), RowsDataModule(rows, collate, 4, 0.25, 0)


def params(module):
    return torch.cat([p.detach().flatten() for p in module.parameters()])


@pytest.mark.parametrize("stage", ["sft", "reward_model", "dpo"])
def test_a_stage_resumed_mid_epoch_trains_exactly_as_the_uninterrupted_one(tiny, tmp_path, stage):
    fit = dict(max_epochs=3, num_sanity_val_steps=2)
    module, dm = rows_stage(tiny, stage)
    whole = RecordSteps()
    trainer(callbacks=[whole], **fit).fit(module, datamodule=dm)
    assert len(whole.losses) == 9

    crashed, dm = rows_stage(tiny, stage)
    with pytest.raises(Crash):  # checkpoints after steps 4 and 8; the crash after step 6
        trainer(callbacks=[PeriodicCheckpoint(tmp_path, 4), RandomStates(), RecordSteps(crash_after=6)],
                **fit).fit(crashed, datamodule=dm)

    resumed, dm = rows_stage(tiny, stage)
    again = RecordSteps()
    trainer(callbacks=[RandomStates(), again], **fit).fit(resumed, datamodule=dm, ckpt_path=tmp_path / "last.ckpt",
                                                          weights_only=True)
    assert again.losses == whole.losses[4:]  # steps 5 to 9 (mid-epoch 2, then epoch 3), each once
    assert torch.equal(params(resumed), params(module))
