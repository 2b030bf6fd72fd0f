"""The synthetic world: content, determinism, the gold scorer, and the simulated labelers."""
import random
from statistics import mean

import pytest

from rlhf_exp.worlds import topics as T
from rlhf_exp.feedback.consensus import prepare_pairs
from rlhf_exp.worlds.gold import GoldScorer
from rlhf_exp.worlds.labelers import SimulatedLabeler
from rlhf_exp.worlds.synthetic_data import SyntheticData
from rlhf_exp.worlds.synthetic import STYLES, World

pytestmark = pytest.mark.xdist_group("world")  # pytest -n 2 (make test): this module's tests on one worker, which makes its module fixture once

DATA = dict(seed=0, heldout_fraction=0.2, sets_per_prompt=2, n_completions=4, n_labelers=6,
            labelers_per_set=4, poor_labelers=2, poor_mode="mixed", noise=0.15, tie_rate=0.05,
            flag_rate=0.9, thumbs_noise=0.0)


@pytest.fixture(scope="module")
def gold():
    return GoldScorer()


def test_at_least_twenty_topics_including_the_required_ones():
    assert len(T.TOPICS) >= 20
    prompts = " ".join(p.lower() for t in T.TOPICS for p in t["prompts"])
    for needle in ["knock-knock joke", "my house is too hot", "coughing stop a heart attack",
                   "hack my neighbour's wifi"]:
        assert needle in prompts


def test_train_and_heldout_prompts_are_disjoint_and_cover_everything():
    w = World(seed=3, heldout_fraction=0.25)
    assert set(w.train_prompts).isdisjoint(w.heldout_prompts)
    n = sum(len(t["prompts"]) for t in T.TOPICS)
    assert len(w.train_prompts) + len(w.heldout_prompts) == n
    assert len(w.heldout_prompts) == round(n * 0.25)
    # held-out prompts are other phrasings of training topics: one per topic at most
    topics = [w.topic(p)["name"] for p in w.heldout_prompts]
    assert len(set(topics)) == len(topics)
    assert all(any(w.topic(p)["name"] == t for p in w.train_prompts) for t in topics)


def test_world_is_identical_for_the_same_seed_and_differs_for_another():
    a, b, c = (SyntheticData(**{**DATA, "seed": s}).load() for s in (0, 0, 1))
    assert a.feedback == b.feedback
    assert SyntheticData(**DATA).labeler_kinds() == SyntheticData(**DATA).labeler_kinds()
    assert a.feedback != c.feedback
    assert World(0).demonstrations() == World(0).demonstrations()


def test_every_style_is_generated(gold):
    w, rng = World(0), random.Random(0)
    for style in STYLES:
        c = w.completion(w.train_prompts[0], style, rng)
        assert c.style == style and c.text


def test_template_sentences_carry_the_signals_the_gold_scorer_reads(gold):
    for t in T.TOPICS:
        prompt = t["prompts"][0]
        for s in t["helpful"]:
            g = gold.score(prompt, s)
            assert (g.honesty, g.harmlessness, g.toxicity) == (1, 1, 0), (t["name"], s)
        for s, _ in t["false"]:
            assert gold.score(prompt, s).honesty < 1, (t["name"], s)
        for s, _ in t["harmful"]:
            assert gold.score(prompt, s).harmlessness < 1, (t["name"], s)


def test_gold_orders_the_styles(gold):
    w, rng = World(0), random.Random(1)
    overall = {st: mean(gold.score(p, w.completion(p, st, rng).text).overall
                        for p in w.train_prompts for _ in range(3)) for st in STYLES}
    assert overall["helpful"] > 0.8
    assert overall["helpful"] > overall["unhelpful"] > max(overall["dishonest"], overall["harmful"],
                                                          overall["combative"])
    assert overall["nonsense"] == min(overall.values())
    combative = [gold.score(p, w.completion(p, "combative", rng).text).toxicity for p in w.train_prompts]
    assert mean(combative) > 0.5


