"""Every knob reaches the math: each setting gets a distinct value (none equal to another's or to its
default) and the test asserts that exactly that value arrives at the core function that uses it.
The core functions are wrapped by spies in the namespace of the module that calls them, so a module
that passed `value_clip_eps` as the policy clip, swapped γ and λ, or ignored a coefficient fails."""
import copy
import dataclasses

import pytest
import pytorch_lightning as pl
import torch

import rlhf_exp.modules.dpo as dpo_module
import rlhf_exp.modules.grpo as grpo_module
import rlhf_exp.modules.pg as pg_module
import rlhf_exp.modules.ppo as ppo_module
import rlhf_exp.modules.reward as reward_module
from rlhf_exp.core.kl import kl_k1, kl_k3
from rlhf_exp.feedback.formats import Pair
from rlhf_exp.feedback.sets import comparison_groups
from rlhf_exp.worlds.synthetic import World
from rlhf_exp.models.value import ActorCritic
from rlhf_exp.modules.data import PromptDataModule, RowsDataModule, encode_pairs, pair_collate
from rlhf_exp.modules.data import pair_rows_collate
from tests.conftest import settings

PROMPTS = World(0, 0.2).train_prompts[:8]


class Spy:
    """Wraps a function, records the arguments of every call by parameter name, calls it."""

    def __init__(self, fn):
        import inspect
        self.fn, self.sig, self.calls = fn, inspect.signature(fn), []

    def __call__(self, *args, **kwargs):
        bound = self.sig.bind(*args, **kwargs)
        bound.apply_defaults()
        self.calls.append(dict(bound.arguments))
        return self.fn(*args, **kwargs)

    def values(self, name):
        return [c[name] for c in self.calls]


def spy(monkeypatch, module, name) -> Spy:
    s = Spy(getattr(module, name))
    monkeypatch.setattr(module, name, s)
    return s


def trainer(**kw):
    return pl.Trainer(**{"max_epochs": -1, "logger": False, "enable_checkpointing": False, "enable_progress_bar": False,
                         "enable_model_summary": False, "accelerator": "cpu", **kw})


class ConstantReward:
    def score(self, prompts, completions):
        return torch.full((len(prompts),), 5.0)


# -- PPO -----------------------------------------------------------------------------------------

PPO_KNOBS = dict(clip_eps=0.17, value_clip_eps=0.33, vf_coef=0.29, ent_coef=0.013, kl_coef=0.071, gamma=0.97,
                 lam=0.83, temperature=0.9, max_new_tokens=7, lr=3.1e-4, max_grad_norm=0.77, ppo_epochs=3,
                 minibatches=2, batch_size=6, missing_eos_penalty=-2.5, kl_estimator="k3", kl_controller="fixed",
                 whiten_rewards=True, whiten_advantages=False, max_steps=1, sample_every=1, n_samples=3)


def run_ppo(tiny, monkeypatch, **overrides):
    spec, tok = tiny
    s = settings("algorithm", "ppo", **{**PPO_KNOBS, **overrides})
    spies = {name: spy(monkeypatch, ppo_module, name) for name in
             ("policy_loss", "value_loss", "total_loss", "shape_rewards", "gae", "masked_whiten", "rollout_logprobs")}
    spies.update({name: spy(monkeypatch, pg_module, name) for name in ("clip_grad_norm", "generate")})
    kl = {k: Spy(f) for k, f in (("k1", kl_k1), ("k3", kl_k3))}
    monkeypatch.setattr(ppo_module, "KL_ESTIMATORS", kl)
    torch.manual_seed(0)
    lm = spec.causal_lm(tok)
    module = ppo_module.PPOModule(ActorCritic(lm), copy.deepcopy(lm), tok, ConstantReward(), s)
    trainer().fit(module, datamodule=PromptDataModule(PROMPTS, tok, s.batch_size, seed=0))
    return module, spies, kl


