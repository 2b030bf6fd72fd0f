"""Preferences per person: labelers of different tastes in the synthetic world, groups found by
`prepare`, a reward model conditioned on the person, a policy aligned for one."""
import json
import random

import pytest
import torch

from rlhf_exp.feedback.consensus import pairwise_agreement, prepare_pairs
from rlhf_exp.feedback.formats import Feedback, Pair, RankedSet
from rlhf_exp.feedback.persons import (accuracy_by_person, condition_pairs, conditioned, find_groups, one_persons_pairs,
                                       person_comparison_groups, split_condition)
from rlhf_exp.feedback.prompts import Conversation
from rlhf_exp.worlds.gold import GoldScore, GoldScorer, taste_gold
from rlhf_exp.worlds.labelers import SimulatedLabeler
from rlhf_exp.worlds.synthetic_data import SyntheticData

DATA = dict(seed=0, heldout_fraction=0.2, sets_per_prompt=2, n_completions=4, n_labelers=6,
            labelers_per_set=4, poor_labelers=2, poor_mode="mixed", noise=0.15, tie_rate=0.05,
            flag_rate=0.9, thumbs_noise=0.0)


# -- the world's tastes ----------------------------------------------------------------------------

# one prompt, a brief answer and a thorough one: the two tastes order them differently
JOKE = "Tell me a knock-knock joke."
SHORT = "Knock knock. Who's there? Boo. Boo who? Don't cry, it's only a joke!"
LONG = ("Knock knock. Who's there? Lettuce. Lettuce who? Lettuce in, it's cold out here! Knock knock. "
        "Who's there? Boo. Boo who? Don't cry, it's only a joke! Knock knock. Who's there? Orange. "
        "Orange who? Orange you glad I told a joke?")


def test_a_groups_gold_by_hand():
    g = GoldScore(helpfulness=0.8, honesty=1, harmlessness=1, toxicity=0, coherence=1, overall=0.5, n_words=45)
    # clip((45 − 30) / 30) = 0.5; thorough + 1.5 · 0.8 · 0.5, brief − the same
    assert taste_gold(g, "thorough", 1.5, 30) == pytest.approx(0.5 + 0.6)
    assert taste_gold(g, "brief", 1.5, 30) == pytest.approx(0.5 - 0.6)
    assert taste_gold(g, None, 1.5, 30) == 0.5
    long = GoldScore(1.0, 1, 1, 0, 1, 1.0, n_words=200)  # clipped at 1
    assert taste_gold(long, "brief", 1.0, 30) == pytest.approx(0.0)
    assert taste_gold(GoldScore(1.0, 1, 1, 0, 1, 1.0, n_words=12), "brief", 1.0, 20) == pytest.approx(1.4)
    with pytest.raises(ValueError, match="unknown taste 'terse'"):
        taste_gold(g, "terse", 1.0, 30)


def test_a_completions_gold_per_group_from_the_scorer_by_hand():
    data = SyntheticData(**DATA, tastes=("brief", "thorough"), taste_weight=0.8, taste_length=25)
    prompt = "Tell me a knock-knock joke."
    text = ("Knock knock. Who's there? Lettuce. Lettuce who? Lettuce in, it's cold out here! Knock knock. "
            "Who's there? Boo. Boo who? Don't cry, it's only a joke! Knock knock. Who's there? Orange. "
            "Orange who? Orange you glad I told a joke?")
    s = GoldScorer().score(prompt, text)
    assert s.n_words == 40
    term = 0.8 * s.helpfulness * (40 - 25) / 25
    m = data.eval_measures([prompt], [text])
    assert m["gold"] == [s.overall]
    assert m["gold_thorough"][0] == pytest.approx(s.overall + term)
    assert m["gold_brief"][0] == pytest.approx(s.overall - term)
    assert set(SyntheticData(**DATA).eval_measures([prompt], [text])) == {"gold", "toxicity"}  # tastes off


