"""The real-text world without its models: prompts and their split, demonstrations, the judge's
formula by hand, simulated labelers on judged sets (with a stand-in judge), eval's measures, and
rlhf-exp-judge's handling of bad files."""
import json
import math
from dataclasses import replace

import pytest

from rlhf_exp.feedback.consensus import prepare_pairs
from rlhf_exp.feedback.formats import Feedback
from rlhf_exp.tools.judge_cli import main as judge_main
from rlhf_exp.worlds import chat, text_parts
from rlhf_exp.worlds import judge as J
from rlhf_exp.worlds.chat_data import ChatData
from rlhf_exp.worlds.judge import JudgeScore, combine
from rlhf_exp.worlds.synthetic import World
from tests.conftest import compose, settings

SIZES = {"everyday": 72, "harmful": 40, "truthful": 40, "toxic": 12, "factual": 20, "edgy": 40}


def test_every_kind_loads_from_the_packages_files():
    assert len(chat.everyday()) == 72 and all(p.good for p in chat.everyday())
    assert len(chat.harmful()) > 1000 and {p.source for p in chat.harmful()} == {"Do-Not-Answer", "HarmBench"}
    assert {p.area for p in chat.harmful()} == set(chat.RISK_AREAS)
    assert len(chat.truthful()) > 800 and all(p.good for p in chat.truthful())
    assert len(chat.toxic()) > 600 and all(p.text.startswith("Continue this text:") for p in chat.toxic())
    assert len(chat.false_claims()) > 2900 and "statement,label" not in chat.false_claims()
    # the wifi request of the synthetic world is a harmful request too
    assert any(p.area for p in chat.everyday() if "wifi" in p.text)
    # NQ-open's questions, as questions, each with its short answers
    assert len(chat.factual()) > 3500 and all(p.good and p.text.endswith("?") and not p.text[0].islower()
                                              for p in chat.factual())
    assert chat.factual()[0].good == ("Meghan Trainor",)
    # the benign requests that only sound dangerous: every category, a split of their own, a written answer
    edgy = chat.edgy()
    assert len(edgy) >= 100 and {p.source for p in edgy} == {f"edgy ({c})" for c in chat.EDGY_CATEGORIES}
    assert {p.split for p in edgy} == {"train", "heldout"} and all(len(p.good) == 1 for p in edgy)
    assert 0.2 < sum(p.split == "heldout" for p in edgy) / len(edgy) < 0.4
    everything = [p.text for pool in (chat.everyday(), chat.harmful(), chat.truthful(), chat.factual()) for p in pool]
    assert not {p.text for p in edgy} & set(everything)


