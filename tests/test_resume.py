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
    # the crash comes after iteration 5; the last checkpoint before it is mid-epoch (PPO: 3 batches
    # an epoch, checkpoints after 2 and 4; GRPO: 6 an epoch, a checkpoint after 3)
    steps, every = 8, {"ppo": 2, "grpo": 3}[algorithm]
    last = 5 // every * every
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
    assert resumed.iteration == steps and len(again.rows) == steps - last  # from the checkpoint on, once each
    assert again.rows == whole.rows[last:]  # every statistic, iteration for iteration
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
    from rlhf_exp.feedback.sets import comparison_groups
    from rlhf_exp.modules.data import (RowsDataModule, encode_pairs, pair_collate, pair_rows_collate,
                                       sft_collate)
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


# -- faults around checkpoints -------------------------------------------------------------------

class NaNAtFive:
    """A reward that is 1 for every response, and NaN at its fifth call (the fifth iteration)."""
    calls = 0

    def score(self, prompts, completions):
        self.calls += 1
        return torch.full((len(completions),), float("nan") if self.calls == 5 else 1.0)


def test_a_checkpoint_write_interrupted_half_way_leaves_the_previous_one_whole(tiny, tmp_path, monkeypatch):
    """The third checkpoint's write fails after half its bytes (a full disk, a crash): last.ckpt is
    still the second one, whole, and a run resumes from it."""
    import fsspec.implementations.local as local
    module, dm = build(*tiny, "ppo", 8)
    writes = []
    real_write = local.LocalFileOpener.write

    def write(self, data):
        writes.append(len(data))
        if len(writes) == 3:
            real_write(self, data[: len(data) // 2])
            raise OSError("No space left on device")
        return real_write(self, data)
    monkeypatch.setattr(local.LocalFileOpener, "write", write)
    with pytest.raises(OSError, match="No space left"):
        trainer(callbacks=[PeriodicCheckpoint(tmp_path, 2), RandomStates()]).fit(module, datamodule=dm)
    monkeypatch.undo()
    assert len(writes) == 3 and sorted(p.name for p in tmp_path.iterdir()) == ["last.ckpt"]  # no half file left
    state = torch.load(tmp_path / "last.ckpt", weights_only=True)
    assert state["ppo"]["iteration"] == 4  # the second checkpoint, after iteration 4
    resumed, dm = build(*tiny, "ppo", 8)
    trainer(callbacks=[RandomStates()]).fit(resumed, datamodule=dm, ckpt_path=tmp_path / "last.ckpt", weights_only=True)
    assert resumed.iteration == 8


def test_a_nan_reward_stops_the_run_at_that_iteration_and_keeps_the_last_good_checkpoint(tiny, tmp_path):
    from rlhf_exp.errors import DivergenceError
    from rlhf_exp.modules.guard import StopOnNonFinite

    pl.seed_everything(0, verbose=False)
    module, dm = ppo(*tiny, reward=NaNAtFive(), max_steps=8, missing_eos_penalty=None)
    with pytest.raises(DivergenceError, match=r"align diverged at iteration 5: ppo/reward/score_mean = nan"):
        trainer(callbacks=[StopOnNonFinite("align"), PeriodicCheckpoint(tmp_path, 2)]).fit(module, datamodule=dm)
    assert torch.load(tmp_path / "last.ckpt", weights_only=True)["ppo"]["iteration"] == 4  # the last good one


def test_a_stage_that_changes_no_weight_is_an_error(tiny):
    """Steps that move nothing (here an optimizer with a learning rate of 0, as a broken schedule
    would give), and a model with every parameter frozen, are errors, not silent successes."""
    from rlhf_exp.errors import StalledError
    from rlhf_exp.modules.guard import WeightsMustMove
    module, dm = rows_stage(tiny, "dpo")
    module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.0)
    with pytest.raises(StalledError, match=r"align: 3 optimizer step\(s\) changed no weight although gradients"):
        trainer(callbacks=[WeightsMustMove("align")], max_epochs=1).fit(module, datamodule=dm)
    module, dm = rows_stage(tiny, "dpo")
    for p in module.parameters():
        p.requires_grad_(False)
    with pytest.raises(StalledError, match="no trainable parameter"):
        trainer(callbacks=[WeightsMustMove("align")], max_epochs=1).fit(module, datamodule=dm)
    module, dm = rows_stage(tiny, "dpo")  # and a stage that trains passes
    trainer(callbacks=[WeightsMustMove("align")], max_epochs=1).fit(module, datamodule=dm)


def test_steps_with_nothing_to_learn_only_warn(tiny, capsys):
    """Every gradient zero (as for GRPO when every group's scores are equal): a warning, no error."""
    from rlhf_exp.modules.guard import WeightsMustMove
    module, dm = rows_stage(tiny, "dpo")
    step = module.training_step
    module.training_step = lambda batch, batch_idx: step(batch, batch_idx) * 0.0
    module.configure_optimizers = lambda: torch.optim.SGD(module.parameters(), lr=0.1)
    trainer(callbacks=[WeightsMustMove("align")], max_epochs=1).fit(module, datamodule=dm)
    assert "warning: align: 3 optimizer step(s) changed no weight: every gradient was zero" in capsys.readouterr().err


def test_nonfinite_skip_drops_the_bad_update_and_goes_on(tiny):
    """nonfinite=skip: PPO with a reward that turns NaN at the fifth iteration, and DPO whose loss is
    NaN at its second step, both run to the end with finite weights; the skipped steps are counted."""
    from rlhf_exp.modules.guard import StopOnNonFinite

    pl.seed_everything(0, verbose=False)
    module, dm = ppo(*tiny, reward=NaNAtFive(), max_steps=8, missing_eos_penalty=None, minibatches=2, ppo_epochs=2)
    guard = StopOnNonFinite("align", skip=True)
    t = trainer(callbacks=[guard])
    t.fit(module, datamodule=dm)
    assert module.iteration == 8 and guard.skipped == 4  # the fifth iteration's 2 × 2 minibatch steps
    assert all(torch.isfinite(p).all() for p in module.parameters()) and module.kl_ctl.value == module.kl_ctl.value
    assert t.callback_metrics["align/nonfinite/skipped_steps"] == 4

    module, dm = rows_stage(tiny, "dpo")
    step = module.training_step
    module.training_step = lambda batch, batch_idx: step(batch, batch_idx) * (float("nan") if batch_idx == 1 else 1.0)
    guard = StopOnNonFinite("align", skip=True)
    trainer(callbacks=[guard], max_epochs=1).fit(module, datamodule=dm)
    assert guard.skipped == 1 and all(torch.isfinite(p).all() for p in module.parameters())


def test_the_nonfinite_setting_reaches_the_guard(tmp_path):
    from rlhf_exp.modules.guard import StopOnNonFinite
    from tests.test_knobs import stage_context
    for value, skip in (("stop", False), ("skip", True)):
        ctx = stage_context(tmp_path, f"nonfinite={value}")
        guard = next(c for c in ctx.trainer("sft").callbacks if isinstance(c, StopOnNonFinite))
        assert guard.skip is skip