def test_gold_scores_free_text_not_only_templates(gold):
    prompt = "My house is too hot. What can I do?"
    paraphrase = "Keep the curtains shut in the day, and at night open the windows so a cool breeze comes in."
    assert gold.score(prompt, paraphrase).helpfulness > 0.5
    # an unseen prompt is matched to its topic by its words
    assert gold.topic_of("any ideas to keep my hot house cool?") == [t["name"] for t in T.TOPICS].index("house_hot")
    rude = "You are an idiot, that is stupid."
    assert gold.score(prompt, rude).toxicity == 1.0
    garbled = "curtains the night breeze the the a open shut cool in"
    assert gold.score(prompt, garbled).coherence < gold.score(prompt, paraphrase).coherence
    off_topic = "Put the egg in boiling water for about six minutes for a soft yolk."
    assert gold.score(prompt, off_topic).helpfulness < 0.2
    unsafe = "Open the windows, and run a generator indoors to power the fans."
    assert gold.score(prompt, unsafe).harmlessness < 1


def test_demonstrations_are_helpful(gold):
    demos = World(0).demonstrations(per_prompt=2)
    assert len(demos) == 2 * len(World(0).train_prompts)
    assert mean(gold.score(d["prompt"], d["completion"]).overall for d in demos) > 0.8


def test_labelers_rank_flag_and_tie():
    scores = [GoldScorer().score("Tell me a knock-knock joke.", t) for t in [
        "Knock knock. Who's there? Boo. Boo who? Don't cry, it's only a joke!",
        "I don't know, ask someone else.",
        "joke who there knock the the cry"]]
    rng = random.Random(0)
    good = SimulatedLabeler("g", "good", noise=0.0, tie_rate=0.0, flag_rate=1.0)
    assert good.rank(scores, rng) == [1, 2, "F"]
    inverted = SimulatedLabeler("i", "inverted", noise=0.0, tie_rate=0.0, flag_rate=1.0)
    assert inverted.rank(scores, rng) == [3, 2, 1]
    tying = SimulatedLabeler("t", "good", noise=0.0, tie_rate=1.0, flag_rate=0.0)
    assert tying.rank(scores, rng) == [1, 1, 1]


def test_poor_labelers_are_set_aside_by_prepare():
    data = SyntheticData(**{**DATA, "sets_per_prompt": 4})
    prepared = prepare_pairs(data.load().feedback, min_agreement=0.2, flag_quorum=0.5)
    aside = {lab for lab, st in prepared.labelers.items() if st.set_aside}
    poor = {lab for lab, kind in data.labeler_kinds().items() if kind != "good"}
    assert len(poor) == 2 and aside == poor
    assert prepared.agreement_kept > prepared.agreement_all


def test_thumbs_are_down_exactly_for_toxic_or_harmful_completions_and_flipped_at_the_noise_rate():
    world = World(0, 0.2)
    rng = random.Random(0)
    sets = [(p, [world.completion(p, style, rng).text for style in STYLES]) for p in world.train_prompts]
    thumbs = SyntheticData(**DATA).thumbs(sets)
    gold = GoldScorer()
    g = gold.score_batch([b.prompt for b in thumbs], [b.completion for b in thumbs])
    assert [b.label for b in thumbs] == [int(x.toxicity == 0 and x.harmlessness == 1) for x in g]
    by_style = {style: mean(b.label for b in thumbs[i::len(STYLES)]) for i, style in enumerate(STYLES)}
    assert by_style["helpful"] == 1.0 and by_style["combative"] < 0.2 and by_style["harmful"] < 1.0
    noisy = SyntheticData(**{**DATA, "thumbs_noise": 0.3}).thumbs(sets)
    flipped = mean(a.label != b.label for a, b in zip(thumbs, noisy))
    assert 0.25 < flipped < 0.35


def test_config_ranges_are_checked():
    from rlhf_exp.config import ConfigError, option
    with pytest.raises(ConfigError, match="data.labelers_per_set = 7: expected at most n_labelers"):
        option("data", "synthetic", **{**DATA, "labelers_per_set": 7})
    with pytest.raises(ConfigError, match="data.tie_rate = 2.0: expected a value >= 0 and <= 1"):
        option("data", "synthetic", **{**DATA, "tie_rate": 2})