def test_labelers_take_the_tastes_in_turn_and_the_poor_have_none():
    data = SyntheticData(**DATA, tastes=("brief", "thorough"))
    labs = data.labelers()
    good = [lab for lab in labs if lab.kind == "good"]
    assert [lab.taste for lab in good] == ["brief", "thorough", "brief", "thorough"]  # in id order
    assert all(lab.taste is None for lab in labs if lab.kind != "good")
    assert data.labeler_groups() == {lab.id: lab.taste for lab in good}
    assert [(lab.id, lab.kind) for lab in labs] == [(lab.id, lab.kind) for lab in SyntheticData(**DATA).labelers()]
    assert SyntheticData(**DATA).labeler_groups() == {}


def test_the_groups_rank_the_same_completions_differently():
    data = SyntheticData(**DATA, tastes=("brief", "thorough"))
    prompt, short, long = JOKE, SHORT, LONG
    scores = data.gold_scores([(prompt, [short, long])])[0]
    ranks = {}
    for taste in ("brief", "thorough", None):
        lab = SimulatedLabeler("L01", "good", 0.0, 0.0, 0.0, taste)
        ranks[taste] = lab.rank(scores, random.Random(0), data.taste_values(scores, taste))
    assert ranks["brief"] == [1, 2] and ranks["thorough"] == [2, 1]
    assert ranks[None] == [1, 2]  # overall: the long one is a little less fluent


def test_the_world_with_tastes_ranks_by_each_labelers_taste():
    plain, tasted = SyntheticData(**DATA).load(), SyntheticData(**DATA, tastes=("brief", "thorough")).load()
    a, b = plain.feedback.records, tasted.feedback.records
    assert [(s.prompt, s.completions, sorted(s.rankings)) for s in a] == \
        [(s.prompt, s.completions, sorted(s.rankings)) for s in b]  # the same sets and labelers
    assert any(s.rankings != t.rankings for s, t in zip(a, b))
    weightless = SyntheticData(**DATA, tastes=("brief", "thorough"), taste_weight=0.0).load().feedback.records
    assert [s.rankings for s in weightless] == [s.rankings for s in a]  # weight 0: the world as it was


# -- conditions ------------------------------------------------------------------------------------

def test_a_condition_is_a_prefix_read_back_and_ignored_by_the_gold():
    assert conditioned("How do I boil an egg?", "G1") == "[G1] How do I boil an egg?"
    assert conditioned("How do I boil an egg?", None) == "How do I boil an egg?"
    assert split_condition("[L03] How do I boil an egg?") == ("L03", "How do I boil an egg?")
    assert split_condition("How do I boil an egg?") == (None, "How do I boil an egg?")
    conv = Conversation((("system", "be kind"), ("user", "hi")))
    assert conditioned(conv, "G2").turns == (("system", "be kind"), ("user", "[G2] hi"))
    with pytest.raises(ValueError, match="expected letters"):
        conditioned("p", "two words")
    data = SyntheticData(**DATA, condition="G1")
    plain = SyntheticData(**DATA)
    assert data.train_prompts() == ["[G1] " + p for p in plain.train_prompts()]
    assert data.heldout_prompts() == ["[G1] " + p for p in plain.heldout_prompts()]
    text = "Put the egg in boiling water for nine minutes, then cool it in cold water."
    assert data.gold_scores([(data.heldout_prompts()[0], [text])]) == plain.gold_scores([(plain.heldout_prompts()[0], [text])])


# -- prepare: groups from the labels ---------------------------------------------------------------

T1, T2 = [1, 2, 3, 4], [2, 1, 3, 4]   # two tastes: they swap the top two (tau 2/3 between them)
POOR = [[4, 3, 2, 1], [3, 4, 1, 2], [1, 4, 3, 2], [4, 1, 3, 2]]


def hand_feedback() -> Feedback:
    """A, B and E of one taste; C and D of another; P misread the instructions."""
    return Feedback("ranked", [RankedSet(f"p{i}", ["w", "x", "y", "z"],
                                         {"A": T1, "B": T1, "E": T1, "C": T2, "D": T2, "P": POOR[i]}, i)
                               for i in range(4)])


