"""Labelers set aside, consensus, flags, ties, and every input kind turned into pairs."""
import pytest

from rlhf_exp.feedback.consensus import agreement_series, pairwise_agreement, prepare_pairs
from rlhf_exp.feedback.report import plot_matrix, plot_over_time, rolling_mean
from rlhf_exp.feedback.formats import Binary, Feedback, Pair, RankedSet


def pairs_of(prepared):
    return [(p.chosen, p.rejected) for p in prepared.pairs]


def test_lecture_example():
    """Two labelers rank [A, B, C] as 2, 1, 3; a third as 1, 3, 2. The third is set aside."""
    s = RankedSet("prompt", ["A", "B", "C"], {"ann": [2, 1, 3], "bob": [2, 1, 3], "eve": [1, 3, 2]})
    prepared = prepare_pairs(Feedback("ranked", [s]), min_agreement=0.2, flag_quorum=0.5)
    assert prepared.labelers["eve"].set_aside
    assert not prepared.labelers["ann"].set_aside and not prepared.labelers["bob"].set_aside
    assert prepared.labelers["ann"].agreement == pytest.approx(1 / 3)
    assert prepared.labelers["eve"].agreement == pytest.approx(-1 / 3)
    assert pairs_of(prepared) == [("B", "A"), ("B", "C"), ("A", "C")]
    assert all(p.agreement == 1.0 for p in prepared.pairs)
    assert prepared.agreement_all == pytest.approx(1 / 3)
    assert prepared.agreement_kept == pytest.approx(1.0)


def test_ties_yield_no_pair():
    s = RankedSet("p", ["A", "B", "C"], {"ann": [1, 1, 2], "bob": [1, 1, 2]})
    prepared = prepare_pairs(Feedback("ranked", [s]), 0.0, 0.5)
    assert pairs_of(prepared) == [("A", "C"), ("B", "C")]
    assert prepared.dropped["ties"] == 1


def test_equal_mean_ranks_are_a_tie():
    s = RankedSet("p", ["A", "B"], {"ann": [1, 2], "bob": [2, 1]})
    prepared = prepare_pairs(Feedback("ranked", [s]), -1.0, 0.5)
    assert prepared.pairs == [] and prepared.dropped["ties"] == 1


def test_completion_flagged_by_most_labelers_is_removed():
    s = RankedSet("p", ["A", "B", "junk"], {"a": [1, 2, "F"], "b": [2, 1, "F"], "c": [1, 3, 2]})
    prepared = prepare_pairs(Feedback("ranked", [s]), -1.0, 0.5)
    assert all("junk" not in pair for pair in pairs_of(prepared))
    assert prepared.dropped["flagged"] == 1


def test_flag_by_a_minority_counts_as_last():
    # one labeler of three flags C: it stays, ranked below the others ("F" = n + 1)
    s = RankedSet("p", ["A", "B", "C"], {"a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2, "F"]})
    prepared = prepare_pairs(Feedback("ranked", [s]), -1.0, 0.5)
    assert pairs_of(prepared) == [("A", "B"), ("A", "C"), ("B", "C")]


def test_per_labeler_pairs():
    s = RankedSet("p", ["A", "B"], {"a": [1, 2], "b": [2, 1], "c": [1, 2]})
    prepared = prepare_pairs(Feedback("ranked", [s]), -1.0, 0.5, pairs_from="labeler")
    # a and c agree: their identical pair is a duplicate; b's reversed pair stays
    assert pairs_of(prepared) == [("A", "B"), ("B", "A")]
    assert [p.extra["labeler"] for p in prepared.pairs] == ["a", "b"]
    assert prepared.dropped["duplicates"] == 1


def test_binary_feedback_pairs_up_and_down_of_the_same_prompt():
    recs = [Binary("p", "good", 1), Binary("p", "bad", 0), Binary("p", "worse", 0),
            Binary("q", "only up", 1)]
    prepared = prepare_pairs(Feedback("binary", recs), 0.0, 0.5)
    assert pairs_of(prepared) == [("good", "bad"), ("good", "worse")]
    assert prepared.dropped["one_sided_prompts"] == 1


def test_pairwise_records_pass_through_and_duplicates_go():
    recs = [Pair("p", "a", "b", margin=1.5), Pair("p", "a", "b", margin=1.5),
            Pair("p", "c", "c")]
    prepared = prepare_pairs(Feedback("pairwise", recs), 0.0, 0.5)
    assert [p.to_json() for p in prepared.pairs] == [
        {"prompt": "p", "chosen": "a", "rejected": "b", "margin": 1.5}]
    assert prepared.dropped == {"duplicates": 1, "identical": 1}


def test_sets_only_ranked_by_labelers_set_aside_are_dropped():
    good = RankedSet("p", ["A", "B", "C"], {"a": [1, 2, 3], "b": [1, 2, 3], "z": [3, 2, 1]})
    only_z = RankedSet("q", ["A", "B"], {"z": [1, 2]})
    unlabeled = RankedSet("r", ["A", "B"], {})
    prepared = prepare_pairs(Feedback("ranked", [good, only_z, unlabeled]), 0.2, 0.5)
    assert prepared.labelers["z"].set_aside
    assert {p.prompt for p in prepared.pairs} == {"p"}
    assert prepared.dropped["untrusted_sets"] == 1 and prepared.dropped["unlabeled_sets"] == 1



SETS_FOR_REPORT = [RankedSet("p", ["x", "y", "z"], {"a": [1, 2, 3], "b": [1, 2, 3], "c": [3, 2, 1]}),
                   RankedSet("q", ["x", "y", "z"], {"a": [1, 2, 3], "c": [1, 2, 3]})]


def test_agreement_series_in_labeling_order_by_hand():
    # set 0: a and b against the mean of the other two, [2, 2, 2], all ties: undefined; c against [1, 2, 3]: -1
    assert agreement_series(SETS_FOR_REPORT) == {"a": [(0, None), (1, 1.0)], "b": [(0, None)],
                                                 "c": [(0, -1.0), (1, 1.0)]}
    assert rolling_mean([(0, -1.0), (1, None), (2, 1.0), (3, 0.5)], window=2) == ([1, 2, 3], [-1.0, 0.0, 0.75])


def test_pairwise_agreement_matrix_by_hand():
    labs, tau, count = pairwise_agreement(SETS_FOR_REPORT)
    assert labs == ["a", "b", "c"]
    assert tau == [[1.0, 1.0, 0.0], [1.0, 1.0, -1.0], [0.0, -1.0, 1.0]]   # a-c: -1 on p, +1 on q
    assert count == [[2, 1, 2], [1, 1, 1], [2, 1, 2]]


def test_the_labeler_report_pictures(tmp_path):
    plot_over_time(SETS_FOR_REPORT, tmp_path / "t.png", {"c"})
    plot_matrix(SETS_FOR_REPORT, tmp_path / "m.png")
    for name in ("t.png", "m.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
