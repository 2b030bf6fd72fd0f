"""The benchmarks run and report their figures against a floor (timings are not asserted: they live
in the benchmark's output, not in tests)."""
import json

import pytest

from rlhf_exp.tools.bench import main

pytestmark = pytest.mark.e2e  # a real Trainer and generate per iteration: seconds, not milliseconds


@pytest.mark.parametrize("bench", ["ppo", *(pytest.param(b, marks=pytest.mark.slow) for b in ("grpo", "rloo")), "dpo"])
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
    if bench != "dpo":
        assert out["rollout"] == "merged"  # algorithm.rollout's default


def test_the_rollout_benchmark_times_each_path_against_the_memory_floor(capsys, cache_dir, monkeypatch):
    monkeypatch.setenv("RLHF_EXP_CACHE", str(cache_dir))
    main(["rollout", "--n-layer", "1", "--n-head", "2", "--n-embd", "32", "--lora-r", "4", "--batch", "3",
          "--resp-len", "4", "--steps", "2", "--warmup", "0"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["bench"] == "rollout" and out["lora_r"] == 4 and out["weights_mb"] > 0
    for path in ("policy", "merged"):
        assert out[f"{path}_ms_per_step"] > 0 and out[f"{path}_tokens_per_s"] == pytest.approx(
            3 / out[f"{path}_ms_per_step"] * 1000, rel=0.01)
    assert out["speedup_merged"] == pytest.approx(out["policy_ms_per_step"] / out["merged_ms_per_step"], rel=0.01)
    assert out["merged_over_floor"] == pytest.approx(out["merged_ms_per_step"] / out["floor_ms_per_step"], rel=0.01)


def test_a_benchmark_on_a_missing_gpu_is_refused_by_name(capsys, cache_dir, monkeypatch):
    """`--device cuda` where torch sees no GPU stops before any work, naming the option (exit 2)."""
    monkeypatch.setenv("RLHF_EXP_CACHE", str(cache_dir))
    monkeypatch.setattr("torch.cuda.is_available", lambda: False)
    with pytest.raises(SystemExit) as stop:
        main(["dpo", "--device", "cuda", "--steps", "1", "--warmup", "0"])
    assert stop.value.code == 2 and "--device cuda" in capsys.readouterr().err


def test_the_benchmark_runs_under_bfloat16_autocast(capsys, cache_dir, monkeypatch):
    """`--precision bf16-mixed` trains in the Trainer's bf16 plugin and says so in its figures."""
    import pytorch_lightning as pl
    plugins, Trainer = [], pl.Trainer

    def recorded(*a, **kw):
        trainer = Trainer(*a, **kw)
        plugins.append(type(trainer.precision_plugin).__name__)
        return trainer
    monkeypatch.setenv("RLHF_EXP_CACHE", str(cache_dir))
    monkeypatch.setattr("rlhf_exp.tools.bench.pl.Trainer", recorded)
    main(["dpo", "--precision", "bf16-mixed", "--seq-len", "16", "--batch", "4", "--steps", "2", "--warmup", "1",
          "--n-layer", "1", "--n-embd", "32"])
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["precision"] == "bf16-mixed" and out["device"] == "cpu" and out["median_step_s"] > 0
    assert plugins == ["MixedPrecision"]  # Lightning's autocast plugin, bfloat16 on a CPU
