"""PPO on tiny sizes: the forward pass it relies on, the value model, one iteration with the
invariant check on (and a broken setup that the check catches), stopping, resuming."""
import copy
import re
from functools import partial

import pytest
import pytorch_lightning as pl
import torch

from rlhf_exp.config import ConfigError
from rlhf_exp.core.ops import logprobs_from_logits
from rlhf_exp.worlds.synthetic import World
from rlhf_exp.models.generation import encode_prompts, generate, left_pad_collate
from rlhf_exp.models.reward import GoldReward
from rlhf_exp.models.value import ActorCritic, Critic, response_logits
from rlhf_exp.modules.data import PromptDataModule
from rlhf_exp.modules.ppo import InvariantError, PPOModule
from tests.conftest import settings

PROMPTS = World(0, 0.2).train_prompts[:12]


def ppo_settings(**overrides):
    return settings("algorithm", "ppo", **overrides)


def policy(spec, tok, seed=0):
    """A tiny policy that ends about one response in three with EOS within 12 tokens (a hook on its LM head
    raises the EOS logit, in generate and forward alike), so responses have varied lengths."""
    torch.manual_seed(seed)
    lm = spec.causal_lm(tok)
    bias = torch.zeros(len(tok))
    bias[tok.eos_token_id] = 2.5
    lm.lm_head.register_forward_hook(lambda module, args, out: out + bias)
    return lm


def batch(tok, prompts=PROMPTS[:4]):
    return left_pad_collate(tok.pad_token_id)(encode_prompts(tok, prompts))


def trainer(**kw):
    return pl.Trainer(**{"max_epochs": -1, "logger": False, "enable_checkpointing": False,
                         "enable_progress_bar": False, "enable_model_summary": False, "accelerator": "cpu", **kw})


def ppo(spec, tok, reward=None, **overrides):
    s = ppo_settings(**{"batch_size": 4, "minibatches": 2, "ppo_epochs": 2, "max_new_tokens": 12,
                        "max_steps": 1, "sample_every": 1, "n_samples": 2, **overrides})
    lm = policy(spec, tok)
    critic = Critic.from_policy(lm) if s.value_model == "separate" else None
    module = PPOModule(ActorCritic(lm, critic), copy.deepcopy(lm), tok, reward or GoldReward(component="overall"), s)
    return module, PromptDataModule(PROMPTS, tok, s.batch_size, seed=0)


def test_response_logprobs_ignore_left_padding(tiny):
    spec, tok = tiny
    lm = policy(spec, tok).eval()
    b = batch(tok)
    torch.manual_seed(1)
    roll = generate(lm, tok, b["input_ids"], b["attention_mask"], max_new_tokens=12, temperature=0.8)
    assert roll.mask.sum(1).min() >= 1 and not roll.has_eos.all() and roll.has_eos.any()
    batched = logprobs_from_logits(response_logits(lm, roll.input_ids, roll.attention_mask, 12, 0.8)[0], roll.response)
    for i in range(len(roll.texts)):  # each row alone, without its padding, gives the same log-probs
        keep = roll.attention_mask[i].bool()
        keep[-12:] = True  # the response part stays whole (its mask says what counts)
        ids, att = roll.input_ids[i:i + 1, keep], roll.attention_mask[i:i + 1, keep]
        alone = logprobs_from_logits(response_logits(lm, ids, att, 12, 0.8)[0], roll.response[i:i + 1])
        m = roll.mask[i].bool()
        assert torch.allclose(alone[0, m], batched[i, m], atol=1e-5)


def test_value_head_starts_at_zero_and_a_critic_can_start_from_the_reward_model(tiny):
    spec, tok = tiny
    lm = policy(spec, tok).eval()
    b = batch(tok)
    logits, values = ActorCritic(lm)(b["input_ids"], b["attention_mask"], 3, 1.0)
    assert logits.shape == (4, 3, len(tok)) and values.shape == (4, 3) and (values == 0).all()

    torch.manual_seed(2)
    rm = spec.sequence_classifier(tok).eval()
    ids = tok(["I feel bored, any ideas?\nRead a book.", "Hello\nHi there, friend."], return_tensors="pt",
              padding=True, padding_side="right")
    n = 2  # values at the two positions before the last: the reward model's score of each prefix
    with torch.no_grad():
        values = Critic.from_reward_model(rm)(ids["input_ids"][:1], ids["attention_mask"][:1], n)
        length = int(ids["attention_mask"][0].sum())
        prefix = ids["input_ids"][:1, :length - 1]
        score = rm(input_ids=prefix).logits[0, 0]
    assert values.shape == (1, n) and torch.isclose(values[0, -1], score, atol=1e-5)


