"""The benchmarks run and report their figures against a floor (timings are not asserted: they live
in the benchmark's output, not in tests)."""
import json

import pytest

from rlhf_exp.bench import main

pytestmark = pytest.mark.e2e  # a real Trainer and generate per iteration: seconds, not milliseconds


@pytest.mark.parametrize("bench", ["ppo", "grpo", "rloo", "dpo"])
def test_each_benchmark_reports_its_step_its_floor_and_their_ratio(bench, capsys, cache_dir, monkeypatch):
    monkeypatch.setenv("RLHF_EXP_CACHE", str(cache_dir))
    size = ["--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--steps", "2", "--warmup", "0", "--batch", "4"]
    extra = {"ppo": ["--resp-len", "4", "--minibatches", "2"], "grpo": ["--resp-len", "4", "--group-size", "2"],
             "rloo": ["--resp-len", "4", "--group-size", "2"], "dpo": ["--seq-len", "16"]}[bench]
    main([bench, *size, *extra])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bench"] == bench and out["median_step_s"] > 0 and out["floor_step_s"] > 0
    assert out["overhead"] == pytest.approx(out["median_step_s"] / out["floor_step_s"], rel=0.01)
    if bench in ("grpo", "rloo"):
        assert out["group_size"] == 2
