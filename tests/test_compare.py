"""rlhf-exp-compare's pieces: Gao et al.'s over-optimisation fits by hand, the study's points from
runs, and run labels made of what varies across the runs."""
import math

import numpy as np
import pytest

from rlhf_exp.tracking.compare import Job, run_labels
from rlhf_exp.tracking.overopt import curve, fit, study, study_points


def test_the_fits_recover_known_coefficients_and_their_peaks():
    d = np.array([0.5, 1.0, 1.5, 2.0, 3.0])
    bon = fit(d, d * (1.0 - 0.5 * d), "bon")                        # R = d(α − βd), α = 1, β = 0.5
    assert (bon.alpha, bon.beta) == pytest.approx((1.0, 0.5)) and bon.peak == pytest.approx(1.0)  # α / 2β
    rl = fit(d, d * (1.0 - 0.5 * np.log(d)), "rl")                  # R = d(α − β log d)
    assert (rl.alpha, rl.beta) == pytest.approx((1.0, 0.5)) and rl.peak == pytest.approx(math.e)  # exp(α/β − 1)
    assert curve([0.0, 1.0], 1.0, 0.5, "rl").tolist() == pytest.approx([0.0, 1.0])  # d·log d → 0 at 0
    rising = fit(d, 0.3 * d, "bon")                                 # no curvature: no peak
    assert rising.beta == pytest.approx(0.0, abs=1e-9) and (rising.peak is None or rising.peak > 1e6)
    with pytest.raises(ValueError, match="expected one of"):
        fit(d, d, "linear")


def job(run_id, algorithm="ppo", params=None, **metrics):
    return Job(run_id, run_id, "FINISHED", algorithm, params or {}, {k.replace("__", "/"): v for k, v in metrics.items()})


def test_study_points_are_gains_over_the_reference_against_sqrt_kl():
    jobs = [job("a", eval__kl__policy_ref=4.0, eval__kl__bon_ref=1.0, eval__gold__ref=0.1, eval__gold__policy=0.4,
                eval__gold__bon=0.3, eval__reward__ref=-1.0, eval__reward__policy=1.0, eval__reward__bon=0.0),
            job("b", eval__kl__policy_ref=-0.01, eval__gold__ref=0.1, eval__gold__policy=0.1)]
    pts = study_points(jobs)
    assert pts[("rl", "gold")] == ([2.0, 0.0], pytest.approx([0.3, 0.0]))  # a negative KL estimate is d = 0
    assert pts[("rl", "proxy")] == ([2.0], [2.0]) and pts[("bon", "gold")] == ([1.0], pytest.approx([0.2]))


def test_study_plots_and_tabulates_each_series_with_three_points(tmp_path):
    jobs = [job(str(i), eval__kl__policy_ref=k, eval__gold__ref=0.0, eval__gold__policy=g,
                eval__reward__ref=0.0, eval__reward__policy=p)
            for i, (k, g, p) in enumerate([(1.0, 0.2, 0.3), (4.0, 0.3, 0.8), (9.0, 0.1, 1.2), (16.0, -0.2, 1.5)])]
    table = study(jobs, tmp_path / "o.png")
    assert (tmp_path / "o.png").read_bytes()[:4] == b"\x89PNG"
    rows = table.splitlines()
    assert len(rows) == 4 and rows[2].startswith("| RL | gold |") and rows[3].startswith("| RL | proxy |")
    assert study(jobs[:2], tmp_path / "none.png") is None            # fewer than 3 points: no study