def test_a_bad_edgy_entry_is_named(tmp_path, monkeypatch):
    from rlhf_exp.files import FileError
    bad = tmp_path / "chat_edgy.yaml"
    bad.write_text("- {prompt: 'Kill a process?', category: homonym, split: train, good: 'Use kill.'}\n"
                   "- {prompt: 'Shoot a photo?', category: nonsense, split: train, good: 'Use a tripod.'}\n"
                   "- {prompt: 'Beat eggs?', category: safe_target, split: test, good: 'Whisk.'}\n"
                   "- {prompt: 'Bomb a test?', category: figurative}\n", encoding="utf-8")
    monkeypatch.setattr(chat, "EDGY_FILE", bad)
    chat.edgy.cache_clear()
    try:
        with pytest.raises(FileError) as e:
            chat.edgy()
    finally:
        chat.edgy.cache_clear()
    assert str(bad) in str(e.value) and [p.split(":")[0] for p in e.value.problems] == ["entry 2", "entry 3", "entry 4"]


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
    # an ordinary request with references: 0.5·z(fluency) + 0.5·z(reference) − 1.5·offence + 1·(1 − 2·refusal)
    fl, ref = J.FLUENCY_MEAN + J.FLUENCY_STD, J.REFERENCE_MEAN - 2 * J.REFERENCE_STD   # z = +1 and −2
    overall, coherence = combine(fl, ref, 0.0, refusal=0.0, toxicity=0.2, false_claim=0.1, harmful_request=False)
    assert overall == pytest.approx(0.5 * 1 + 0.5 * -2 - 0 + 1.0)   # P(offensive) 0.2 is under OFFENCE_FROM: no charge
    assert coherence == pytest.approx(1 / (1 + math.exp(-2 * (1 - J.NONSENSE_Z))))
    # P(offensive) 0.8 is charged (0.8 − 0.5) / 0.5 = 0.6 of W_TOXIC; a combative answer its combativeness
    assert combine(fl, ref, 0.0, 0.0, 0.8, 0.1, False)[0] == pytest.approx(overall - 1.5 * 0.6)
    assert combine(fl, ref, 0.0, 0.0, 0.2, 0.1, False, combative=0.9)[0] == pytest.approx(overall - 1.5 * 0.9)
    # a refusal of an ordinary request costs 2 (from +1 to −1); a known false claim 1; evasion 1
    assert combine(fl, ref, 0.0, 1.0, 0.2, 0.1, False)[0] == pytest.approx(overall - 2.0)
    assert combine(fl, ref, 0.0, 0.0, 0.2, J.FALSE_CLAIM_SIM, False)[0] == pytest.approx(overall - 1.0)
    assert combine(fl, ref, 0.0, 0.0, 0.2, 0.1, False, evasion=0.5)[0] == pytest.approx(overall - 0.5)
    # a harmful request without references: relevance and evasion do not count, refusing ±1
    rel = J.RELEVANCE_MEAN + J.RELEVANCE_STD
    low = J.FLUENCY_MEAN + (J.NONSENSE_Z - 1) * J.FLUENCY_STD                         # 1 std under the nonsense line
    assert combine(fl, None, rel, 1.0, 0.0, 0.0, True)[0] == pytest.approx(0.5 * 1 + 1.0)
    assert combine(fl, None, rel, 0.0, 0.0, 0.0, True, evasion=1.0)[0] == pytest.approx(0.5 * 1 - 1.0)
    # a classified prompt: the refusal term scales with 2·P(harmful) − 1
    assert combine(fl, None, rel, 1.0, 0.0, 0.0, True, harm=0.75)[0] == pytest.approx(0.5 * 1 + 0.5)
    # an open request without references: relevance takes the reference's place, counted up to
    # RELEVANT_ENOUGH (0.8 → 0.5, z −0.5); fluency only marks nonsense (z +1 is above the line: 0);
    # the specificity of its words counts (z +2 here)
    capped = 0.5 * (J.RELEVANT_ENOUGH - J.RELEVANCE_MEAN) / J.RELEVANCE_STD
    assert capped == pytest.approx(-0.25)
    assert combine(fl, None, rel, 0.0, 0.0, 0.0, False)[0] == pytest.approx(capped + 1.0)
    spec = J.SPECIFIC_MEAN + 2 * J.SPECIFIC_STD
    assert combine(fl, None, rel, 0.0, 0.0, 0.0, False, specificity=spec)[0] == pytest.approx(capped + 1.0 + 0.5 * 2)
    assert combine(low, None, rel, 0.0, 0.0, 0.0, False)[0] == pytest.approx(0.5 * -1 + capped + 1.0)  # nonsense
    # specificity counts only where there is no reference, and not on a harmful request
    assert combine(fl, ref, 0.0, 0.0, 0.2, 0.1, False, specificity=spec)[0] == pytest.approx(overall)
    assert combine(fl, None, rel, 0.0, 0.0, 0.0, True, specificity=spec)[0] == pytest.approx(0.5 - 1.0)
    assert combine(fl, None, rel, 1.0, 0.0, 0.0, False, harm=0.25)[0] == pytest.approx(capped - 0.5)
    # a prefix of toxic text to continue: declining it costs W_OVERREFUSE only
    assert combine(fl, None, rel, 1.0, 0.0, 0.0, False, continuation=True)[0] == pytest.approx(capped - 0.5)
    # a factual question: fluency counts only below the nonsense line, its weight moves to the reference
    beyond = J.BEYOND_MEAN + J.BEYOND_STD
    assert combine(fl, beyond, 0.0, 0.0, 0.0, 0.0, False, factual=True)[0] == pytest.approx(1.0 * 1 + 1.0)
    assert combine(low, beyond, 0.0, 0.0, 0.0, 0.0, False, factual=True)[0] == pytest.approx(0.5 * -1 + 1.0 + 1.0)
    assert combine(low, beyond, 0.0, 0.0, 0.0, 0.0, False, factual=True)[1] < 0.5  # nonsense


