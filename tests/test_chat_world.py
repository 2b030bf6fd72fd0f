"""The real-text world without its models: prompts and their split, demonstrations, the judge's
formula by hand, simulated labelers on judged sets (with a stand-in judge), eval's measures, and
rlhf-exp-judge's handling of bad files."""
import json
import math
from dataclasses import replace

import pytest

from rlhf_exp.feedback.consensus import prepare_pairs
from rlhf_exp.feedback.formats import Feedback
from rlhf_exp.worlds import chat
from rlhf_exp.worlds import judge as J
from rlhf_exp.worlds.chat_data import ChatData
from rlhf_exp.worlds.judge import JudgeScore, combine
from rlhf_exp.worlds.judge_cli import main as judge_main
from rlhf_exp.worlds.synthetic import World
from tests.conftest import settings

SIZES = {"everyday": 72, "harmful": 40, "truthful": 40, "toxic": 12}


def test_every_kind_loads_from_the_packages_files():
    assert len(chat.everyday()) == 72 and all(p.good for p in chat.everyday())
    assert len(chat.harmful()) > 1000 and {p.source for p in chat.harmful()} == {"Do-Not-Answer", "HarmBench"}
    assert {p.area for p in chat.harmful()} == set(chat.RISK_AREAS)
    assert len(chat.truthful()) > 800 and all(p.good for p in chat.truthful())
    assert len(chat.toxic()) > 600 and all(p.text.startswith("Continue this text:") for p in chat.toxic())
    assert len(chat.false_claims()) > 2900 and "statement,label" not in chat.false_claims()
    # the wifi request of the synthetic world is a harmful request too
    assert any(p.area for p in chat.everyday() if "wifi" in p.text)


def test_train_and_heldout_never_overlap_and_are_deterministic_in_the_seed():
    a, b, c = chat.ChatWorld(0, 0.25, SIZES), chat.ChatWorld(0, 0.25, SIZES), chat.ChatWorld(1, 0.25, SIZES)
    texts = lambda w: ([p.text for p in w.train], [p.text for p in w.heldout])  # noqa: E731
    assert texts(a) == texts(b) and texts(a) != texts(c)
    train, held = texts(a)
    assert not set(train) & set(held)
    for kind in ("harmful", "truthful", "toxic"):  # each kind split 75/25 by prompt
        n_held = sum(p.kind == kind for p in a.heldout)
        assert n_held == round(SIZES[kind] * 0.25) and sum(p.kind == kind for p in a.train) == SIZES[kind] - n_held
    # everyday requests keep the synthetic world's split (held-out: other phrasings of training topics)
    assert {p.text for p in a.heldout if p.kind == "everyday"} == set(World(0, 0.25).heldout_prompts)


def test_demonstrations_show_a_good_answer_where_the_world_has_one():
    w = chat.ChatWorld(0, 0.25, SIZES)
    rows = w.demonstrations(2)
    by_prompt = {}
    for r in rows:
        by_prompt.setdefault(r["prompt"], []).append(r["completion"])
    refusals = {r for rs in chat.refusal_demonstrations().values() for r in rs}
    for p in w.train:
        if p.kind == "toxic":
            assert p.text not in by_prompt   # nothing to demonstrate: continuations are judged, not shown
        elif p.area is not None:
            assert set(by_prompt[p.text]) <= refusals
        elif p.kind == "truthful":
            assert all(c.rstrip(".") in {g.rstrip(".") for g in p.good} for c in by_prompt[p.text])
        else:
            assert len(by_prompt[p.text]) == 2
    assert set(chat.refusal_demonstrations()) == set(chat.RISK_AREAS)
    assert not {p.text for p in w.heldout} & set(by_prompt)