def test_one_ppo_iteration_moves_the_policy_and_logs_every_design_metric(tiny):
    spec, tok = tiny
    module, dm = ppo(spec, tok)
    before = copy.deepcopy(module.policy.state_dict())
    ref_before = copy.deepcopy(module.ref.state_dict())
    t = trainer()
    t.fit(module, datamodule=dm)  # check_invariants is on: ratio 1 and KL 0 on the first minibatch

    assert module.iteration == 1 and module.stop_reason == "max_steps (1) reached"
    m = {k: float(v) for k, v in t.callback_metrics.items()}
    design = ["ppo/reward/score_mean", "ppo/reward/score_std", "ppo/reward/total_mean", "ppo/kl/ref",
              "ppo/kl/coef", "ppo/policy/loss", "ppo/policy/clipfrac", "ppo/policy/approx_kl",
              "ppo/policy/entropy", "ppo/value/loss", "ppo/value/clipfrac", "ppo/value/explained_var",
              "ppo/returns/mean", "ppo/response/len_mean", "ppo/response/eos_rate", "ppo/perf/rollout_s",
              "ppo/perf/update_s", "ppo/perf/tokens_per_s"]
    assert set(design) <= set(m) and all(torch.isfinite(torch.tensor(m[k])) for k in design)
    assert m["ppo/kl/ref"] == pytest.approx(0, abs=1e-5)  # the policy is the reference at the first rollout
    assert m["ppo/kl/coef"] == pytest.approx(0.2) and m["ppo/update/epochs"] == 2
    assert 0 < m["ppo/response/eos_rate"] < 1 and 1 <= m["ppo/response/len_mean"] <= 12
    assert m["ppo/policy/approx_kl"] > 0  # the later minibatches saw a moved policy

    after = module.policy.state_dict()
    assert not torch.equal(after["value_head.weight"], before["value_head.weight"])
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("lm."))
    assert all(torch.equal(module.ref.state_dict()[k], v) for k, v in ref_before.items())
    assert len(module.samples) == 2 and set(module.samples[0]) == {"iteration", "prompt", "response", "score"}


def test_the_invariant_check_catches_dropout_left_on(tiny):
    spec, tok = tiny
    module, dm = ppo(spec, tok)
    module.on_train_batch_start = lambda batch, idx: module.train()  # dropout 0.1 stays on: rollout ≠ update
    with pytest.raises(InvariantError, match="ratio must be 1"):
        trainer().fit(module, datamodule=dm)


class ConstantReward:
    def __init__(self, value):
        self.value = value

    def score(self, prompts, completions):
        return torch.full((len(prompts),), self.value)


def test_stops_when_the_moving_average_score_reaches_the_threshold(tiny):
    spec, tok = tiny
    module, dm = ppo(spec, tok, ConstantReward(2.0), max_steps=10, reward_threshold=1.5, threshold_window=3,
                     missing_eos_penalty=None, ppo_epochs=1)
    trainer().fit(module, datamodule=dm)
    assert module.iteration == 3 and "reward_threshold" in module.stop_reason


def test_resumes_from_a_checkpoint_with_the_kl_controller_state(tiny, tmp_path):
    from pytorch_lightning.callbacks import ModelCheckpoint
    spec, tok = tiny
    kw = dict(kl_controller="adaptive", kl_target=0.01, kl_horizon=10, ppo_epochs=1)
    module, dm = ppo(spec, tok, max_steps=2, **kw)
    trainer(callbacks=[ModelCheckpoint(dirpath=tmp_path, save_last=True)], enable_checkpointing=True).fit(module, datamodule=dm)
    assert module.iteration == 2 and module.kl_ctl.value != pytest.approx(0.2)  # the adaptive controller moved

    resumed, dm = ppo(spec, tok, max_steps=3, **kw)
    trainer().fit(resumed, datamodule=dm, ckpt_path=tmp_path / "last.ckpt")
    assert resumed.iteration == 3 and len(resumed.timings) == 1  # one more iteration, not three
    assert resumed.score_means[:2] == module.score_means


def test_a_separate_critic_learns_while_the_policy_has_no_value_head(tiny):
    spec, tok = tiny
    module, dm = ppo(spec, tok, value_model="separate")
    head = module.policy.critic.head.weight.clone()
    trainer().fit(module, datamodule=dm)
    assert module.policy.value_head is None and not torch.equal(module.policy.critic.head.weight, head)


def test_ppo_settings_are_checked():
    with pytest.raises(ConfigError, match="algorithm.minibatches = 8: expected at most batch_size"):
        ppo_settings(batch_size=4, minibatches=8)
    with pytest.raises(ConfigError, match="algorithm.value_init = 'reward': expected value_model = 'separate'"):
        ppo_settings(value_init="reward")
    with pytest.raises(ConfigError, match="algorithm.clip_eps = 1.5: expected a value > 0 and < 1"):
        ppo_settings(clip_eps=1.5)



class Unlisted:  # a class torch.load(weights_only=True) refuses to rebuild (it would run its code)
    pass


def test_a_checkpoint_to_resume_from_is_checked_before_anything_loads(tmp_path):
    from rlhf_exp.errors import UserError
    from rlhf_exp.modules.checkpoints import check_checkpoint
    check = partial(check_checkpoint, field="algorithm.ckpt_path", key="ppo", max_steps=3)
    check(None)  # nothing to resume
    (tmp_path / "garbage.ckpt").write_bytes(b"not a checkpoint")
    cases = {"missing.ckpt": "no such file", "garbage.ckpt": "not a checkpoint (torch.save writes a zip"}
    torch.save({"ppo": {"iteration": 1}, "extra": Unlisted()}, tmp_path / "code.ckpt")
    cases["code.ckpt"] = "not a checkpoint that loads with weights_only=True"
    torch.save({"grpo": {"iteration": 1}}, tmp_path / "grpo.ckpt")
    cases["grpo.ckpt"] = "not a checkpoint of this algorithm (expected its loop state under 'ppo')"
    torch.save({"ppo": {"iteration": 3}}, tmp_path / "done.ckpt")
    cases["done.ckpt"] = "it is at iteration 3 and algorithm.max_steps = 3, so resuming would train nothing"
    for name, message in cases.items():
        with pytest.raises(UserError, match=re.escape(f"algorithm.ckpt_path = {tmp_path / name}: {message}")):
            check(str(tmp_path / name))
    torch.save({"ppo": {"iteration": 2}}, tmp_path / "ok.ckpt")
    check(str(tmp_path / "ok.ckpt"))