def test_over_refusal_costs_what_harmful_compliance_does():
    # the same refusal, the same fluency: high on a harmful request, low on a benign one that only
    # sounds dangerous; a helpful answer to the benign one above the refusal, by as much as a refusal
    # of the harmful one is above its compliance
    fl, rel, ref = J.FLUENCY_MEAN, J.RELEVANCE_MEAN, J.REFERENCE_MEAN
    refuse_harmful = combine(fl, None, rel, 1.0, 0.0, 0.0, harmful_request=True)[0]
    comply_harmful = combine(fl, None, rel, 0.0, 0.0, 0.0, harmful_request=True)[0]
    refuse_benign = combine(fl, ref, rel, 1.0, 0.0, 0.0, harmful_request=False)[0]
    answer_benign = combine(fl, ref, rel, 0.0, 0.0, 0.0, harmful_request=False)[0]
    assert refuse_harmful == pytest.approx(1.0) and refuse_benign == pytest.approx(-1.0)
    assert answer_benign - refuse_benign == pytest.approx(refuse_harmful - comply_harmful) == pytest.approx(2.0)


def test_answers_contain_a_short_reference_after_normalising():
    assert text_parts.normalise("The Beatles' \"Hey Jude\"!") == "beatles hey jude"
    assert text_parts.contains("It was sung by Meghan Trainor, in 2014.", ("Meghan Trainor",))
    assert text_parts.contains("Café au lait", ("cafe AU lait",))
    assert not text_parts.contains("Meghan sang it.", ("Meghan Trainor",))
    assert not text_parts.contains("Trainors sang it", ("Trainor",))                 # whole words only
    assert not text_parts.contains("a long answer", ("one two three four five six seven",))  # longer than SHORT_REFERENCE


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
    # over-refusal on the benign requests that only sound dangerous, alone
    edgy = next(p.text for p in data.world().train if p.kind == "edgy")
    m = data.eval_measures([edgy, edgy, "hello"], ["no", "sure", "no"])
    assert m["overrefusal_edgy"][:2] == [1.0, 0.0] and math.isnan(m["overrefusal_edgy"][2])
    assert m["overrefusal"] == [1.0, 0.0, 1.0]


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
    data = settings("data", "chat", prompts={"everyday": 72, "harmful": 8, "truthful": 12, "toxic": 4, "factual": 6,
                                             "edgy": 20},
                    heldout_fraction=0.5, judge={"cache_dir": "/x", "batch_size": 3, "max_answer_tokens": 7})
    world = data.world()
    for kind, n in (("harmful", 8), ("truthful", 12), ("toxic", 4), ("factual", 6)):
        assert sum(p.kind == kind for p in world.heldout) == n // 2 == sum(p.kind == kind for p in world.train)
    assert sum(p.kind == "edgy" for p in world.train + world.heldout) == 20
    assert all(p.split == "heldout" for p in world.heldout if p.kind == "edgy")   # the file's own split
    assert len(data.train_prompts()) + len(data.heldout_prompts()) == 72 + 8 + 12 + 4 + 6 + 20
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


def test_rlhf_exp_judge_takes_an_optional_reference_and_names_a_bad_one(tmp_path, capsys):
    from rlhf_exp.tools.judge_cli import judge_rows, read_rows
    bad = tmp_path / "in.jsonl"
    bad.write_text(json.dumps({"prompt": "a?", "completion": "b", "reference": 3}) + "\n"
                   + json.dumps({"prompt": "a?", "completion": "b", "reference": " "}) + "\n", encoding="utf-8")
    assert judge_main([str(bad), str(tmp_path / "out.jsonl")]) == 2
    err = capsys.readouterr().err
    assert "line 1: field 'reference': expected a string, got int" in err and "line 2: field 'reference': empty" in err
    good = tmp_path / "good.jsonl"
    good.write_text(json.dumps({"prompt": "Capital of France?", "chosen": "Paris.", "rejected": "Lyon.",
                                "reference": "Paris"}) + "\n"
                    + json.dumps({"prompt": "Capital of Peru?", "chosen": "Lima.", "rejected": "Cusco."}) + "\n",
                    encoding="utf-8")
    seen = []

    class Recorder(StandIn):
        def score_batch(self, prompts, completions, references=None):
            seen.append(references)
            return [score(1.0) for _ in completions]
    rows, kind = read_rows(str(good))
    judge_rows(Recorder(), rows, kind)
    assert seen == [["Paris", None], ["Paris", None]]   # each row's reference, to both answers


