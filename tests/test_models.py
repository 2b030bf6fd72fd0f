"""model=tiny and model=hf: tokenizer with PAD != EOS and left padding; save_pretrained -> from_pretrained."""
import re
from pathlib import Path

import pytest
import torch

from rlhf_exp.models.reward import GoldReward
from tests.conftest import settings

pytestmark = pytest.mark.xdist_group("models")  # pytest -n 2 (make test): this module's tests on one worker, which makes its module fixture once


@pytest.fixture(scope="module")
def tiny(tiny_spec):
    spec = tiny_spec(dropout=0.0)
    tok = spec.tokenizer()
    torch.manual_seed(0)
    return spec, tok, spec.causal_lm(tok).eval()


def test_tokenizer_is_cached_and_pads_left_with_a_pad_distinct_from_eos(tiny):
    spec, tok, _ = tiny
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    assert len(tok) == 512
    assert tok.decode(tok("My house is too hot.")["input_ids"]) == "My house is too hot."
    cached = list(Path(spec.tokenizer_dir).iterdir())
    assert len(cached) == 1  # trained once (one vocabulary size in these tests), then loaded from the cache
    again = spec.tokenizer()
    assert again("knock knock")["input_ids"] == tok("knock knock")["input_ids"]
    assert list(Path(spec.tokenizer_dir).iterdir()) == cached


def test_tiny_model_is_built_from_config(tiny):
    _, tok, lm = tiny
    assert lm.config.n_layer == 1 and lm.config.n_embd == 32
    assert lm.config.pad_token_id == tok.pad_token_id and lm.config.eos_token_id == tok.eos_token_id
    assert lm.get_input_embeddings().num_embeddings == len(tok)


def test_left_padded_batch_matches_unpadded_prompts(tiny):
    """Correct position ids under left padding: the next-token logits do not depend on padding."""
    _, tok, lm = tiny
    prompts = ["Hi", "My house is too hot. What can I do?"]
    batch = tok(prompts, return_tensors="pt", padding=True)
    assert batch["attention_mask"][0, 0] == 0  # the short prompt is padded on the left
    out = lm.generate(**batch, max_new_tokens=3, do_sample=False, output_scores=True,
                      return_dict_in_generate=True)
    for i, p in enumerate(prompts):
        single = lm.generate(**tok([p], return_tensors="pt"), max_new_tokens=3, do_sample=False,
                             output_scores=True, return_dict_in_generate=True)
        for step in range(3):
            torch.testing.assert_close(out.scores[step][i], single.scores[step][0], atol=1e-4, rtol=1e-4)


def test_save_pretrained_then_load_with_model_hf(tiny, tmp_path):
    _, tok, lm = tiny
    lm.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    spec = settings("model", "hf", name_or_path=str(tmp_path))
    tok2 = spec.tokenizer()
    lm2 = spec.causal_lm(tok2).eval()
    assert tok2.pad_token_id == tok.pad_token_id != tok2.eos_token_id
    assert tok2.padding_side == "left"
    ids = tok(["Tell me a knock-knock joke."], return_tensors="pt")
    torch.testing.assert_close(lm2(**ids).logits, lm(**ids).logits)


def test_model_hf_adds_a_pad_token_when_the_checkpoint_pads_with_eos(tiny, tmp_path):
    _, tok, lm = tiny
    tok.save_pretrained(tmp_path)
    lm.save_pretrained(tmp_path)
    from transformers import AutoTokenizer
    t = AutoTokenizer.from_pretrained(tmp_path)
    t.pad_token = t.eos_token  # what many checkpoints ship with
    t.save_pretrained(tmp_path)
    spec = settings("model", "hf", name_or_path=str(tmp_path))
    tok2 = spec.tokenizer()
    assert tok2.pad_token_id != tok2.eos_token_id
    lm2 = spec.causal_lm(tok2)
    assert lm2.get_input_embeddings().num_embeddings >= len(tok2)
    assert lm2.generation_config.pad_token_id == tok2.pad_token_id


def test_gold_reward_scores_a_batch():
    r = GoldReward(component="overall")
    scores = r.score(["Tell me a knock-knock joke."] * 2,
                     ["Knock knock. Who's there? Boo. Boo who? Don't cry, it's only a joke!",
                      "That is a stupid question. You are wrong about jokes, figure it out yourself."])
    assert scores.shape == (2,) and scores.dtype == torch.float32
    assert scores[0] > 0.8 > scores[1]
    assert GoldReward(component="toxicity").score(["q"], ["you idiot, stupid"]).item() == 1.0


def test_sample_returns_n_completions_per_prompt(tiny):
    from rlhf_exp.models.generation import sample
    _, tok, lm = tiny
    out = sample(lm, tok, ["Hi", "My house is too hot. What can I do?", "Tell me a joke."], 2,
                 temperature=1.0, top_p=0.9, max_new_tokens=4, batch_size=2)
    assert [len(t) for t in out.texts] == [2, 2, 2] and [len(e) for e in out.has_eos] == [2, 2, 2]
    assert all(1 <= n <= 4 for ns in out.lengths for n in ns)
    assert not lm.training  # the fixture's eval mode is restored


def test_a_model_directory_is_checked_before_transformers_reads_it(tmp_path, tiny):
    """Not a directory, no config, bad JSON, pickled weights only, no tokenizer: each refused with
    the setting, the path and what is missing (no transformers traceback); pickled weights are never
    loaded (they can run code)."""
    from rlhf_exp.errors import UserError
    from rlhf_exp.models.factory import check_model_dir
    spec, tok, _ = tiny
    good = tmp_path / "good"
    spec.causal_lm(tok).save_pretrained(good)
    tok.save_pretrained(good)
    check_model_dir(good, "algorithm.policy")
    (tmp_path / "file.jsonl").write_text("{}\n")
    (tmp_path / "empty").mkdir()
    bad_json = tmp_path / "bad_json"
    bad_json.mkdir()
    (bad_json / "config.json").write_text("{bad")
    pickled = tmp_path / "pickled"  # as older transformers wrote it: a pickle, not safetensors
    spec.causal_lm(tok).config.save_pretrained(pickled)
    torch.save(spec.causal_lm(tok).state_dict(), pickled / "pytorch_model.bin")
    tok.save_pretrained(pickled)
    no_tok = tmp_path / "no_tok"
    spec.causal_lm(tok).save_pretrained(no_tok)
    cases = {"missing": "no such directory", "file.jsonl": "a file, not a directory", "empty": "no config.json",
             "bad_json": "config.json is not JSON", "pickled": "pytorch_model.bin are pickled weights",
             "no_tok": "no tokenizer (tokenizer.json or tokenizer_config.json)"}
    for name, message in cases.items():
        with pytest.raises(UserError, match=re.escape(f"algorithm.policy = {tmp_path / name} (resolved to")) as err:
            check_model_dir(tmp_path / name, "algorithm.policy")
        assert message in str(err.value), name
