"""Held-out evaluation during align (`algorithm.eval_every`, modules/heldout.py): curves at the set
interval with step 0 as the starting policy (KL 0, win rate ½ by hand), training untouched by it, and
`stop_on` keeping the best evaluation's policy."""
from types import SimpleNamespace
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



def test_the_best_evaluation_is_on_disk_and_a_resumed_run_ends_with_it(tiny, tmp_path, monkeypatch):
    """stop_on writes the best evaluation's trainable weights to best_path when it is made; a crash
    after it (the callback's state from the last checkpoint, a fresh model) resumes with that best, and
    the policy that training ends with is the best's, read back from disk. A write interrupted half-way
    leaves the previous best whole."""
    spec, tok = tiny
    s = settings("algorithm", "dpo", eval_every=1, stop_on="reward", patience=2)
    best_path = tmp_path / "checkpoints" / "align" / "best.pt"

    def callback(lm, scores):
        cb = HeldoutEval("dpo", s, lm, None, tok, ["p"], None, None, (4, 4, 1.0), 0, lambda m, step: None,
                         best_path=best_path)
        def scripted(step):
            metrics = {"dpo/heldout/reward": next(scores)}
            cb.history.append((step, metrics))
            return metrics
        cb.evaluate = scripted
        return cb

    def at_step(lm, step):
        with torch.no_grad():
            next(lm.parameters()).fill_(float(step))
    lm, trainer = spec.causal_lm(tok), _Trainer()
    cb = callback(lm, iter([0.1, 0.5, 0.3]))
    for step in range(3):                                     # best at step 1; the checkpoint at step 2; a crash
        at_step(lm, step)
        cb._maybe(trainer, object(), step)
    saved = torch.load(best_path, weights_only=True)
    assert (saved["step"], saved["score"]) == (1, 0.5) and float(saved["weights"][0].flatten()[0]) == 1.0
    state = cb.state_dict()

    lm2 = spec.causal_lm(tok)                                 # the resumed process: new weights, the state
    cb2 = callback(lm2, iter([0.2]))
    cb2.load_state_dict(state)
    assert (cb2.best[0], cb2.best[1], cb2.since_best, cb2.done) == (0.5, 1, 1, 2)
    at_step(lm2, 3)
    cb2._maybe(trainer, object(), 3)                          # a second evaluation without improvement
    assert trainer.should_stop
    cb2.on_train_end(trainer, None)
    assert float(next(lm2.parameters()).flatten()[0]) == 1.0  # the best's weights, from disk

    def torn(obj, f):                                         # a crash while the next best is written
        open(f, "wb").write(b"half")
        raise OSError("disk full")
    monkeypatch.setattr(torch, "save", torn)
    cb2.best = (0.9, 4, [p.detach().clone() for p in lm2.parameters() if p.requires_grad])
    with pytest.raises(OSError):
        cb2._write_best()
    assert torch.load(best_path, weights_only=True)["step"] == 1 and sorted(best_path.parent.iterdir()) == [best_path]


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


def test_eval_on_validation_leaves_its_prompts_out_of_training_and_is_drawn_by_seed():
    """`eval_on=validation`: the in-loop evaluation answers `eval_prompts` training prompts that the
    algorithm does not train on (prompts for PPO/GRPO/RLOO/online DPO, pairs and thumbs for DPO/KTO);
    eval's own held-out prompts are never among them; the draw depends on the seed alone."""
    from omegaconf import OmegaConf

    from rlhf_exp.feedback.formats import Pair
    from rlhf_exp.stages.context import StageContext

    data = settings("data", "synthetic")
    def ctx(seed):
        return StageContext(OmegaConf.create({"seed": seed}), SimpleNamespace(data=data), None, None)  # the part of a Built it reads
    train_all, heldout = data.train_prompts(), data.heldout_prompts()
    s = settings("algorithm", "ppo", eval_on="validation", eval_prompts=10)
    train, val = ctx(0).align_prompts(s)
    assert len(val) == 10 and len(train) == len(train_all) - 10
    assert set(train) | set(val) == set(train_all) and not set(train) & set(val) and not set(val) & set(heldout)
    assert ctx(0).align_prompts(s) == (train, val) and ctx(1).align_prompts(s)[1] != val
    # the default: train on every training prompt, evaluate on the first eval_prompts held-out ones
    assert ctx(0).align_prompts(settings("algorithm", "ppo", eval_prompts=5)) == (train_all, heldout[:5])
    pairs = [Pair(p, "a", "b", None, None, None, {}) for p in train_all]
    kept = ctx(0).align_rows(settings("algorithm", "dpo", eval_on="validation", eval_prompts=10), pairs, lambda r: r.prompt)
    assert [r.prompt for r in kept] == train
    with pytest.raises(ConfigError, match="eval_prompts = 58 with eval_on=validation"):
        ctx(0).align_prompts(settings("algorithm", "ppo", eval_on="validation", eval_prompts=len(train_all)))


def test_reusing_a_run_of_another_world_seed_is_refused(tmp_path):
    """`reuse=` with another `data.seed` splits the world differently: eval would score prompts the reused
    SFT policy and reward model trained on. Refused, naming the setting; the same seed passes."""
    from rlhf_exp.files import write_jsonl
    from rlhf_exp.stages.checks import check_reused_split
    seed0 = settings("data", "synthetic", seed=0)
    write_jsonl(tmp_path / "heldout.jsonl", [{"prompt": p, "completions": ["a", "b"]} for p in seed0.heldout_prompts()])
    check_reused_split(str(tmp_path), seed0)
    check_reused_split(str(tmp_path / "elsewhere"), settings("data", "synthetic", seed=1))  # no heldout.jsonl: nothing to check
    with pytest.raises(ConfigError, match="expected data.seed = that run's seed"):
        check_reused_split(str(tmp_path), settings("data", "synthetic", seed=1))