def test_prepare_sets_aside_the_poor_labeler_and_keeps_the_different_taste():
    fb = hand_feedback()
    # without groups, a strict min_agreement sets aside the minority taste with the poor labeler
    # (C's and D's agreement with the others' consensus is 0.75, A's 0.83)
    old = prepare_pairs(fb, 0.8, 0.5)
    assert {k for k, st in old.labelers.items() if st.set_aside} == {"C", "D", "P"}
    p = prepare_pairs(fb, 0.8, 0.5, "group", find_groups=True, group_agreement=0.5, group_gap=0.1)
    assert {k for k, st in p.labelers.items() if st.set_aside} == {"P"}
    assert "consistent with nobody" in p.labelers["P"].reason and "group G2" in p.labelers["C"].reason
    assert p.groups.members == {"G1": ["A", "B", "E"], "G2": ["C", "D"]}
    assert p.groups.within == {"G1": 1.0, "G2": 1.0}
    assert p.groups.between["G1"]["G2"] == pytest.approx(2 / 3)  # (5 − 1) / 6
    assert p.group_of == {"A": "G1", "B": "G1", "E": "G1", "C": "G2", "D": "G2"}
    # one consensus per group: each set gives both groups' 6 pairs, each pair with its group
    by_group = {g: [(x.prompt, x.chosen, x.rejected) for x in p.pairs if x.extra["group"] == g] for g in ("G1", "G2")}
    assert len(by_group["G1"]) == len(by_group["G2"]) == 24 and len(p.pairs) == 48
    assert ("p0", "w", "x") in by_group["G1"] and ("p0", "x", "w") in by_group["G2"]
    assert all(x.agreement == 1.0 for x in p.pairs)
    per_labeler = prepare_pairs(fb, 0.8, 0.5, "labeler", find_groups=True)
    assert {(x.extra["labeler"], x.extra["group"]) for x in per_labeler.pairs} == \
        {("A", "G1"), ("B", "G1"), ("E", "G1"), ("C", "G2"), ("D", "G2")}


def test_groups_join_above_the_agreement_unless_they_agree_less_than_within_by_the_gap():
    labs, tau, count = pairwise_agreement(hand_feedback().records)
    assert find_groups(labs, tau, count, 0.5, 0.5).members == {"G1": ["A", "B", "C", "D", "E"]}  # gap 1/3 < 0.5
    assert find_groups(labs, tau, count, 0.5, 0.1).members == {"G1": ["A", "B", "E"], "G2": ["C", "D"]}
    assert find_groups(labs, tau, count, 0.7, 0.5).members == {"G1": ["A", "B", "E"], "G2": ["C", "D"]}  # 2/3 < 0.7
    assert find_groups(labs, tau, count, 1.01, 0.5).members == {}


def test_prepare_finds_the_worlds_taste_groups():
    data = SyntheticData(**{**DATA, "sets_per_prompt": 4}, tastes=("brief", "thorough"))
    p = prepare_pairs(data.load().feedback, 0.2, 0.5, "group", find_groups=True, group_agreement=0.5, group_gap=0.1)
    truth = data.labeler_groups()
    assert sorted(map(sorted, p.groups.members.values())) == \
        sorted(sorted(lab for lab, t in truth.items() if t == taste) for taste in ("brief", "thorough"))
    poor = {lab for lab, kind in data.labeler_kinds().items() if kind != "good"}
    assert {k for k, st in p.labelers.items() if st.set_aside} == poor
    (g1, g2), = [tuple(p.groups.members)]
    assert p.groups.between[g1][g2] < min(p.groups.within.values()) - 0.1


def test_the_printed_groups_show_within_between_and_warn_of_a_contrary_group():
    from rlhf_exp.stages.prepare import format_groups, labelers_report
    p = prepare_pairs(hand_feedback(), 0.8, 0.5, "group", find_groups=True)
    report = labelers_report(p, None, 0.8, {"A": "brief", "B": "brief", "E": "brief", "C": "thorough", "D": "thorough"})
    text = format_groups(report)
    assert "G1: A, B, E  agreement within +1.000  simulated taste: brief" in text
    assert "between G1 and G2: +0.667" in text and "are the world's taste groups" in text and "warning" not in text
    assert report["labelers"]["P"]["group"] is None and report["labelers"]["C"]["group"] == "G2"
    inverted = Feedback("ranked", [RankedSet(f"p{i}", ["w", "x", "y", "z"],
                                             {"A": T1, "B": T1, "E": T1, "C": T1[::-1], "D": T1[::-1]}, i) for i in range(4)])
    contrary = labelers_report(prepare_pairs(inverted, -1.0, 0.5, find_groups=True), None, -1.0)
    assert "warning: G2 agrees negatively with every other group" in format_groups(contrary)


