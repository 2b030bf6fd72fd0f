"""GRPO and RLOO on tiny sizes: one iteration with the invariant check on, the group baseline (a group
of equal scores teaches nothing), metrics under each algorithm's prefix, stopping, resuming, settings."""
import copy

import pytest
import torch

from rlhf_exp.config import ConfigError
from rlhf_exp.worlds.synthetic import World
from rlhf_exp.models.reward import GoldReward
from rlhf_exp.modules.data import PromptDataModule
from rlhf_exp.modules.grpo import GroupModule
from rlhf_exp.modules.pg import InvariantError
from tests.conftest import settings
from tests.test_ppo import ConstantReward, policy, trainer  # a tiny policy that often ends with EOS

PROMPTS = World(0, 0.2).train_prompts[:12]


def group(spec, tok, algorithm, reward=None, **overrides):
    s = settings("algorithm", algorithm, **{"batch_size": 8, "group_size": 4, "minibatches": 2, "ppo_epochs": 2,
                                            "max_new_tokens": 12, "max_steps": 1, "sample_every": 1, "n_samples": 3,
                                            **overrides})
    lm = policy(spec, tok)
    module = GroupModule(lm, copy.deepcopy(lm), tok, reward or GoldReward(component="overall"), s)
    return module, PromptDataModule(PROMPTS, tok, s.batch_size // s.group_size, seed=0)


@pytest.mark.parametrize("algorithm,overrides", [("grpo", {}), ("grpo", {"kl_penalty": "reward"}),
                                                  ("rloo", {}), ("rloo", {"loss": "clipped"})])
def test_one_iteration_moves_the_policy_and_logs_under_its_prefix(tiny, algorithm, overrides):
    spec, tok = tiny
    module, dm = group(spec, tok, algorithm, **overrides)
    before, ref_before = copy.deepcopy(module.policy.state_dict()), copy.deepcopy(module.ref.state_dict())
    t = trainer()
    t.fit(module, datamodule=dm)  # check_invariants is on: ratio 1 and KL 0 on the first minibatch

    assert module.iteration == 1 and module.stop_reason == "max_steps (1) reached"
    m = {k: float(v) for k, v in t.callback_metrics.items()}
    p = algorithm
    design = [f"{p}/reward/score_mean", f"{p}/reward/score_std", f"{p}/reward/group_std", f"{p}/reward/equal_groups",
              f"{p}/kl/ref", f"{p}/kl/coef", f"{p}/advantages/abs_mean", f"{p}/policy/loss", f"{p}/policy/clipfrac",
              f"{p}/policy/approx_kl", f"{p}/policy/ratio", f"{p}/policy/entropy", f"{p}/policy/grad_norm",
              f"{p}/loss/total", f"{p}/response/len_mean", f"{p}/response/eos_rate", f"{p}/perf/rollout_s",
              f"{p}/update/epochs"]
    assert set(design) <= set(m) and all(torch.isfinite(torch.tensor(m[k])) for k in design)
    assert not any(k.startswith("ppo/") for k in m)
    assert m[f"{p}/kl/ref"] == pytest.approx(0, abs=1e-5)  # the policy is the reference at the first rollout
    assert m[f"{p}/advantages/abs_mean"] > 0 and m[f"{p}/policy/approx_kl"] > 0
    assert (f"{p}/loss/kl" in m) == (p == "grpo" and overrides.get("kl_penalty", "loss") == "loss")
    after = module.policy.state_dict()
    assert any(not torch.equal(after[k], before[k]) for k in before)
    assert all(torch.equal(module.ref.state_dict()[k], v) for k, v in ref_before.items())
    assert len(module.samples) == 3 and set(module.samples[0]) == {"iteration", "prompt", "response", "score"}


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_groups_of_equal_scores_get_advantage_zero_and_leave_the_policy_alone(tiny, algorithm):
    spec, tok = tiny
    kl = {"beta": 0.0} if algorithm == "grpo" else {"kl_coef": 0.0}
    module, dm = group(spec, tok, algorithm, ConstantReward(1.5), missing_eos_penalty=None, **kl)
    batch = next(iter(dm.train_dataloader()))
    exp, stats = module.experience(batch)
    assert exp.advantages.abs().max().item() == 0.0 and stats[f"{algorithm}/reward/equal_groups"].item() == 1.0
    before = copy.deepcopy(module.policy.state_dict())
    trainer().fit(module, datamodule=dm)
    assert all(torch.equal(module.policy.state_dict()[k], v) for k, v in before.items())


def test_each_prompt_is_answered_group_size_times_in_consecutive_rows(tiny):
    spec, tok = tiny
    seen = []

    class Recording:
        def score(self, prompts, completions):
            seen.append(list(prompts))
            return torch.arange(len(prompts), dtype=torch.float32)

    module, dm = group(spec, tok, "grpo", Recording(), missing_eos_penalty=None, scale_by_std=False)
    exp, _ = module.experience(next(iter(dm.train_dataloader())))
    assert len(seen[0]) == 8 and seen[0][0:4] == [seen[0][0]] * 4 and seen[0][4:8] == [seen[0][4]] * 4
    # scores 0..7 in groups of 4: r − mean_group = (−1.5, −0.5, 0.5, 1.5) in each group, on every token
    rows = (exp.advantages * exp.mask).sum(1) / exp.mask.sum(1)
    assert rows.tolist() == pytest.approx([-1.5, -0.5, 0.5, 1.5] * 2)


def test_the_invariant_check_catches_dropout_left_on(tiny):
    spec, tok = tiny
    module, dm = group(spec, tok, "grpo")
    module.on_train_batch_start = lambda batch, idx: module.train()  # dropout stays on: rollout ≠ update
    with pytest.raises(InvariantError, match="GRPO invariant broken at iteration 0"):
        trainer().fit(module, datamodule=dm)


def test_stops_at_the_reward_threshold_and_resumes_from_a_checkpoint(tiny, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint
    spec, tok = tiny
    module, dm = group(spec, tok, "rloo", ConstantReward(2.0), max_steps=10, reward_threshold=1.5,
                       threshold_window=3, missing_eos_penalty=None)
    trainer().fit(module, datamodule=dm)
    assert module.iteration == 3 and "reward_threshold" in module.stop_reason

    kw = dict(kl_controller="adaptive", kl_target=0.01, kl_horizon=10)
    module, dm = group(spec, tok, "rloo", max_steps=2, **kw)
    trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], enable_checkpointing=True).fit(module, datamodule=dm)
    assert module.kl_ctl.value != pytest.approx(0.05)  # the adaptive controller moved
    resumed, dm = group(spec, tok, "rloo", max_steps=3, **kw)
    trainer().fit(resumed, datamodule=dm, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.iteration == 3 and len(resumed.timings) == 1 and resumed.score_means[:2] == module.score_means
    assert resumed.kl_ctl.value != pytest.approx(0.05)


def test_group_settings_are_checked():
    with pytest.raises(ConfigError, match="algorithm.batch_size = 10: expected a multiple of group_size \\(4\\)"):
        settings("algorithm", "grpo", batch_size=10)
    with pytest.raises(ConfigError, match="algorithm.group_size = 1: expected a value >= 2"):
        settings("algorithm", "rloo", group_size=1)
    with pytest.raises(ConfigError, match="algorithm.loss_agg = 'sum'"):
        settings("algorithm", "grpo", loss_agg="sum")
    with pytest.raises(ConfigError, match="algorithm.loss = 'ppo'"):
        settings("algorithm", "rloo", loss="ppo")
