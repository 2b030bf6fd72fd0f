"""Held-out evaluation during align (`algorithm.eval_every`, modules/heldout.py): curves at the set
interval with step 0 as the starting policy (KL 0, win rate ½ by hand), training untouched by it, and
`stop_on` keeping the best evaluation's policy."""
import pytest
import torch
from mlflow.tracking import MlflowClient

from rlhf_exp.config import ConfigError
from rlhf_exp.modules.heldout import HeldoutEval
from tests.conftest import settings


def test_stop_on_needs_evaluations():
    with pytest.raises(ConfigError, match="eval_every > 0"):
        settings("algorithm", "ppo", stop_on="gold")
    assert settings("algorithm", "dpo", stop_on="reward", eval_every=5).patience == 3


class _Trainer:
    should_stop = False
    global_step = 0


def test_stop_on_keeps_the_best_evaluations_weights_and_stops_after_patience(tiny):
    """Scripted scores 0.1, 0.5, 0.3, 0.2 at steps 0..3 with patience 2: stops at step 3, and the
    weights of step 1 (the best) are what the policy holds when training ends."""
    spec, tok = tiny
    lm = spec.causal_lm(tok)
    s = settings("algorithm", "dpo", eval_every=1, stop_on="reward", patience=2)
    logged = []
    cb = HeldoutEval("dpo", s, lm, None, tok, ["p"], None, None, (4, 4, 1.0), 0, lambda m, step: logged.append((step, m)))
    scores = iter([0.1, 0.5, 0.3, 0.2])
    weights = {}

    def scripted(step):
        metrics = {"dpo/heldout/reward": next(scores)}
        cb.history.append((step, metrics))
        return metrics
    cb.evaluate = scripted
    trainer = _Trainer()
    for step in range(4):
        with torch.no_grad():
            next(lm.parameters()).fill_(float(step))  # the weights of each step, told apart
        weights[step] = next(lm.parameters()).clone()
        trainer.global_step = step
        cb._maybe(trainer, object(), step)
        assert trainer.should_stop == (step == 3)
    cb.on_train_end(trainer, None)
    assert torch.equal(next(lm.parameters()), weights[1])
    assert logged[-1] == (3, {"dpo/heldout/best_step": 1.0, "dpo/heldout/best": 0.5})


@pytest.mark.e2e
def test_ppo_logs_heldout_curves_from_step_zero_and_trains_as_without_them(cli, tmp_path, base):
    align = ["stage=align", "experiment=smoke", "algorithm.policy=outputs/base/sft", "reward.path=outputs/base/reward_model",
             "algorithm.max_steps=3"]
    cli(*align, "algorithm.eval_every=2", "algorithm.eval_prompts=6", "hydra.run.dir=outputs/with")
    cli(*align, "hydra.run.dir=outputs/without")
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    exp = client.get_experiment_by_name("rlhf")
    with_, without = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])

    def history(run, key):
        return [(m.step, m.value) for m in sorted(client.get_metric_history(run.info.run_id, key), key=lambda m: m.step)]
    gold = history(with_, "ppo/heldout/gold")
    assert [step for step, _ in gold] == [0, 2]  # the starting policy, then every 2 iterations
    for key in ("reward", "kl", "win_rate", "toxicity", "gold_se", "reward_se"):
        assert [step for step, _ in history(with_, f"ppo/heldout/{key}")] == [0, 2], key
    # at step 0 the policy is the reference: its answers are the reference's (same seed), so KL 0 and every pair ties
    assert history(with_, "ppo/heldout/kl")[0][1] == 0.0
    assert history(with_, "ppo/heldout/win_rate")[0][1] == 0.5
    assert history(with_, "ppo/heldout/kl")[1][1] != 0.0
    # sampling for it draws on a forked random state: training is bit for bit the same without it
    for key in ("ppo/reward/score_mean", "ppo/kl/ref", "ppo/loss/total"):
        assert history(with_, key) == history(without, key), key
    assert not history(without, "ppo/heldout/gold")
