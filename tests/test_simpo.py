"""SimPO (`algorithm=simpo`): its loss by hand, every knob reaching the math, and its record."""
from __future__ import annotations

import math

import pytest
import torch

import rlhf_exp.modules.simpo as simpo_module
from rlhf_exp.core.dpo import simpo_loss
from rlhf_exp.modules.algorithms import record_of
from rlhf_exp.modules.data import RowsDataModule, encode_pairs, pair_rows_collate
from rlhf_exp.modules.dpo import completion_logps
from tests.conftest import settings
from tests.test_knobs import PAIRS, spy, trainer


def test_simpo_loss_by_hand():
    """β = 2, γ = 1: chosen mean log-prob −1, rejected −2: β·(c − r) − γ = 1, loss log(1 + e^−1) = 0.313262;
    β = 2.5, γ = 0.5: c = −1.5, r = −1.0: 2.5·(−0.5) − 0.5 = −1.75, loss log(1 + e^1.75) = 1.910224."""
    losses, chosen, rejected = simpo_loss(torch.tensor([-1.0]), torch.tensor([-2.0]), beta=2.0, gamma=1.0)
    assert losses.item() == pytest.approx(0.313262, abs=1e-6)
    assert (chosen.item(), rejected.item()) == (-2.0, -4.0)     # rewards β·c and β·r
    losses, _, _ = simpo_loss(torch.tensor([-1.5]), torch.tensor([-1.0]), beta=2.5, gamma=0.5)
    assert losses.item() == pytest.approx(1.910224, abs=1e-6)
    c = torch.tensor([-1.0, -3.0], requires_grad=True)          # a gradient reaches the policy's log-probs,
    losses, chosen, _ = simpo_loss(c, torch.tensor([-2.0, -2.0]), beta=2.0, gamma=0.0)
    losses.sum().backward()
    assert c.grad is not None and not chosen.requires_grad      # not the logged rewards
    assert c.grad[0].item() == pytest.approx(-2.0 * (1 - 1 / (1 + math.exp(-2.0))), abs=1e-6)  # −β·σ(−z)


def test_every_simpo_knob_reaches_the_math(tiny, monkeypatch):
    """β and γ reach the loss; the loss sees each completion's mean log-prob (its sum over its own
    tokens, not the padding's); batch_size pairs per step; the learning rate and its warm-up."""
    spec, tok = tiny
    s = settings("algorithm", "simpo", beta=2.7, gamma=0.31, lr=2.3e-4, warmup_steps=7, batch_size=3, val_fraction=0.0)
    loss = spy(monkeypatch, simpo_module, "simpo_loss")
    lm = spec.causal_lm(tok)
    rows, collate = encode_pairs(tok, PAIRS[:3], s.max_len), pair_rows_collate(tok.pad_token_id)  # one batch
    expected_batch = collate(rows)
    lm.eval()
    with torch.no_grad():                                      # the first batch's means, computed here by hand
        sums = completion_logps(lm, expected_batch)
    tokens = torch.tensor([sum(1 for t in r[1] if t != -100) for r in
                           [row["chosen"] for row in rows] + [row["rejected"] for row in rows]])
    module = simpo_module.SimPOModule(lm, s)
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=RowsDataModule(rows, collate, s.batch_size, 0.0, 0))
    call = loss.calls[0]
    assert (call["beta"], call["gamma"]) == (2.7, 0.31)
    assert len(call["chosen_avg_logps"]) == 3                  # batch_size pairs
    seen = torch.cat([call["chosen_avg_logps"], call["rejected_avg_logps"]]).detach()
    assert torch.allclose(seen.sort().values, (sums / tokens).sort().values, atol=1e-5)  # in the loader's order
    opt = module.optimizers().optimizer
    assert opt.param_groups[0]["initial_lr"] == 2.3e-4
    assert opt.param_groups[0]["lr"] == pytest.approx(2.3e-4 * 2 / 7)  # warm-up: step 2 of 7 after one step


def test_simpo_has_no_reference_and_its_record_says_how_it_runs():
    s = settings("algorithm", "simpo")
    r = record_of(s)
    assert (r.name, r.on_policy, r.shardable, r.resumes_by, r.curve) == ("simpo", False, False, "epochs",
                                                                          "simpo/rewards/margin")
    assert r.run().__module__ == "rlhf_exp.stages.simpo"
    with pytest.raises(Exception, match="gamma"):
        settings("algorithm", "simpo", gamma=-0.1)             # γ ≥ 0: a margin the chosen must beat the rejected by