def test_runs_are_labelled_by_what_varies_across_them():
    swept = ["algorithm.clip_eps", "algorithm.beta"]
    jobs = [job("r1", "ppo", {"algorithm.clip_eps": "0.1"}), job("r2", "ppo", {"algorithm.clip_eps": "0.2"}),
            job("r3", "dpo", {"algorithm.beta": "0.5"})]
    assert run_labels(jobs, swept) == {"r1": "algorithm=ppo clip_eps=0.1", "r2": "algorithm=ppo clip_eps=0.2",
                                       "r3": "algorithm=dpo beta=0.5"}
    assert run_labels(jobs[:2], ["algorithm.clip_eps"]) == {"r1": "clip_eps=0.1", "r2": "clip_eps=0.2"}
    assert run_labels([job("1111aaaa99"), job("2222bbbb99")], []) == {"1111aaaa99": "1111aaaa", "2222bbbb99": "2222bbbb"}
    twins = [job("1111aaaa99", params={"algorithm.clip_eps": "0.1"}), job("2222bbbb99", params={"algorithm.clip_eps": "0.1"})]
    assert run_labels(twins, ["algorithm.clip_eps"]) == {"1111aaaa99": "clip_eps=0.1 (1111aaaa)",
                                                          "2222bbbb99": "clip_eps=0.1 (2222bbbb)"}


def test_runs_that_differ_in_seed_are_aggregated_with_their_standard_errors():
    from rlhf_exp.tracking.compare import over_seeds
    jobs = [job("a", params={"seed": "0", "algorithm.beta": "0.1"}, eval__gold__policy=0.2),
            job("b", params={"seed": "1", "algorithm.beta": "0.1"}, eval__gold__policy=0.4),
            job("c", params={"seed": "2", "algorithm.beta": "0.1"}, eval__gold__policy=0.9),
            job("d", params={"seed": "0", "algorithm.beta": "0.5"}, eval__gold__policy=0.3)]
    table = over_seeds(jobs, ["algorithm.beta", "seed"], "eval/gold/policy")
    rows = table.splitlines()
    assert rows[0] == "| algorithm | algorithm.beta | n | eval/gold/policy |"
    # beta 0.1: mean 0.5, sample variance ((0.3)² + (0.1)² + (0.4)²) / 2 = 0.13, SE = sqrt(0.13 / 3) = 0.208
    assert rows[2] == "| ppo | 0.1 | 3 | 0.500 ± 0.208 |"
    assert rows[3] == "| ppo | 0.5 | 1 | 0.300 |"  # one seed: no standard error
    assert over_seeds(jobs, ["algorithm.beta"], "eval/gold/policy") is None  # no seed swept


def test_frontier_points_by_hand():
    from rlhf_exp.tracking.frontier import frontier_points, frontier_table
    jobs = [job("a", "ppo", {"seed": "0", "algorithm.kl_coef": "0.1", "eval.best_of_n": "4"}, eval__kl__policy_ref=2.0,
                eval__gold__policy=0.2, eval__kl__bon_ref=0.6, eval__gold__bon=0.3),
            job("b", "ppo", {"seed": "1", "algorithm.kl_coef": "0.1", "eval.best_of_n": "4"}, eval__kl__policy_ref=4.0,
                eval__gold__policy=0.4, eval__kl__bon_ref=0.6, eval__gold__bon=0.5),
            job("c", "dpo", {"seed": "0", "algorithm.beta": "0.5", "eval.best_of_n": "4"}, eval__kl__policy_ref=1.0,
                eval__gold__policy=0.1, eval__kl__bon_ref=0.6, eval__gold__bon=0.3)]  # seed 0's best-of-4 again
    points = {(p.method, p.setting): p for p in frontier_points(jobs)}
    assert set(points) == {("ppo", "0.1"), ("dpo", "0.5"), ("best-of-n", "4")}
    ppo = points[("ppo", "0.1")]
    # two seeds: KL 3 ± 1 (sample std √2 / √2), gold 0.3 ± 0.1
    assert ppo.n == 2 and ppo.kl == pytest.approx((3.0, 1.0)) and ppo.score == pytest.approx((0.3, 0.1))
    bon = points[("best-of-n", "4")]
    assert bon.n == 2 and bon.score == pytest.approx((0.4, 0.1))  # one value per seed, not per run
    assert points[("dpo", "0.5")].n == 1 and math.isnan(points[("dpo", "0.5")].score[1])
    assert "| ppo | 0.1 | 2 | 3.000 ± 1.000 | 0.300 ± 0.100 |" in frontier_table(list(points.values()), "gold")