def test_prepares_group_settings_reach_the_clustering(tmp_path, monkeypatch):
    import rlhf_exp.feedback.persons as persons
    from rlhf_exp.stages import prepare
    from tests.test_knobs import spy, stage_context
    found = spy(monkeypatch, persons, "find_groups")
    ctx = stage_context(tmp_path, "data.tastes=[brief,thorough]", "prepare.find_groups=true", "prepare.pairs_from=group",
                        "prepare.group_agreement=0.37", "prepare.group_gap=0.23")
    prepare.run(ctx)
    assert found.values("threshold") == [0.37] and found.values("gap") == [0.23]
    report = json.loads((tmp_path / "labelers.json").read_text())
    assert (report["group_agreement"], report["group_gap"]) == (0.37, 0.23)
    pairs = [json.loads(line) for line in (tmp_path / "pairs.jsonl").read_text().splitlines()]
    kept_groups = {v["group"] for v in report["labelers"].values() if not v["set_aside"]}
    assert pairs and {p["group"] for p in pairs} == kept_groups
    ctx = stage_context(tmp_path, "data.tastes=[brief,thorough]")  # off: no clustering, no groups
    prepare.run(ctx)
    assert len(found.calls) == 1 and "groups" not in json.loads((tmp_path / "labelers.json").read_text())


# -- the conditioned reward model ------------------------------------------------------------------

def group_pairs():
    return [Pair(f"prompt {i}", "good", "bad", set_id=i, extra={"group": g})
            for i in range(6) for g in ("G1", "G2")]


def test_condition_pairs_prefixes_the_prompt_and_names_the_file_when_a_field_is_missing(tmp_path):
    from rlhf_exp.files import FileError
    out = condition_pairs(group_pairs(), "group", tmp_path / "pairs.jsonl")
    assert out[0].prompt == "[G1] prompt 0" and out[1].prompt == "[G2] prompt 0"
    assert out[0].extra["split_prompt"] == "prompt 0"
    with pytest.raises(FileError, match=r"pairs\.jsonl: \d+ bad line\(s\)(.|\n)*line 1: field 'labeler': missing(.|\n)*pairs_from=labeler"):
        condition_pairs(group_pairs(), "labeler", tmp_path / "pairs.jsonl")


def test_one_persons_pairs_are_their_groups_or_labelers_and_a_stranger_is_refused_with_the_persons_named(tmp_path):
    from rlhf_exp.files import FileError
    pairs = group_pairs() + [Pair("prompt 9", "good", "bad", set_id=9, extra={"group": "G2", "labeler": "L05"})]
    assert [(p.set_id, p.extra["group"]) for p in one_persons_pairs(pairs, "G1", "pairs.jsonl")] == [(i, "G1") for i in range(6)]
    assert [p.set_id for p in one_persons_pairs(pairs, "L05", "pairs.jsonl")] == [9]
    with pytest.raises(FileError, match=r"pairs\.jsonl: 1 bad field(.|\n)*person = 'G3'(.|\n)*groups G1, G2; labelers L05"):
        one_persons_pairs(pairs, "G3", tmp_path / "pairs.jsonl")
    with pytest.raises(FileError, match="no pair has a 'labeler' or 'group' field"):
        one_persons_pairs([Pair("p", "a", "b")], "G1", "pairs.jsonl")


