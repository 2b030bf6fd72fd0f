"""Several processes on this CPU (Lightning DDP, gloo): the whole pipeline with one MLflow run per
stage and rank 0 writing; PPO, GRPO and RLOO ranks that sample their own rollouts but take every
decision on the statistics of the whole batch, so their weights stay identical."""
import json
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("algorithm", ["ppo", *(pytest.param(a, marks=pytest.mark.slow) for a in ("grpo", "rloo"))])
def test_ranks_keep_identical_weights_and_log_the_whole_batch(algorithm, tiny_spec, tmp_path):
    spec = tiny_spec(dropout=0.0)
    spec.tokenizer()  # trained once, before the two processes read it
    out = tmp_path / "seen.json"
    proc = subprocess.run([sys.executable, str(ROOT / "tests/ddp_check.py"), algorithm, spec.tokenizer_dir, str(out)],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 3
    for row in rows:
        assert row["same_weights"]                           # after every iteration
        assert row["ranks_scores_differ"]                    # each rank sampled rollouts of its own
        assert row["logged_score_mean"] == pytest.approx(row["union_score_mean"], abs=1e-5)
        assert row["kl_coefs"][0] == row["kl_coefs"][1]      # one KL controller, fed the global KL
    if algorithm != "grpo":
        assert rows[-1]["kl_coefs"][0] != pytest.approx(0.2 if algorithm == "ppo" else 0.05)  # and it moved


def test_a_ddp_run_resumes_from_its_checkpoint_on_every_rank(tiny_spec, tmp_path):
    """PPO on two ranks stops after 2 iterations with a checkpoint (rank 0 writes it); two new
    processes resume from it: both start from its weights and its iteration, and go on to iteration
    4 with identical weights and whole-batch statistics."""
    spec = tiny_spec(dropout=0.0)
    spec.tokenizer()
    ckpt = tmp_path / "last.ckpt"
    seen = {}
    for action in ("save", "resume"):
        out = tmp_path / f"{action}.json"
        proc = subprocess.run([sys.executable, str(ROOT / "tests/ddp_check.py"), "ppo", spec.tokenizer_dir, str(out),
                               f"{action}={ckpt}"], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen[action] = json.loads(out.read_text())
    assert ckpt.is_file() and seen["save"]["end_iteration"] == 2 and len(seen["save"]["rows"]) == 2
    start = seen["resume"]["start"]
    assert start["iteration"] == 2 and start["same_weights"]  # every rank loaded the checkpoint
    assert start["weights_sum"] == pytest.approx(seen["save"]["end_weights_sum"], abs=1e-9)
    assert seen["resume"]["end_iteration"] == 4 and len(seen["resume"]["rows"]) == 2  # two more, not four
    for row in seen["resume"]["rows"]:
        assert row["same_weights"] and row["ranks_scores_differ"]
        assert row["logged_score_mean"] == pytest.approx(row["union_score_mean"], abs=1e-5)


def test_the_pipeline_runs_with_ddp_on_two_processes(cli, tmp_path):
    proc = cli("experiment=smoke", "trainer=ddp", "trainer.devices=2", "trainer.accelerator=cpu")
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert sorted(r.data.tags["stage"] for r in runs) == sorted(
        ["pipeline", "sft", "collect", "prepare", "reward_model", "align", "eval"])  # one run per stage, not per rank
    assert all(r.info.status == "FINISHED" for r in runs)
    align = next(r for r in runs if r.data.tags["stage"] == "align")
    assert [m.step for m in client.get_metric_history(align.info.run_id, "ppo/reward/score_mean")] == [0, 1]
    run = tmp_path / "outputs/run"
    for name in ("sft", "reward_model", "policy"):  # written once, by rank 0
        assert (run / name / "config.json").is_file() and not (run / ".rank1" / name).exists()
    # collect, prepare and eval: rank 0 alone; the other rank trains on rank 0's completion sets and pairs
    assert (run / "eval_summary.json").is_file() and (run / "pairs.jsonl").is_file()
    assert not any((run / ".rank1" / f).exists() for f in ("feedback.jsonl", "pairs.jsonl", "eval_summary.json"))
    assert proc.stdout.count("== before (reference) and after (aligned)") == 1


@pytest.mark.parametrize("stage", [*(pytest.param(s, marks=pytest.mark.slow) for s in ("sft", "reward_model")), "dpo"])
def test_two_ranks_with_half_batches_train_as_one_process_with_the_whole_batch(stage, tiny_spec, tmp_path):
    spec = tiny_spec(dropout=0.0)
    spec.tokenizer()
    seen = {}
    for world in ("1", "2"):
        out = tmp_path / f"{world}.json"
        proc = subprocess.run([sys.executable, str(ROOT / "tests/ddp_equivalence.py"), stage, world,
                               spec.tokenizer_dir, str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        seen[world] = json.loads(out.read_text())
    assert len(seen["1"]["losses"]) == 4
    assert seen["2"]["losses"] == pytest.approx(seen["1"]["losses"], abs=1e-5)   # step by step
    assert seen["2"]["weights"] == pytest.approx(seen["1"]["weights"], abs=1e-5)
