"""Eval's figures with their standard errors, by hand: every mean eval prints (rewards, the world's
measures, KL, the win rate) comes with sample std / √n over the answers it averages."""
import math

import pytest

from rlhf_exp.core.stats import mean_se
from rlhf_exp.stages.eval import summary_table


def test_mean_and_standard_error_by_hand():
    m, se = mean_se([1.0, 2.0, 4.0, float("nan")])  # NaN: a measure that does not apply to that answer
    assert m == pytest.approx(7 / 3)
    # sample variance: ((1 − 7/3)² + (2 − 7/3)² + (4 − 7/3)²) / 2 = 7/3; SE = sqrt(7/3 / 3)
    assert se == pytest.approx(math.sqrt(7 / 9))
    assert mean_se([5.0])[0] == 5.0 and math.isnan(mean_se([5.0])[1])
    assert all(math.isnan(x) for x in mean_se([]))


def test_the_win_rate_and_its_standard_error_by_hand():
    wins = [1.0, 0.0, 0.5, 1.0]  # won, lost, tied, won
    m, se = mean_se(wins)
    assert m == pytest.approx(0.625)
    var = ((0.375 ** 2) * 2 + 0.625 ** 2 + 0.125 ** 2) / 3
    assert se == pytest.approx(math.sqrt(var / 4))


def test_the_printed_table_shows_each_standard_error():
    metrics = {"eval/reward/ref": 0.1, "eval/reward/ref_se": 0.02, "eval/reward/policy": 0.5,
               "eval/reward/policy_se": 0.03, "eval/kl/policy_ref": 2.5, "eval/kl/policy_ref_se": 0.25,
               "eval/win_rate": 0.625, "eval/win_rate_se": 0.125}
    table = summary_table(metrics)
    assert "0.100 ± 0.020" in table and "0.500 ± 0.030" in table
    assert "2.500 ± 0.250 nats" in table and "win rate (reward model) 0.625 ± 0.125" in table
