"""`rlhf-exp` end to end on the synthetic world and on files: outputs, exit codes, MLflow records."""
import json

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def mlflow_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    exp = client.get_experiment_by_name("rlhf")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prepare_on_the_synthetic_world(cli, tmp_path):
    proc = cli("stage=prepare")
    run_dir = tmp_path / "outputs/run"
    pairs = read_jsonl(run_dir / "pairs.jsonl")
    labelers = json.loads((run_dir / "labelers.json").read_text())["labelers"]
    assert len(pairs) > 300 and set(pairs[0]) >= {"prompt", "chosen", "rejected", "agreement"}
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    poor = {k for k, v in labelers.items() if v["simulated_kind"] != "good"}
    aside = {k for k, v in labelers.items() if v["set_aside"]}
    assert len(poor) == 2 and aside == poor  # it sets aside the poor labelers it simulated
    assert "SET ASIDE" in proc.stdout and f"pairs written: {len(pairs)}" in proc.stdout

    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "prepare"
    assert run.data.tags["stage"] == "prepare" and run.data.tags["algorithm"] == "ppo"
    assert run.data.params["data.n_labelers"] == "6" and run.data.params["prepare.min_agreement"] == "0.2"
    assert "data._target_" not in run.data.params
    assert run.data.metrics["prepare/data/pairs"] == len(pairs)
    assert run.data.metrics["prepare/labelers/set_aside"] == 2
    assert run.data.metrics["prepare/labelers/kendall_w_kept"] > run.data.metrics["prepare/labelers/kendall_w_all"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts >= {"pairs.jsonl", "labelers.json", "feedback.jsonl", "prepare_summary.json", "config.yaml"}

    # the simulated feedback, read back as a file, gives the same pairs
    cli("stage=prepare", "data=files", "data.feedback=outputs/run/feedback.jsonl", "hydra.run.dir=outputs/again")
    assert read_jsonl(tmp_path / "outputs/again/pairs.jsonl") == pairs


def test_default_pipeline_is_a_parent_run_with_nested_stage_runs(cli, tmp_path):
    cli("experiment=smoke")
    client, runs = mlflow_runs(tmp_path)
    parent = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    children = [r for r in runs if r.data.tags["stage"] != "pipeline"]
    assert len(parent) == 1 and [r.data.tags["stage"] for r in children] == ["prepare"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in children)
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent[0].data.params["data.n_labelers"] == "4"  # the smoke experiment's size
    assert (tmp_path / "outputs/run/pairs.jsonl").is_file()


def test_bad_input_exits_non_zero_names_every_bad_line_and_writes_no_pairs(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps({"prompt": "p", "completions": ["a", "b"], "rankings": {"x": [1, 2]}}),
        "{oops",
        json.dumps({"prompt": "p", "completions": ["a", "b"], "rankings": {"x": [1, 3]}}),
        json.dumps({"prompt": "p", "completions": ["a", "b"]}),
    ]) + "\n")
    proc = cli("stage=prepare", "data=files", "data.feedback=bad.jsonl", check=False)
    assert proc.returncode != 0
    assert "bad.jsonl: 3 bad line(s)" in proc.stderr
    assert "line 2: bad JSON" in proc.stderr
    assert "line 3: field 'rankings.x[1]': expected an integer rank 1..2 or \"F\", got 3" in proc.stderr
    assert "line 4: field 'rankings': missing" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs/run/pairs.jsonl").exists()
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]


def test_config_errors_stop_before_any_work(cli, tmp_path):
    proc = cli("stage=prepare", "data.tie_rate=2", "+data.labelrs=3", check=False)
    assert proc.returncode == 2
    assert "data.tie_rate = 2.0: expected a value >= 0 and <= 1" in proc.stderr
    assert "unknown key 'labelrs'" in proc.stderr
    assert not (tmp_path / "outputs/mlflow.db").exists()


def test_binary_feedback_file_and_logger_none(cli, tmp_path):
    rows = [{"prompt": "p", "completion": "good", "label": 1}, {"prompt": "p", "completion": "bad", "label": 0},
            {"prompt": "q", "completion": "alone", "label": 1}]
    (tmp_path / "thumbs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = cli("stage=prepare", "data=files", "data.feedback=thumbs.jsonl", "logger=none")
    assert read_jsonl(tmp_path / "outputs/run/pairs.jsonl") == [
        {"prompt": "p", "chosen": "good", "rejected": "bad", "source": "binary"}]
    assert "binary prompts without both a thumbs-up and a thumbs-down" in proc.stdout
    assert not (tmp_path / "outputs/mlflow.db").exists()


def test_multirun_tags_each_job_with_the_sweep_and_goes_on_after_a_failed_job(cli, tmp_path):
    proc = cli("-m", "stage=prepare", "data.noise=0.1,-1,0.3", "hydra.sweep.dir=outputs/sweep")
    assert "data.noise = -1.0: expected a value >= 0" in proc.stderr  # job 1 refused, sweep goes on
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2
    assert {r.data.tags["sweep_id"] for r in runs} == {"outputs/sweep"}
    assert sorted(r.data.tags["sweep_job"] for r in runs) == ["0", "2"]
    assert sorted(r.data.params["data.noise"] for r in runs) == ["0.1", "0.3"]
    assert (tmp_path / "outputs/sweep/2/pairs.jsonl").is_file()