def test_persons_pairs_keep_apart_and_split_by_the_unconditioned_prompt():
    from rlhf_exp.modules.data import split_by_prompt
    pairs = condition_pairs(group_pairs(), "group", "pairs.jsonl")
    groups = person_comparison_groups(pairs, "group")
    assert len(groups) == 12 and all(len(g["pairs"]) == 1 for g in groups)
    unconditioned = person_comparison_groups(group_pairs(), "group")
    assert len(unconditioned) == 12  # the same steps with and without the condition
    train, val = split_by_prompt(groups, 0.34, 0)
    assert {g["split_prompt"] for g in train}.isdisjoint({g["split_prompt"] for g in val})
    assert len(val) == 4  # both groups of each of two prompts
    assert [g["split_prompt"] for g in split_by_prompt(unconditioned, 0.34, 0)[1]] == [g["split_prompt"] for g in val]


def test_accuracy_by_person_by_hand():
    pairs = [Pair("p", "a", "b", extra={"group": "G1", "labeler": "L01"}),
             Pair("p", "b", "a", extra={"group": "G2", "labeler": "L02"}),
             Pair("q", "c", "d", extra={"group": "G1", "labeler": "L03"})]
    scores = {"a": 1.0, "b": 0.0, "c": 0.0, "d": 2.0}
    acc = accuracy_by_person(lambda ps, cs: torch.tensor([scores[c] for c in cs]), pairs)
    assert acc == {"group_G1": (0.5, 2), "group_G2": (0.0, 1), "labeler_L01": (1.0, 1), "labeler_L02": (0.0, 1),
                   "labeler_L03": (0.0, 1), "contested_group_G1": (1.0, 1), "contested_group_G2": (0.0, 1)}


def test_gold_accuracy_per_taste_scores_under_each_condition_against_each_tastes_gold():
    from rlhf_exp.stages.reward_model import gold_accuracy_per_taste
    data = SyntheticData(**DATA, tastes=("brief", "thorough"))
    prompt, short, long = JOKE, SHORT, LONG
    seen = []

    def shorter_is_better(prompts, completions):  # a reward model that likes brief answers
        seen.extend(prompts)
        return torch.tensor([-float(len(c)) for c in completions])
    acc = gold_accuracy_per_taste(shorter_is_better, [(prompt, [short, long])], data, ["G1", "G2"])
    assert acc == {"reward/gold/accuracy_G1_brief": 1.0, "reward/gold/accuracy_G1_thorough": 0.0,
                   "reward/gold/accuracy_G2_brief": 1.0, "reward/gold/accuracy_G2_thorough": 0.0}
    assert set(seen) == {"[G1] " + prompt, "[G2] " + prompt}
    assert set(gold_accuracy_per_taste(shorter_is_better, [(prompt, [short, long])], data, None)) == \
        {"reward/gold/accuracy_brief", "reward/gold/accuracy_thorough"}
    assert gold_accuracy_per_taste(shorter_is_better, [(prompt, [short, long])], SyntheticData(**DATA), None) == {}


def test_the_conditioned_reward_model_reads_the_condition_in_its_input(tmp_path, monkeypatch):
    """condition_on reaches the tokenized input: the stage's data module's batches decode to
    "[G1] prompt …" (condition_on=group) and to the plain prompt (none)."""
    from rlhf_exp.stages import reward_model
    from rlhf_exp.stages.context import StageContext
    from tests.test_knobs import stage_context

    class Stop(Exception):
        pass

    seen = {}

    class Trainer:
        def fit(self, module, datamodule=None, **kw):
            seen["dm"] = datamodule
            raise Stop

    monkeypatch.setattr(StageContext, "trainer", lambda self, name, **kw: Trainer())
    path = tmp_path / "pairs.jsonl"
    path.write_text("".join(json.dumps(p.to_json()) + "\n" for p in group_pairs()))
    decoded = {}
    for cond in ("group", "none"):
        ctx = stage_context(tmp_path, f"reward_model.pairs={path}", f"reward_model.condition_on={cond}")
        with pytest.raises(Stop):
            reward_model.run(ctx)
        tok = ctx.built.model.tokenizer()
        dm = seen["dm"]
        batch = dm.collate(dm.train_rows)
        decoded[cond] = tok.batch_decode(batch["input_ids"], skip_special_tokens=True)
    assert any(t.startswith("[G1] prompt") for t in decoded["group"])
    assert any(t.startswith("[G2] prompt") for t in decoded["group"])
    assert all(t.startswith("prompt") for t in decoded["none"])
    ctx = stage_context(tmp_path, f"reward_model.pairs={path}", "reward_model.condition_on=labeler")
    from rlhf_exp.files import FileError
    with pytest.raises(FileError, match="field 'labeler': missing"):
        reward_model.run(ctx)
    ctx = stage_context(tmp_path, f"reward_model.pairs={path}", "reward_model.person=G2")  # one person's: theirs alone
    with pytest.raises(Stop):
        reward_model.run(ctx)
    rows = [p for g in seen["dm"].train_rows + seen["dm"].val_rows for p in g["pairs"]]
    assert len(rows) == 6 and {p.extra["group"] for p in rows} == {"G2"} and rows[0].prompt == "prompt 0"