def test_every_ppo_knob_reaches_the_math(tiny, monkeypatch):
    module, spies, kl = run_ppo(tiny, monkeypatch)
    k = PPO_KNOBS
    n_updates = k["ppo_epochs"] * k["minibatches"]
    assert spies["policy_loss"].values("clip_eps") == [k["clip_eps"]] * n_updates
    assert spies["value_loss"].values("clip_eps") == [k["value_clip_eps"]] * n_updates
    assert spies["total_loss"].values("vf_coef") == [k["vf_coef"]] * n_updates
    assert spies["total_loss"].values("ent_coef") == [k["ent_coef"]] * n_updates
    assert spies["clip_grad_norm"].values("max_norm") == [k["max_grad_norm"]] * n_updates
    assert [len(m) for m in spies["policy_loss"].values("logp")] == [3, 3] * k["ppo_epochs"]  # B / minibatches rows
    assert spies["shape_rewards"].values("kl_coef") == [k["kl_coef"]]
    assert (spies["gae"].values("gamma"), spies["gae"].values("lam")) == ([k["gamma"]], [k["lam"]])
    # whiten_rewards on (scale only), whiten_advantages off: one whitening, of the rewards
    assert spies["masked_whiten"].values("shift_mean") == [False]
    assert spies["gae"].calls[0]["rewards"] is not spies["shape_rewards"].calls[0]["kl"]
    # the k3 estimator, on the rollout's own and the reference's log-probs
    assert len(kl["k3"].calls) == 1 and not kl["k1"].calls
    gen = spies["generate"].calls[0]
    assert (gen["temperature"], gen["max_new_tokens"], len(gen["prompt_ids"])) == (0.9, 7, k["batch_size"])
    assert spies["rollout_logprobs"].values("temperature") == [0.9]
    scores = spies["shape_rewards"].calls[0]["scores"]
    assert set(scores.tolist()) <= {5.0, -2.5} and -2.5 in scores.tolist()  # no EOS within 7 tokens: the penalty
    opt = module.optimizers().optimizer
    assert opt.param_groups[0]["lr"] == k["lr"] and opt.param_groups[0]["eps"] == 1e-5
    assert len(module.samples) == k["n_samples"]


def test_ppo_switches_reach_the_math(tiny, monkeypatch):
    module, spies, kl = run_ppo(tiny, monkeypatch, whiten_rewards=False, whiten_advantages=True, kl_estimator="k1",
                                missing_eos_penalty=None, kl_controller="adaptive", kl_target=2.5, kl_horizon=77,
                                target_kl=1e-9)
    assert spies["masked_whiten"].values("shift_mean") == [True]            # the advantages, mean and scale
    assert len(kl["k1"].calls) == 1 and not kl["k3"].calls
    assert spies["shape_rewards"].calls[0]["scores"].tolist() == [5.0] * 6  # no penalty: every score kept
    ctl = module.kl_ctl
    assert isinstance(ctl, pg_module.AdaptiveKLController) and (ctl.target, ctl.horizon) == (2.5, 77)
    # the first minibatch has KL 0 to the rollout policy, the second has moved past 1e-9: stop there
    assert len(spies["policy_loss"].calls) == 2


# -- GRPO and RLOO ------------------------------------------------------------------------------

class IndexReward:
    """Scores 0, 1, 2, … in batch order: every group has distinct scores."""

    def score(self, prompts, completions):
        return torch.arange(len(prompts), dtype=torch.float32)


GROUP_KNOBS = dict(temperature=0.9, max_new_tokens=7, lr=3.1e-4, max_grad_norm=0.77, ppo_epochs=3, minibatches=2,
                   batch_size=6, group_size=3, clip_eps=0.17, norm_len=11, loss_agg="seq_mean_token_sum_norm",
                   missing_eos_penalty=None, max_steps=1, sample_every=1, n_samples=5)


