"""Kendall's tau-b and W against values computed by hand."""
import math

import pytest

from rlhf_exp.feedback.agreement import kendall_tau_b, kendall_w, mid_ranks


def test_mid_ranks_share_the_mean_of_tied_positions():
    assert mid_ranks([2, 1, 2, 3]) == [2.5, 1.0, 2.5, 4.0]


def test_tau_b_of_identical_and_reversed_rankings():
    assert kendall_tau_b([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau_b([1, 2, 3], [3, 2, 1]) == -1.0


def test_tau_b_lecture_example_by_hand():
    # labeler 3 ranks (1, 3, 2); the other two's mean ranking is (2, 1, 3):
    # pairs AB discordant, AC concordant, BC discordant -> (1 - 2) / 3
    assert kendall_tau_b([1, 3, 2], [2, 1, 3]) == pytest.approx(-1 / 3)
    # labeler 1 (2, 1, 3) vs mean of the others (1.5, 2, 2.5): AB discordant, AC and BC concordant
    assert kendall_tau_b([2, 1, 3], [1.5, 2, 2.5]) == pytest.approx(1 / 3)


def test_tau_b_with_a_tie_by_hand():
    # x = (1, 1, 2), y = (1, 2, 3): C = 2, D = 0, n0 = 3, ties in x = 1 -> 2 / sqrt(2 * 3)
    assert kendall_tau_b([1, 1, 2], [1, 2, 3]) == pytest.approx(2 / math.sqrt(6))


def test_tau_b_undefined_when_all_tied():
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) is None


def test_kendall_w_by_hand():
    # three raters over A, B, C: rank sums 5, 5, 8 (mean 6), S = 6, W = 12*6 / (9 * 24) = 1/3
    assert kendall_w([[2, 1, 3], [2, 1, 3], [1, 3, 2]]) == pytest.approx(1 / 3)
    assert kendall_w([[2, 1, 3], [2, 1, 3]]) == pytest.approx(1.0)


def test_kendall_w_tie_corrected_by_hand():
    # mid ranks (1.5, 1.5, 3) and (1, 2, 3): sums 2.5, 3.5, 6, S = 6.5;
    # denominator 2^2 * 24 - 2 * (2^3 - 2) = 84 -> W = 78 / 84
    assert kendall_w([[1, 1, 2], [1, 2, 3]]) == pytest.approx(78 / 84)


def test_kendall_w_needs_two_raters():
    assert kendall_w([[1, 2, 3]]) is None