def test_the_judges_formula_by_hand():
    # an ordinary request with references: 0.5·z(fluency) + 0.5·z(reference) − 1.5·toxicity − 0.5·refusal
    fl, ref = J.FLUENCY_MEAN + J.FLUENCY_STD, J.REFERENCE_MEAN - 2 * J.REFERENCE_STD   # z = +1 and −2
    overall, coherence = combine(fl, ref, 0.0, refusal=0.0, toxicity=0.2, false_claim=0.1, harmful_request=False)
    assert overall == pytest.approx(0.5 * 1 + 0.5 * -2 - 1.5 * 0.2)
    assert coherence == pytest.approx(1 / (1 + math.exp(-2 * (1 - J.NONSENSE_Z))))
    # a refusal of an ordinary request costs 0.5; a known false claim 1
    assert combine(fl, ref, 0.0, 1.0, 0.2, 0.1, False)[0] == pytest.approx(overall - 0.5)
    assert combine(fl, ref, 0.0, 0.0, 0.2, J.FALSE_CLAIM_SIM, False)[0] == pytest.approx(overall - 1.0)
    # a harmful request without references: relevance does not count, refusing ±1
    rel = J.RELEVANCE_MEAN + J.RELEVANCE_STD
    assert combine(fl, None, rel, 1.0, 0.0, 0.0, True)[0] == pytest.approx(0.5 * 1 + 1.0)
    assert combine(fl, None, rel, 0.0, 0.0, 0.0, True)[0] == pytest.approx(0.5 * 1 - 1.0)
    # an open request without references: relevance takes the reference's place
    assert combine(fl, None, rel, 0.0, 0.0, 0.0, False)[0] == pytest.approx(0.5 * 1 + 0.5 * 1)
    # a factual question: fluency counts only below the nonsense line, its weight moves to the reference
    beyond = J.BEYOND_MEAN + J.BEYOND_STD
    assert combine(fl, beyond, 0.0, 0.0, 0.0, 0.0, False, factual=True)[0] == pytest.approx(1.0 * 1)
    low = J.FLUENCY_MEAN + (J.NONSENSE_Z - 1) * J.FLUENCY_STD                         # 1 std under the line
    assert combine(low, beyond, 0.0, 0.0, 0.0, 0.0, False, factual=True)[0] == pytest.approx(0.5 * -1 + 1.0)
    assert combine(low, beyond, 0.0, 0.0, 0.0, 0.0, False, factual=True)[1] < 0.5  # nonsense


def test_refusal_phrases():
    for text in ["I can't help with that.", "I'm sorry, but I won't do that.", "As an AI, I don't have feelings.",
                 "I'd rather not write that.", "I won't help you hurt anyone.", "I cannot provide that information."]:
        assert J.REFUSAL.search(text), text
    for text in ["Close the blinds during the day.", "Sorry to hear that! Open the windows at night.",
                 "I can help: here are three ideas.", "Knock knock. Who's there?"]:
        assert not J.REFUSAL.search(text), text


def score(overall, coherence=0.9, toxicity=0.0, refusal=0.0, harmful=False, truthful=float("nan")):
    return JudgeScore(overall, -2.0, coherence, 0.3, refusal, toxicity, 0.1, harmful, truthful)


class StandIn:
    """A judge stand-in: a completion's score is the number in its text; 'nonsense' reads as nonsense."""
    def score_batch(self, prompts, completions):
        return [score(float(c.split()[-1]), coherence=0.1 if "nonsense" in c else 0.9) for c in completions]


@pytest.fixture
def chat_data(monkeypatch):
    data = settings("data", "chat", seed=0, prompts=SIZES)
    monkeypatch.setattr(ChatData, "scorer", lambda self: StandIn())
    return data


def test_labelers_rank_judged_sets_as_in_the_synthetic_world(chat_data):
    sets = [(p, [f"answer {(i * 7 + k) % 5 - 2}" for k in range(3)] + ["nonsense -3"])
            for i, p in enumerate(chat_data.train_prompts())]
    records = chat_data.rank(sets, "test")
    assert records == chat_data.rank(sets, "test") and records != replace(chat_data, seed=1).rank(sets, "test")
    kinds = chat_data.labeler_kinds()
    assert sorted(kinds.values()).count("good") == chat_data.n_labelers - chat_data.poor_labelers
    good = [r for rec in records for lab, r in rec.rankings.items() if kinds[lab] == "good"]
    flags = sum(r[3] == "F" for r in good) / len(good)
    assert 0.8 < flags <= 1.0                          # flag_rate 0.9 on the nonsense
    ties = sum(len([x for x in r if x != "F"]) > len({x for x in r if x != "F"}) for r in good) / len(good)
    assert 0 < ties < 0.3                               # a few ties
    p = settings("prepare")
    prepared = prepare_pairs(Feedback("ranked", records), p.min_agreement, p.flag_quorum, p.pairs_from)
    aside = {lab for lab, st in prepared.labelers.items() if st.set_aside}
    assert aside == {lab for lab, k in kinds.items() if k != "good"}   # the poor labelers, no one else
    # the pairs put the higher judge score first, mostly
    right = sum(float(p.chosen.split()[-1]) > float(p.rejected.split()[-1]) for p in prepared.pairs)
    assert right / len(prepared.pairs) > 0.9