def run_group(tiny, monkeypatch, algorithm, **overrides):
    spec, tok = tiny
    s = settings("algorithm", algorithm, **{**GROUP_KNOBS, **overrides})
    spies = {name: spy(monkeypatch, grpo_module, name) for name in
             ("policy_loss", "reinforce_loss", "aggregate_loss", "group_advantages", "rloo_advantages",
              "sequence_rewards", "rollout_logprobs")}
    spies.update({name: spy(monkeypatch, pg_module, name) for name in ("clip_grad_norm", "generate")})
    kl = {k: Spy(f) for k, f in (("k1", kl_k1), ("k3", kl_k3))}
    monkeypatch.setattr(grpo_module, "KL_ESTIMATORS", kl)
    torch.manual_seed(0)
    lm = spec.causal_lm(tok)
    module = grpo_module.GroupModule(lm, copy.deepcopy(lm), tok, IndexReward(), s)
    trainer().fit(module, datamodule=PromptDataModule(PROMPTS, tok, s.batch_size // s.group_size, seed=0))
    return module, spies, kl


def assert_shared_knobs(module, spies, k):
    n_updates = k["ppo_epochs"] * k["minibatches"]
    gen = spies["generate"].calls[0]
    assert (gen["temperature"], gen["max_new_tokens"], gen["n"], len(gen["prompt_ids"])) == (0.9, 7, 3, 2)
    assert spies["rollout_logprobs"].values("temperature") == [0.9]
    assert spies["clip_grad_norm"].values("max_norm") == [k["max_grad_norm"]] * n_updates
    opt = module.optimizers().optimizer
    assert opt.param_groups[0]["lr"] == k["lr"] and opt.param_groups[0]["eps"] == 1e-5
    assert len(module.samples) == k["n_samples"]


def test_every_grpo_knob_reaches_the_math(tiny, monkeypatch):
    module, spies, kl = run_group(tiny, monkeypatch, "grpo", beta=0.037, scale_by_std=False, std_eps=0.3)
    k, n_updates = GROUP_KNOBS, GROUP_KNOBS["ppo_epochs"] * GROUP_KNOBS["minibatches"]
    assert_shared_knobs(module, spies, k)
    adv = spies["group_advantages"].calls
    assert [(c["group_size"], c["scale_by_std"], c["eps"]) for c in adv] == [(3, False, 0.3)]
    assert adv[0]["scores"].tolist() == [0, 1, 2, 3, 4, 5]  # the KL is in the loss, not in the scores
    assert not spies["sequence_rewards"].calls and not spies["reinforce_loss"].calls
    pl_calls = spies["policy_loss"].calls
    assert [(c["clip_eps"], c["agg"], c["norm_len"]) for c in pl_calls] == [(0.17, "seq_mean_token_sum_norm", 11)] * n_updates
    assert [len(c["logp"]) for c in pl_calls] == [3, 3] * k["ppo_epochs"]  # B / minibatches rows
    # β·KL(k3, the default) in the loss of every minibatch, aggregated the same way
    assert [(c["mode"], c["norm_len"]) for c in spies["aggregate_loss"].calls] == [("seq_mean_token_sum_norm", 11)] * n_updates
    assert len(kl["k3"].calls) == 1 + n_updates and not kl["k1"].calls
    total = module.trainer.callback_metrics
    assert float(total["grpo/loss/total"]) == pytest.approx(
        float(total["grpo/policy/loss"]) + 0.037 * float(total["grpo/loss/kl"]), abs=1e-6)
    assert float(total["grpo/kl/coef"]) == pytest.approx(0.037)


def test_grpo_kl_in_the_reward(tiny, monkeypatch):
    _, spies, kl = run_group(tiny, monkeypatch, "grpo", beta=0.037, kl_penalty="reward", kl_estimator="k1")
    assert spies["sequence_rewards"].values("kl_coef") == [0.037]
    sr = spies["sequence_rewards"].calls[0]  # the group baseline reads the scores with the KL in them
    expected = sr["scores"] - 0.037 * (sr["kl"] * sr["mask"]).sum(1)
    assert torch.equal(spies["group_advantages"].calls[0]["scores"], expected)
    assert not spies["aggregate_loss"].calls            # no KL term in the loss
    assert len(kl["k1"].calls) == 1 and not kl["k3"].calls


@pytest.mark.parametrize("loss", ["reinforce", "clipped"])
def test_every_rloo_knob_reaches_the_math(tiny, monkeypatch, loss):
    module, spies, kl = run_group(tiny, monkeypatch, "rloo", loss=loss, kl_coef=0.061, kl_estimator="k3",
                                  kl_controller="adaptive", kl_target=2.5, kl_horizon=77, missing_eos_penalty=-2.5)
    scores = spies["sequence_rewards"].calls[0]["scores"].tolist()
    assert -2.5 in scores and set(scores) <= {-2.5, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0}  # no EOS within 7 tokens: the penalty
    k, n_updates = GROUP_KNOBS, GROUP_KNOBS["ppo_epochs"] * GROUP_KNOBS["minibatches"]
    assert_shared_knobs(module, spies, k)
    assert spies["sequence_rewards"].values("kl_coef") == [0.061]
    assert spies["rloo_advantages"].values("group_size") == [3] and not spies["group_advantages"].calls
    assert len(kl["k3"].calls) == 1 and not kl["k1"].calls
    used, unused = ("reinforce_loss", "policy_loss") if loss == "reinforce" else ("policy_loss", "reinforce_loss")
    assert [(c["agg"], c["norm_len"]) for c in spies[used].calls] == [("seq_mean_token_sum_norm", 11)] * n_updates
    assert not spies[unused].calls
    if loss == "clipped":
        assert spies["policy_loss"].values("clip_eps") == [0.17] * n_updates
    assert (module.kl_ctl.target, module.kl_ctl.horizon) == (2.5, 77)


# -- DPO -----------------------------------------------------------------------------------------

PAIRS = [Pair(f"How do I {v} a {t}?", f"Carefully {v} the {t}.", f"You are wrong about the {t}.")
         for v in ("fix", "clean") for t in ("bike", "door", "lamp")]


@pytest.mark.parametrize("loss_type,label_smoothing", [("ipo", 0.0), ("sigmoid", 0.11), ("hinge", 0.0)])
def test_every_dpo_knob_reaches_the_math(tiny, monkeypatch, loss_type, label_smoothing):
    spec, tok = tiny
    s = settings("algorithm", "dpo", beta=0.37, loss_type=loss_type, label_smoothing=label_smoothing, lr=2.3e-4,
                 warmup_steps=7, batch_size=3, val_fraction=0.0)
    loss = spy(monkeypatch, dpo_module, "dpo_loss")
    lm = spec.causal_lm(tok)
    rows, collate = encode_pairs(tok, PAIRS, s.max_len), pair_rows_collate(tok.pad_token_id)
    dpo_module.cache_reference_logps(lm, rows, collate)
    module = dpo_module.DPOModule(lm, s)
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=RowsDataModule(rows, collate, s.batch_size, 0.0, 0))
    call = loss.calls[0]
    assert (call["beta"], call["loss_type"], call["label_smoothing"]) == (0.37, loss_type, label_smoothing)
    assert len(call["policy_chosen_logps"]) == 3
    opt = module.optimizers().optimizer
    assert opt.param_groups[0]["initial_lr"] == 2.3e-4
    assert opt.param_groups[0]["lr"] == pytest.approx(2.3e-4 * 2 / 7)  # warm-up: step 2 of 7 after one step


# -- reward model --------------------------------------------------------------------------------

def reward_batch(tok):
    pairs = [Pair("p", "a", "b", margin=0.4, set_id=0), Pair("p", "a", "c", margin=1.3, set_id=0),
             Pair("q", "d", "e", set_id=1)]
    return pair_collate(tok, 32)(comparison_groups(pairs))


@pytest.mark.parametrize("use_margin", [True, False])
def test_every_reward_model_knob_reaches_the_math(tiny, monkeypatch, use_margin):
    spec, tok = tiny
    s = settings("reward_model", center_coef=0.25, use_margin=use_margin, lr=4.2e-4, weight_decay=0.031)
    pairwise = spy(monkeypatch, reward_module, "pairwise_loss")
    centering = spy(monkeypatch, reward_module, "centering_loss")
    torch.manual_seed(0)
    module = reward_module.RewardModule(spec.sequence_classifier(tok), s)
    loss, _, chosen, rejected = module._step(reward_batch(tok))
    margin = pairwise.calls[0]["margin"]
    assert margin.tolist() == pytest.approx([0.4, 1.3, 0.0]) if use_margin else margin is None
    assert len(centering.calls) == 1
    expected = reward_module.pairwise_loss(chosen, rejected, margin)[0] \
        + 0.25 * reward_module.centering_loss(chosen, rejected)
    torch.testing.assert_close(loss, expected)
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    opt = module.configure_optimizers()["optimizer"]
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (4.2e-4, 0.031)


@pytest.mark.parametrize("read", ["completion", "prompt_completion"])
def test_every_classifier_knob_reaches_the_model_the_text_and_the_optimizer(tiny, monkeypatch, read):
    import rlhf_exp.models.reward as reward_source
    from rlhf_exp.modules.data import thumbs_collate
    spec, tok = tiny
    s = settings("reward_model", objective="classifier", class_names=["bad", "good"], classifier_input=read,
                 lr=4.3e-4, weight_decay=0.029, max_len=9)
    loss = spy(monkeypatch, reward_module, "classifier_loss")
    texts = spy(monkeypatch, reward_source, "classifier_texts")
    model = spec.sequence_classifier(tok, list(s.class_names))
    assert model.config.label2id == {"bad": 0, "good": 1}
    batch = thumbs_collate(tok, s.classifier_input, s.max_len)(
        [{"prompt": "How do I fix a bike?", "completion": "Check the chain and the brakes first.", "label": 1}])
    assert texts.values("read") == [read] and batch["input_ids"].shape[1] <= 9 and batch["labels"].tolist() == [1]
    module = reward_module.ClassifierModule(model, s)
    module._step(batch)
    assert loss.calls[0]["labels"].tolist() == [1] and loss.calls[0]["logits"].shape == (1, 2)
    module.trainer = type("T", (), {"estimated_stepping_batches": 10})()
    opt = module.configure_optimizers()["optimizer"]
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (4.3e-4, 0.029)


def test_the_plackett_luce_objective_reads_each_set_whole(tiny, monkeypatch):
    spec, tok = tiny
    pl_loss = spy(monkeypatch, reward_module, "plackett_luce_loss")
    pairwise = spy(monkeypatch, reward_module, "pairwise_loss")
    torch.manual_seed(0)
    module = reward_module.RewardModule(spec.sequence_classifier(tok), settings("reward_model", objective="plackett_luce"))
    module._step(reward_batch(tok))
    assert not pairwise.calls and len(pl_loss.calls) == 1
    call = pl_loss.calls[0]  # set 0: a over b and c (b, c not compared: a tie); set 1: d over e
    assert call["ranks"].tolist() == [[1, 2, 2], [1, 2, 0]] and call["mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert call["scores"].shape == (2, 3)


def test_listwise_dpo_reaches_the_plackett_luce_loss_with_beta(tiny, monkeypatch):
    from rlhf_exp.modules.data import encode_sets, set_rows_collate
    spec, tok = tiny
    s = settings("algorithm", "dpo", beta=0.37, loss_type="plackett_luce", batch_size=2, val_fraction=0.0)
    pl_loss, pairwise = spy(monkeypatch, dpo_module, "plackett_luce_loss"), spy(monkeypatch, dpo_module, "dpo_loss")
    lm = spec.causal_lm(tok)
    rows, collate = encode_sets(tok, PAIRS, s.max_len), set_rows_collate(tok.pad_token_id)
    dpo_module.cache_reference_logps(lm, rows, collate, refs=dpo_module.set_refs)
    module = dpo_module.DPOModule(lm, s)
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=RowsDataModule(rows, collate, s.batch_size, 0.0, 0))
    assert not pairwise.calls and len(pl_loss.calls) == 1
    batch_logps = pl_loss.calls[0]["scores"]  # β·(log π − log π_ref): the policy has not moved yet
    assert batch_logps.shape == (2, 2) and batch_logps.abs().max().item() < 1e-4
    module.policy.eval()
    b = collate(rows[:2])
    r = dpo_module.completion_logps(module.policy, b) - b["ref_logps"]
    module.log_dict = lambda *a, **k: None
    module._step(b, "train")
    torch.testing.assert_close(pl_loss.calls[-1]["scores"], 0.37 * r[b["set_idx"]])


def test_reward_model_without_centering_adds_nothing(tiny, monkeypatch):
    spec, tok = tiny
    centering = spy(monkeypatch, reward_module, "centering_loss")
    module = reward_module.RewardModule(spec.sequence_classifier(tok), settings("reward_model", center_coef=0.0))
    module._step(reward_batch(tok))
    assert centering.calls == []


# -- SFT -----------------------------------------------------------------------------------------

def test_every_sft_knob_reaches_the_optimizer_and_the_sampler(tiny, monkeypatch):
    import rlhf_exp.modules.sft as sft_module
    spec, tok = tiny
    s = settings("sft", lr=1.7e-3, weight_decay=0.021, warmup_steps=9, sample_max_new_tokens=5)
    module = sft_module.SFTModule(spec.causal_lm(tok), tok, s, ["Hello"])
    config = module.configure_optimizers()
    opt, sched = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert (opt.param_groups[0]["lr"], opt.param_groups[0]["weight_decay"]) == (pytest.approx(1.7e-3 / 9), 0.021)
    assert sched.base_lrs == [1.7e-3]
    sample = spy(monkeypatch, sft_module, "sample")
    module.trainer = type("T", (), {"sanity_checking": False, "current_epoch": 0})()
    module.on_validation_epoch_end()
    assert sample.calls[0]["max_new_tokens"] == 5 and sample.calls[0]["temperature"] == 0.0


# -- collect and eval: the sampler's settings ----------------------------------------------------

def stage_context(tmp_path, *overrides):
    from rlhf_exp.stages.context import StageContext
    from rlhf_exp.stages.checks import validate_config
    from rlhf_exp.tracking.tracker import NullRun
    from tests.conftest import compose
    cfg = compose("logger=none", "experiment=smoke", *overrides)
    return StageContext(cfg, validate_config(cfg), tmp_path, NullRun())


@pytest.fixture
def policy_dir(tiny, tmp_path):
    spec, tok = tiny
    torch.manual_seed(0)
    spec.causal_lm(tok).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    return tmp_path / "policy"


def test_collect_settings_reach_the_sampler(tmp_path, policy_dir, monkeypatch):
    import rlhf_exp.stages.collect as collect
    sample = spy(monkeypatch, collect, "sample")
    ctx = stage_context(tmp_path, f"collect.policy={policy_dir}", "collect.temperature=0.7", "collect.top_p=0.85",
                        "collect.max_new_tokens=5", "collect.batch_size=13", "data.n_completions=3",
                        "collect.sets_per_prompt=2", "collect.heldout_sets=1")
    collect.run(ctx)
    train, held = sample.calls
    for call in (train, held):
        assert (call["temperature"], call["top_p"], call["max_new_tokens"], call["batch_size"], call["n"]) == \
            (0.7, 0.85, 5, 13, 3)
    data = ctx.built.data
    assert len(train["prompts"]) == 2 * len(data.train_prompts()) and len(held["prompts"]) == len(data.heldout_prompts())


def test_eval_settings_reach_the_sampler(tmp_path, policy_dir, monkeypatch):
    import rlhf_exp.modules.rollout as rollout
    import rlhf_exp.stages.eval as eval_stage
    gen = spy(monkeypatch, rollout, "generate")  # eval samples through modules/rollout.sample_rollouts
    ratio, bound = spy(monkeypatch, eval_stage, "best_of_n_log_ratio"), spy(monkeypatch, eval_stage, "best_of_n_kl_bound")
    ctx = stage_context(tmp_path, f"eval.policy={policy_dir}", f"eval.reference={policy_dir}", "reward=gold",
                        "eval.temperature=0.6", "eval.max_new_tokens=4", "eval.batch_size=5",
                        "eval.samples_per_prompt=2", "eval.best_of_n=3")
    eval_stage.run(ctx)
    n_heldout = len(ctx.built.data.heldout_prompts())
    n_rows = (2 + 3) * 2 * n_heldout         # two policies and best-of-3 (3 samples each) × 2 per prompt
    assert {(c["temperature"], c["max_new_tokens"]) for c in gen.calls} == {(0.6, 4)}
    assert sum(len(c["prompt_ids"]) for c in gen.calls) == n_rows and max(len(c["prompt_ids"]) for c in gen.calls) == 5
    assert ratio.values("n") == [3] and len(ratio.calls[0]["below"]) == 2 * n_heldout and set(bound.values("n")) == {3}

    gen.calls.clear()
    eval_stage.run(stage_context(tmp_path, f"eval.policy={policy_dir}", f"eval.reference={policy_dir}", "reward=gold",
                                 "eval.samples_per_prompt=2", "eval.best_of_n=null", "eval.batch_size=5"))
    assert sum(len(c["prompt_ids"]) for c in gen.calls) == 2 * 2 * n_heldout and len(ratio.calls) == 1


# -- the model group: its dtype reaches every model a stage builds or loads ------------------------

def test_model_dtype_reaches_every_load(tmp_path, policy_dir, monkeypatch):
    from rlhf_exp.models.reward import LearnedReward
    ctx = stage_context(tmp_path, "model.dtype=bfloat16")
    spec = ctx.built.model
    tok = spec.tokenizer()
    assert spec.causal_lm(tok).dtype == torch.bfloat16 and spec.sequence_classifier(tok).dtype == torch.bfloat16
    loaded = ctx.model_spec(str(policy_dir))                     # collect, align, eval: a saved directory
    assert (loaded.dtype, loaded.name_or_path) == ("bfloat16", str(policy_dir))
    assert loaded.causal_lm(loaded.tokenizer()).dtype == torch.bfloat16
    assert ctx.model_spec(None, "policy") is spec                # no directory: the group itself
    ctx.outputs["policy"] = policy_dir                           # an earlier stage's output
    assert ctx.model_spec(None, "policy").dtype == "bfloat16"
    tiny_rm = spec.sequence_classifier(tok)
    tiny_rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    ctx.built = dataclasses.replace(ctx.built, reward=LearnedReward(path=str(tmp_path / "rm"), normalize=False, batch_size=4, max_len=32))
    assert ctx.reward_source().loaded[0].dtype == torch.bfloat16  # the reward model too


def test_lora_and_gradient_checkpointing_settings_reach_peft_and_the_model(tiny_spec):
    spec = tiny_spec(lora_r=3, lora_alpha=7.0, lora_dropout=0.13, lora_target_modules=["c_attn"],
                     gradient_checkpointing=True)
    tok = spec.tokenizer()
    lm = spec.trainable(spec.causal_lm(tok))
    config = lm.peft_config["default"]
    assert (config.r, config.lora_alpha, config.lora_dropout, config.target_modules) == (3, 7.0, 0.13, {"c_attn"})
    assert lm.get_base_model().is_gradient_checkpointing
    rm = spec.trainable(spec.sequence_classifier(tok), task="SEQ_CLS")
    assert any("score" in n for n, p in rm.named_parameters() if p.requires_grad)  # the reward head trains too
    plain = tiny_spec().trainable(tiny_spec().causal_lm(tok))
    assert not hasattr(plain, "peft_config") and not plain.is_gradient_checkpointing  # r 0: full fine-tuning


def test_a_non_finite_loss_stops_the_stage_with_the_step_and_the_quantity_named():
    from rlhf_exp.errors import DivergenceError
    from rlhf_exp.modules.guard import StopOnNonFinite
    guard = StopOnNonFinite("sft")
    trainer = type("T", (), {"global_step": 7, "current_epoch": 1})()
    guard.on_train_batch_end(trainer, object(), {"loss": torch.tensor(0.5)}, None, 3)   # finite: goes on
    with pytest.raises(DivergenceError, match=r"sft diverged at step 7 \(epoch 1, batch 3\): loss = nan"):
        guard.on_train_batch_end(trainer, object(), {"loss": torch.tensor(float("nan"))}, None, 3)
    ppo = type("M", (), {"iteration": 4})()
    with pytest.raises(DivergenceError, match="iteration 4: ppo/value/loss = inf"):
        StopOnNonFinite("align").on_train_batch_end(trainer, ppo, {"ppo/value/loss": float("inf"),
                                                                    "ppo/kl/ref": 0.1}, None, 0)


# -- checkpoints: every trained stage's interval and resume path reach its trainer ------------------

@pytest.mark.parametrize("stage,node", [("sft", "sft"), ("reward_model", "reward_model"), ("dpo", "algorithm"),
                                        ("simpo", "algorithm")])
def test_every_stage_checkpoint_setting_reaches_its_trainer_and_its_resume_check(tmp_path, monkeypatch, stage, node):
    from rlhf_exp.errors import UserError
    from rlhf_exp.stages import dpo, reward_model, sft, simpo
    from rlhf_exp.stages.context import StageContext
    seen = {}

    class Stop(Exception):
        pass

    def trainer(self, name, checkpoint_every=None, **kw):
        seen["every"] = checkpoint_every
        raise Stop
    monkeypatch.setattr(StageContext, "trainer", trainer)
    extra = [f"algorithm={stage}"] if stage in ("dpo", "simpo") else []
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' * 4)
    inputs = {"reward_model": ["reward_model.pairs=" + str(tmp_path / "pairs.jsonl")],
              "dpo": ["algorithm.pairs=" + str(tmp_path / "pairs.jsonl")],
              "simpo": ["algorithm.pairs=" + str(tmp_path / "pairs.jsonl")]}.get(stage, [])
    ctx = stage_context(tmp_path, *extra, *inputs, f"{node}.checkpoint_every=7")
    run = {"sft": sft.run, "reward_model": reward_model.run, "dpo": lambda c: dpo.run(c, c.built.algorithm),
           "simpo": lambda c: simpo.run(c, c.built.algorithm)}[stage]
    with pytest.raises(Stop):
        run(ctx)
    assert seen["every"] == 7
    ctx = stage_context(tmp_path, *extra, *inputs, f"{node}.ckpt_path=missing.ckpt")
    with pytest.raises(UserError, match=f"{node}.ckpt_path = missing.ckpt: no such file"):
        run(ctx)


def test_every_kto_knob_reaches_the_math(tiny, monkeypatch):
    import rlhf_exp.modules.kto as kto_module
    from rlhf_exp.feedback.formats import Binary
    from rlhf_exp.modules.dpo import cache_reference_logps, pair_refs
    spec, tok = tiny
    s = settings("algorithm", "kto", beta=0.37, desirable_weight=1.3, undesirable_weight=0.7, lr=2.3e-4,
                 warmup_steps=7, batch_size=3, val_fraction=0.0)
    loss, point = spy(monkeypatch, kto_module, "kto_loss"), spy(monkeypatch, kto_module, "kto_reference_point")
    thumbs = [Binary(p.prompt, c, label) for p in PAIRS for c, label in ((p.chosen, 1), (p.rejected, 0))]
    lm = spec.causal_lm(tok)
    rows, collate = kto_module.encode_thumbs(tok, thumbs, s.max_len), kto_module.thumbs_rows_collate(tok.pad_token_id)
    cache_reference_logps(lm, rows, collate, refs=pair_refs)
    module = kto_module.KTOModule(lm, s)
    trainer(max_steps=1, limit_val_batches=0).fit(module, datamodule=RowsDataModule(rows, collate, s.batch_size, 0.0, 0))
    call = loss.calls[0]
    assert (call["beta"], call["desirable_weight"], call["undesirable_weight"]) == (0.37, 1.3, 0.7)
    assert len(call["policy_logps"]) == 3 and len(point.calls[0]["policy_kl_logps"]) == 3  # batch_size thumbs
    kl = point.calls[0]
    assert torch.allclose(call["z0"], (kl["policy_kl_logps"] - kl["ref_kl_logps"]).mean().clamp(min=0))  # z₀ of the
    assert not torch.equal(kl["policy_kl_logps"], call["policy_logps"])  # mismatched rows, not the thumbs' own
    opt = module.optimizers().optimizer
    assert opt.param_groups[0]["initial_lr"] == 2.3e-4
    assert opt.param_groups[0]["lr"] == pytest.approx(2.3e-4 * 2 / 7)  # warm-up: step 2 of 7 after one step
