"""Sweeps as Hydra multiruns that reuse an earlier run's SFT policy and reward model, one MLflow
run per job, a failed job recorded while the others finish, and rlhf-exp-compare on the result."""
import subprocess
import sys

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def pipeline_runs(client, **tags):
    exp = client.get_experiment_by_name("rlhf")
    query = " and ".join(["tags.stage = 'pipeline'", *(f"tags.{k} = '{v}'" for k, v in tags.items())])
    return client.search_runs([exp.experiment_id], query, order_by=["attributes.start_time ASC"])


def test_clip_sweep_reuses_earlier_stages_records_each_job_and_compares(cli, tmp_path, base):
    # two clip_eps × two policies, one of which is a file that is not a model: jobs 1 and 3 fail at run time,
    # each with the setting named (no traceback)
    proc = cli("-m", f"--config-dir={ROOT / 'sweeps'}", "--config-name=ppo_clip", "experiment=smoke",
               "reuse=outputs/base", "hydra.sweep.dir=outputs/sweep",
               "algorithm.clip_eps=0.1,0.3", "algorithm.policy=outputs/base/sft,outputs/base/pairs.jsonl",
               check=False)
    for job in (1, 3):  # and the sweep went on
        assert f"job {job}: input error: algorithm.policy = outputs/base/pairs.jsonl" in proc.stderr
    assert "a file, not a directory" in proc.stderr and "Traceback" not in proc.stderr
    assert proc.returncode == 1 and "2 of 4 jobs failed" in proc.stderr  # and says so at the end

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    jobs = pipeline_runs(client, sweep_id="outputs/sweep")
    assert len(jobs) == 4
    finished = [r for r in jobs if r.info.status == "FINISHED"]
    failed = [r for r in jobs if r.info.status == "FAILED"]
    assert sorted(r.data.params["algorithm.clip_eps"] for r in finished) == ["0.1", "0.3"]
    assert len(failed) == 2 and all("reuse=outputs/base" in r.data.tags["sweep_overrides"] for r in jobs)
    assert {r.data.tags["sweep_job"] for r in finished} == {"0", "2"}
    exp = client.get_experiment_by_name("rlhf")
    for run in finished:  # only the stages after the reused ones ran, nested under the job's run
        kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert sorted(k.data.tags["stage"] for k in kids) == ["align", "eval"]
        assert run.data.tags["reused_from"] == str(base.resolve()) and "eval/gold/policy" in run.data.metrics
    for run in failed:
        kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{run.info.run_id}'")
        assert [k.info.status for k in kids] == ["FAILED"] and kids[0].data.tags["error"]
        assert run.data.tags["error"]

    out = subprocess.run([sys.executable, "-m", "rlhf_exp.tools.compare", "--sweep", "outputs/sweep",
                          "--tracking-uri", f"sqlite:///{tmp_path}/outputs/mlflow.db", "--out", str(tmp_path / "cmp")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    report = (tmp_path / "cmp/compare.md").read_text()
    for run in jobs:
        assert run.info.run_id[:8] in report and run.info.run_id[:8] in out.stdout
    header = out.stdout.splitlines()[0]
    assert "algorithm.clip_eps" in header and "algorithm.policy" in header and "eval/gold/policy" in header
    for png in ("frontier_reward_vs_kl", "gold_vs_reward", "learning_curves", "metric_by_param"):
        assert (tmp_path / f"cmp/{png}.png").read_bytes()[:4] == b"\x89PNG"
    summary = client.search_runs([exp.experiment_id], "tags.stage = 'compare'")
    assert len(summary) == 1 and {a.path for a in client.list_artifacts(summary[0].info.run_id)} >= {
        "compare.md", "frontier_reward_vs_kl.png"}

    # PPO against DPO, one seed here: two jobs, each tagged with its algorithm
    cli("-m", f"--config-dir={ROOT / 'sweeps'}", "--config-name=ppo_vs_dpo", "experiment=smoke",
        "reuse=outputs/base", "seed=0", "hydra.sweep.dir=outputs/vs")
    vs = pipeline_runs(client, sweep_id="outputs/vs")
    assert sorted(r.data.tags["algorithm"] for r in vs) == ["dpo", "ppo"]
    assert all(r.info.status == "FINISHED" and "eval/win_rate" in r.data.metrics for r in vs)

    # the over-optimisation study, three of its points: PPO at a KL strength and best-of-n at an n each
    cli("-m", f"--config-dir={ROOT / 'sweeps'}", "--config-name=overoptimization", "experiment=smoke",
        "reuse=outputs/base", "study=p1,p2,p3", "hydra.sweep.dir=outputs/study")
    study = pipeline_runs(client, sweep_id="outputs/study")
    assert sorted((r.data.params["algorithm.kl_coef"], r.data.params["eval.best_of_n"]) for r in study) == [
        ("0.1", "8"), ("0.3", "4"), ("1.0", "2")]
    out = subprocess.run([sys.executable, "-m", "rlhf_exp.tools.compare", "--sweep", "outputs/study",
                          "--tracking-uri", f"sqlite:///{tmp_path}/outputs/mlflow.db", "--out", str(tmp_path / "study")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    report = (tmp_path / "study/compare.md").read_text()
    assert "## Over-optimisation" in report and "| best-of-n | gold |" in report and "| RL | proxy |" in report
    assert (tmp_path / "study/overoptimization.png").read_bytes()[:4] == b"\x89PNG"


def test_reuse_must_name_an_earlier_run(cli):
    proc = cli("reuse=nowhere", check=False)
    assert proc.returncode == 2 and "reuse = 'nowhere': expected an earlier pipeline run directory" in proc.stderr


def test_a_parallel_sweep_on_a_fresh_store_records_every_run_param_and_metric(cli, tmp_path):
    """Four joblib workers creating the sqlite store at once used to race on its tables: 1 run of 8
    was recorded. The store is now created and migrated under a lock, by one process at a time."""
    noises = ["0.05", "0.1", "0.15", "0.2", "0.25", "0.3", "0.35", "0.4"]
    proc = cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=4", "stage=prepare",
               f"data.noise={','.join(noises)}", "hydra.sweep.dir=outputs/sweep")
    assert "failed" not in proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    assert sorted(r.data.params["data.noise"] for r in runs) == noises
    assert {r.info.status for r in runs} == {"FINISHED"}
    assert len({frozenset(r.data.metrics) for r in runs}) == 1 and "prepare/data/pairs" in runs[0].data.metrics
    assert len({len(r.data.params) for r in runs}) == 1


@pytest.mark.parametrize("launcher", ["submitit_local", "ray"])
def test_a_launched_sweep_records_every_job_and_names_the_failed_one(cli, tmp_path, launcher):
    """hydra/launcher=submitit_local: each job a process of its own, as on a Slurm cluster
    (hydra/launcher=slurm, conf/hydra/launcher/slurm.yaml); hydra/launcher=ray: each job a task on a
    local Ray cluster (ray.init), as on a real one (hydra.launcher.ray.init.address=auto). The
    failed-jobs list reads the shared sweep dir."""
    (tmp_path / "good.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
    proc = cli("-m", f"hydra/launcher={launcher}", "stage=prepare", "data=files",
               "data.feedback=good.jsonl,missing.jsonl", "hydra.sweep.dir=outputs/sweep", check=False)
    assert proc.returncode == 1 and "1 of 2 jobs failed" in proc.stderr and "missing.jsonl" in proc.stderr
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    exp = client.get_experiment_by_name("rlhf")
    runs = client.search_runs([exp.experiment_id], "tags.sweep_id = 'outputs/sweep'")
    by_job = {r.data.tags["sweep_job"]: r for r in runs}
    assert sorted(by_job) == ["0", "1"] and by_job["0"].info.status == "FINISHED"
    assert by_job["0"].data.metrics["prepare/data/pairs"] == 1 and by_job["1"].info.status == "FAILED"
    assert (tmp_path / "outputs/sweep/0/pairs.jsonl").is_file() and (tmp_path / "outputs/sweep/1/FAILED").is_file()


def test_the_frontier_sweep_draws_every_method_over_seeds(cli, tmp_path, base):
    """sweeps/frontier.yaml at smoke size, two of its points × two seeds: every method's points (PPO,
    DPO and the best-of-n of each run's eval) with n = 2 seeds each, the plot and the table written."""
    cli("-m", f"--config-dir={ROOT / 'sweeps'}", "--config-name=frontier", "experiment=smoke", "reuse=outputs/base",
        "frontier=ppo1,dpo2", "seed=0,1", "hydra.sweep.dir=outputs/frontier")
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = pipeline_runs(client, sweep_id="outputs/frontier")
    assert sorted((r.data.tags["algorithm"], r.data.params["seed"]) for r in runs) == [
        ("dpo", "0"), ("dpo", "1"), ("ppo", "0"), ("ppo", "1")]
    assert {r.data.params.get("algorithm.kl_coef") or r.data.params["algorithm.beta"] for r in runs} == {"0.5", "1.0"}
    out = subprocess.run([sys.executable, "-m", "rlhf_exp.tools.compare", "--sweep", "outputs/frontier",
                          "--tracking-uri", f"sqlite:///{tmp_path}/outputs/mlflow.db", "--out", str(tmp_path / "fr")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    report = (tmp_path / "fr/compare.md").read_text()
    section = report.split("## Frontier")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and "method" not in line]
    assert sorted((r.split(" | ")[0][2:], r.split(" | ")[1], r.split(" | ")[2]) for r in rows) == [
        ("best-of-n", "2", "2"), ("best-of-n", "4", "2"), ("dpo", "1.0", "2"), ("ppo", "0.5", "2")]
    assert all(" ± " in r for r in rows)  # two seeds: a standard error on every point
    assert "## Over seeds" in report  # compare's own table, aggregated over the seeds
    assert (tmp_path / "fr/frontier_gold_vs_kl.png").read_bytes()[:4] == b"\x89PNG"