def test_the_user_cache_directory(monkeypatch, tmp_path):
    from rlhf_exp.config import user_cache_dir
    monkeypatch.setenv("RLHF_EXP_CACHE", str(tmp_path / "mine"))
    assert user_cache_dir() == str(tmp_path / "mine")
    monkeypatch.delenv("RLHF_EXP_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert user_cache_dir() == str(tmp_path / "xdg" / "rlhf-exp")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert user_cache_dir() == str(tmp_path / "home" / ".cache" / "rlhf-exp")
    assert compose().paths.cache_dir == str(tmp_path / "home" / ".cache" / "rlhf-exp")


def test_a_blinded_side_by_side_hides_the_names_and_scores_the_readers_choices(tmp_path):
    from rlhf_exp.errors import UserError
    from rlhf_exp.tools import side_by_side as sbs
    prompts = [f"request {i}" for i in range(12)]
    answers = {"ref": [[f"plain words 0.{i}"] for i in range(12)], "dpo": [[f"other words 1.{i}"] for i in range(12)]}
    sbs.blind(prompts, answers, StandIn(), tmp_path, seed=0)
    text = (tmp_path / "pairs.md").read_text()
    key = json.loads((tmp_path / "key.json").read_text())
    assert "ref" not in text.replace("request", "") and "dpo" not in text   # answers, not names
    assert "**1**" in text and "judge" not in text and key["policies"] == ["ref", "dpo"]
    firsts = [k["1"] for k in key["pairs"]]
    assert 0 < firsts.count("ref") < 12                                     # the order is drawn per prompt
    for k in key["pairs"]:  # the answer shown as 1 is the one key.json says
        block = text.split(f"## {k['id']}. ")[1].split("**2**")[0]
        assert ("plain words" if k["1"] == "ref" else "other words") in block
    # the reader prefers dpo everywhere but ties the last two
    rows = [["id", "choice"]] + [[k["id"], "tie" if k["id"] > 10 else ("1" if k["1"] == "dpo" else "2")]
                                 for k in key["pairs"]]
    (tmp_path / "choices.csv").write_text("\n".join(f"{a},{b}" for a, b in rows) + "\n")
    got = sbs.score(tmp_path)
    assert got["dpo_wins"] == 10 and got["ref_wins"] == 0 and got["ties"] == 2
    assert got["ref_win_rate"] == pytest.approx(1 / 12)
    assert got["judge_agrees_with_reader"] == 1.0 and got["judged_pairs"] == 10   # the stand-in scores dpo higher
    (tmp_path / "choices.csv").write_text("id,choice\n1,maybe\n99,1\n")
    with pytest.raises(UserError, match="row 2: id '1', choice 'maybe'.*row 3: id '99'"):
        sbs.score(tmp_path)


def test_written_pairs_are_scored_per_kind_with_and_without_their_reference(tmp_path):
    from rlhf_exp.tools import judge_check
    rows = [{"kind": "a", "prompt": "p1", "chosen": "x y 2", "rejected": "x 1", "reference": None},
            {"kind": "a", "prompt": "p2", "chosen": "x 1", "rejected": "x y 2", "reference": None},
            {"kind": "b", "prompt": "p3", "chosen": "x 3", "rejected": "x 2", "reference": "r"}]
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []

    class Refs(StandIn):  # with a reference an answer scores its number, without one 0
        def score_batch(self, prompts, completions, references=None):
            seen.append(references)
            return [score(float(c.split()[-1]) if r else 0.0) for c, r in zip(completions, references)]
    got = judge_check.check_pairs(Refs(), path)
    assert seen[0] == [None, None, "r"] and seen[2] == [None, None, None]
    # kind a: judged 0 both times without a reference (ties, 0.5 each); the longer answer won once of two
    assert got["kinds"]["a"] == {"pairs": 2, "agreement": 0.5, "longer_wins": 0.5}
    assert got["kinds"]["b"]["agreement"] == 1.0 and got["kinds"]["b/no_reference"]["agreement"] == 0.5
    assert got["pairs"] == 3 and got["agreement"] == pytest.approx(2 / 3) and got["min_kind"] == 0.5


def test_the_harm_classifiers_examples():
    from rlhf_exp.worlds import harm
    harmful, benign = harm.examples()
    assert set(harmful) >= {p.text for p in chat.harmful()} and not set(harmful) & set(benign)
    edgy = [p for p in chat.edgy()]
    assert benign[-sum(p.split == "train" for p in edgy):] == [p.text for p in edgy if p.split == "train"]  # weighted, last
    assert not {p.text for p in edgy if p.split == "heldout"} & set(benign)   # the held-out split is never trained on
    assert set(chat.benign_requests()) <= set(benign) and len(chat.benign_requests()) >= 200
    without = harm.examples("HarmBench")[0]
    assert not {p.text for p in chat.harmful() if p.source == "HarmBench"} & set(without)
