"""Determinism you can see: every run tags what decides whether it repeats (`repeat.*`), one smoke
pipeline run twice gives bit-identical metrics, and rlhf-exp-compare warns when the runs it sets side
by side differ in those tags."""
import subprocess
import sys

import pytest
import torch

from rlhf_exp.tracking.repeatability import differences, repeatability_tags, warning
from tests.test_cli_e2e import mlflow_runs


def test_the_tags_name_versions_device_threads_and_mode():
    tags = repeatability_tags("cpu")
    assert tags["repeat.torch"] == torch.__version__ and tags["repeat.device"] == "cpu"
    assert tags["repeat.threads"] == str(torch.get_num_threads()) and tags["repeat.deterministic"] == "false"
    assert tags["repeat.cuda"] == (torch.version.cuda or "none") and tags["repeat.transformers"]


def test_differences_name_each_tag_that_is_not_the_same_everywhere():
    a = {"repeat.torch": "2.13", "repeat.threads": "2", "other": "x"}
    b = {"repeat.torch": "2.13", "repeat.threads": "4", "other": "y"}
    c = {"repeat.torch": "2.13"}  # logged before the tags existed
    assert differences({"a": a, "b": b}) == {"repeat.threads": {"2": ["a"], "4": ["b"]}}
    assert differences({"a": a, "c": c}) == {"repeat.threads": {"2": ["a"], "?": ["c"]}}
    assert differences({"a": a, "a2": dict(a)}) == {} and warning({"a": a, "a2": dict(a)}) is None
    assert "threads: 2 (a); 4 (b)" in warning({"a": a, "b": b})


@pytest.mark.e2e
def test_a_smoke_pipeline_repeats_bit_for_bit_and_compare_warns_on_different_tags(cli, tmp_path, smoke_run):
    """The session's smoke run (conftest.smoke_run) made again, tracked this time: every file each
    stage wrote that holds figures (feedback, pairs, samples, eval summary) and the aligned policy's
    weights are identical; then compare warns once a run's `repeat.*` tags differ."""
    cli("experiment=smoke", "hydra.run.dir=outputs/again")
    again = tmp_path / "outputs/again"
    for name in ("feedback.jsonl", "thumbs.jsonl", "pairs.jsonl", "labelers.json", "ppo_samples.jsonl",
                 "eval_summary.json", "eval_samples.md"):
        assert (again / name).read_bytes() == (smoke_run / name).read_bytes(), f"{name} differs"
    from safetensors.torch import load_file
    for model in ("sft", "reward_model", "policy"):
        first, second = load_file(smoke_run / model / "model.safetensors"), load_file(again / model / "model.safetensors")
        assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first), model

    cli("experiment=smoke", "reuse=outputs/again", "hydra.run.dir=outputs/reused")  # align and eval once more
    client, runs = mlflow_runs(tmp_path)
    pipelines = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    assert len(pipelines) == 2
    for run in runs:
        assert run.data.tags["repeat.device"] == "cpu" and run.data.tags["repeat.torch"] == torch.__version__
    assert pipelines[0].data.metrics["eval/gold/policy"] == pipelines[1].data.metrics["eval/gold/policy"]
    uri = f"sqlite:///{tmp_path}/outputs/mlflow.db"
    compare = [sys.executable, "-m", "rlhf_exp.tools.compare", "--tracking-uri", uri, "--out", str(tmp_path / "cmp")]
    same = subprocess.run(compare, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert same.returncode == 0 and "warning" not in same.stderr
    client.set_tag(pipelines[1].info.run_id, "repeat.threads", "16")  # as if run on another machine
    other = subprocess.run(compare, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert other.returncode == 0 and "differ in what decides whether a run repeats" in other.stderr
    assert "threads: " in other.stderr and "16 (" in (tmp_path / "cmp/compare.md").read_text()