# -- settings: refused when composed ---------------------------------------------------------------

def test_bad_person_settings_are_refused_with_the_file_named():
    from rlhf_exp.config import ConfigError
    from rlhf_exp.stages.checks import validate_config
    from tests.conftest import compose
    for overrides, message in [(["prepare.pairs_from=group"], r"(?s)conf/prepare/default\.yaml.*find_groups=true"),
                               (["data.condition='a b'"], r"(?s)conf/data/synthetic\.yaml.*condition"),
                               (["data.tastes=[terse]"], r"(?s)conf/data/synthetic\.yaml.*tastes"),
                               (["reward_model.condition_on=person"], r"(?s)conf/reward_model/default\.yaml.*condition_on"),
                               (["reward_model.person=G1", "reward_model.condition_on=group"],
                                r"(?s)conf/reward_model/default\.yaml.*expected one of them")]:
        cfg = compose("logger=none", *overrides)
        with pytest.raises(ConfigError, match=message):
            validate_config(cfg, {"prepare": "default", "data": "synthetic", "reward_model": "default"})


# -- end to end ------------------------------------------------------------------------------------

@pytest.mark.e2e
def test_groups_a_conditioned_reward_model_and_a_policy_for_a_group(cli, tmp_path):
    """prepare finds the groups and writes one consensus per group; the reward model is conditioned
    on the group and reports held-out accuracy per group; the policy is aligned and evaluated with
    "[G1] " in its prompts, and eval reports each taste's gold."""
    from mlflow.tracking import MlflowClient
    proc = cli("experiment=smoke", "stage=[prepare,reward_model,align,eval]", "data.tastes=[brief,thorough]",
               "data.n_labelers=5", "prepare.min_agreement=0.2", "prepare.find_groups=true",
               "prepare.pairs_from=group", "reward_model.condition_on=group", "data.condition=G1",
               "algorithm.max_steps=1")
    run_dir = tmp_path / "outputs/run"
    report = json.loads((run_dir / "labelers.json").read_text())
    assert report["groups"] and "between" in report and "groups_match_world" in report
    poor = {k for k, v in report["labelers"].items() if v["simulated_kind"] != "good"}
    assert poor and all(report["labelers"][k]["set_aside"] for k in poor)
    assert all(not v["set_aside"] and v["group"] for k, v in report["labelers"].items() if k not in poor)
    pairs = [json.loads(line) for line in (run_dir / "pairs.jsonl").read_text().splitlines()]
    assert {p["group"] for p in pairs} == {v["group"] for k, v in report["labelers"].items() if k not in poor}
    assert "groups (mean Kendall tau" in proc.stdout and "simulated taste" in proc.stdout

    from transformers import AutoConfig
    config = AutoConfig.from_pretrained(run_dir / "reward_model")
    assert config.condition_on == "group" and "G1" in config.conditions
    assert "[G1] " in (run_dir / "eval_samples.md").read_text()

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    metrics = {r.data.tags["stage"]: r.data.metrics for r in runs}
    assert metrics["prepare"]["prepare/groups/count"] >= 1
    assert any(k.startswith("reward/val/accuracy_group_G") for k in metrics["reward_model"])
    assert {"reward/gold/accuracy_G1_brief", "reward/gold/accuracy_G1_thorough"} <= set(metrics["reward_model"])
    assert {"eval/gold_brief/policy", "eval/gold_thorough/policy", "eval/gold/policy"} <= set(metrics["eval"])