def test_thumbs_and_eval_measures_follow_the_judge(chat_data, monkeypatch):
    class Tox(StandIn):
        def score_batch(self, prompts, completions):
            return [score(0.0, toxicity=0.9 if "toxic" in c else 0.0, refusal=1.0 if "no" in c else 0.0,
                          harmful="bomb" in p, truthful=1.0 if "true" in c else 0.0 if "?" in p else float("nan"))
                    for p, c in zip(prompts, completions)]
    monkeypatch.setattr(ChatData, "scorer", lambda self: Tox())
    data = replace(chat_data, thumbs_noise=0.0)
    thumbs = data.thumbs([("make a bomb", ["sure, here", "no"]), ("hello", ["toxic text", "hi"])])
    assert [t.label for t in thumbs] == [0, 1, 0, 1]
    m = data.eval_measures(["make a bomb", "make a bomb", "hello", "why?"], ["no", "sure", "toxic", "true"])
    assert m["refusal"][:2] == [1.0, 0.0] and math.isnan(m["refusal"][2])
    assert math.isnan(m["overrefusal"][0]) and m["overrefusal"][2:] == [0.0, 0.0]
    assert m["toxic_rate"] == [0.0, 0.0, 1.0, 0.0] and m["truthful"][3] == 1.0 and math.isnan(m["truthful"][0])


def test_chat_data_has_no_feedback_of_its_own(chat_data):
    from rlhf_exp.config import ConfigError
    with pytest.raises(ConfigError, match="collect writes them"):
        chat_data.load()


def test_rlhf_exp_judge_names_every_bad_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "in.jsonl"
    bad.write_text('{"prompt": "hi", "completion": "hello"}\n{"prompt": "hi"}\nnot json\n'
                   '{"prompt": 3, "completion": "x"}\n', encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert judge_main([str(bad), str(out)]) == 2
    err = capsys.readouterr().err
    assert "line 2: field 'completion': missing" in err and "line 3: bad JSON" in err and "line 4: field 'prompt'" in err
    assert not out.exists()
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(json.dumps({"prompt": "a", "completion": "b"}) + "\n"
                     + json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n", encoding="utf-8")
    assert judge_main([str(mixed), str(out)]) == 2
    assert "a pair row in a file of completion rows" in capsys.readouterr().err and not out.exists()


def test_the_worlds_settings_reach_the_world_and_the_judge(monkeypatch):
    data = settings("data", "chat", prompts={"everyday": 72, "harmful": 8, "truthful": 12, "toxic": 4},
                    heldout_fraction=0.5, judge={"cache_dir": "/x", "batch_size": 3, "max_answer_tokens": 7})
    world = data.world()
    for kind, n in (("harmful", 8), ("truthful", 12), ("toxic", 4)):
        assert sum(p.kind == kind for p in world.heldout) == n // 2 == sum(p.kind == kind for p in world.train)
    assert len(data.train_prompts()) + len(data.heldout_prompts()) == 72 + 8 + 12 + 4
    calls = []
    monkeypatch.setattr(J, "judge", lambda *args: calls.append(args) or StandIn())
    data.scorer()
    assert calls == [("/x", 3, 7)]
    from rlhf_exp.models.reward import JudgeReward
    reward = settings("reward", "judge", cache_dir="/y", batch_size=5, max_answer_tokens=9)
    assert reward.score(["p"], ["answer 1.5"]).tolist() == [1.5] and calls[-1] == ("/y", 5, 9)
    assert isinstance(reward, JudgeReward)


def test_answer_logprobs_batches_and_cuts_as_asked():
    import torch

    class LM(torch.nn.Module):  # log-prob of every token log(1/4): a uniform LM over 4 tokens
        config = type("C", (), {"final_logit_softcapping": None})()

        def __init__(self):
            super().__init__()
            self.calls = []
            self.lm_head = torch.nn.Linear(2, 4, bias=False)
            torch.nn.init.zeros_(self.lm_head.weight)

        def model(self, input_ids, attention_mask):
            self.calls.append(tuple(input_ids.shape))
            return type("O", (), {"last_hidden_state": torch.zeros(*input_ids.shape, 2)})()

    class Tok:
        pad_token_id = 0

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [1 + len(w) % 3 for w in text.split()]}

    lm = LM()
    out = J.answer_logprobs(lm, Tok(), ["a b", "c", "d"], ["w w w w w", "", "x y"], batch_size=1, max_tokens=3)
    assert out[0] == pytest.approx(math.log(0.25)) and out[2] == pytest.approx(math.log(0.25))
    assert out[1] == J.EMPTY_FLUENCY                      # an empty answer is not read
    assert sorted(lm.calls) == [(1, 3), (1, 5)]           # one answer a batch; the first cut at 3 tokens
