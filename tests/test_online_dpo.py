"""Online DPO: the pairs it builds from two scored answers per prompt (by hand), every knob reaching
the math, and `algorithm=online_dpo` end to end at smoke size."""
import pytest
import torch

import rlhf_exp.modules.online_dpo as od
from rlhf_exp.models.training import reference
from rlhf_exp.modules.data import PromptDataModule
from rlhf_exp.worlds.synthetic import World
from tests.conftest import settings
from tests.test_cli_e2e import mlflow_runs, read_jsonl
from tests.test_knobs import spy, trainer


def test_pairs_by_hand():
    scores = torch.tensor([0.3, 0.9, 2.0, -1.0, 0.5, 0.5])  # prompt 0: second wins; 1: first wins; 2: a tie
    chosen, rejected, paired = od.pair_by_score(scores)
    assert chosen.tolist()[:2] == [1, 2] and rejected.tolist()[:2] == [0, 3] and paired.tolist() == [True, True, False]


class Lengthy:
    """A reward that prefers longer answers (never a tie between different lengths)."""

    def score(self, prompts, completions):
        return torch.tensor([float(len(c)) for c in completions])


def test_every_online_dpo_knob_reaches_the_math(tiny, monkeypatch):
    spec, tok = tiny
    s = settings("algorithm", "online_dpo", beta=0.37, loss_type="ipo", lr=2.3e-4, warmup_steps=7, batch_size=3,
                 max_new_tokens=5, temperature=0.8, max_steps=1, rollout="policy", missing_eos_penalty=None)
    loss, sample = spy(monkeypatch, od, "dpo_loss"), spy(monkeypatch, od, "sample_scored")
    lm = spec.causal_lm(tok)
    module = od.OnlineDPOModule(lm, reference(lm), tok, Lengthy(), s)
    trainer(max_steps=1).fit(module, datamodule=PromptDataModule(World(0, 0.2).train_prompts[:6], tok, s.batch_size, 0))
    call = loss.calls[0]
    assert (call["beta"], call["loss_type"]) == (0.37, "ipo")
    assert sample.calls[0]["n"] == 2 and sample.calls[0]["s"].max_new_tokens == 5 and sample.calls[0]["s"].temperature == 0.8
    assert len(sample.calls[0]["batch"]["prompts"]) == 3
    # at the first step the policy is the reference: the implicit rewards are 0, the pair's log-ratios equal
    assert torch.allclose(call["policy_chosen_logps"], call["ref_chosen_logps"], atol=1e-5)
    opt = module.optimizers().optimizer
    assert opt.param_groups[0]["initial_lr"] == 2.3e-4 and opt.param_groups[0]["lr"] == pytest.approx(2.3e-4 * 2 / 7)
    assert module.iteration == 1 and module.stop_reason == "max_steps (1) reached"


@pytest.mark.e2e
def test_online_dpo_is_one_override_away(cli, tmp_path, base):
    proc = cli("experiment=smoke", "algorithm=online_dpo", "reuse=outputs/base")
    client, runs = mlflow_runs(tmp_path)
    align = [r for r in runs if r.data.tags["stage"] == "align"][0]
    assert align.data.tags["algorithm"] == "online_dpo" and all(r.info.status == "FINISHED" for r in runs)
    history = client.get_metric_history(align.info.run_id, "online_dpo/reward/score_mean")
    assert [m.step for m in sorted(history, key=lambda m: m.step)] == [0, 1, 2]  # smoke: 3 steps
    assert {"online_dpo/train/loss", "online_dpo/pairs/kept", "online_dpo/rewards/margin", "online_dpo/kl/ref",
            "online_dpo/gold/score_mean"} <= set(align.data.metrics)
    assert 0 < align.data.metrics["online_dpo/pairs/kept"] <= 1
    assert len(read_jsonl(tmp_path / "outputs/run/online_dpo_samples.jsonl")) == 12  # 4 a step
    assert "align (online_dpo, beta 0.1): 3 steps" in proc.stdout
