"""A real `mlflow server` on 127.0.0.1: a parallel sweep (joblib, two workers) records every run,
param, metric and artifact on it, the artifacts land in the server's own artifact store, and
rlhf-exp-compare reads the sweep back from it; in a real browser, the link a run prints opens the
MLflow UI on the runs table, with the stage runs nested under the pipeline's."""
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from mlflow.tracking import MlflowClient


pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("tracking_server")]  # pytest -n 2 (make test): this module's tests on one worker, which makes its module fixture once


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One server for this module's tests (each files its runs under an experiment of its own)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path_factory.mktemp("server")
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=1).read() == b"OK":
                    break
            except OSError:
                time.sleep(0.5)
        else:
            raise AssertionError("mlflow server did not start within 60 s")
        yield url, store / "artifacts"
    finally:  # the server and the web workers it started
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def test_a_parallel_sweep_against_a_tracking_server_is_recorded_whole_and_compared(cli, tmp_path, mlflow_server, base):
    url, artifacts = mlflow_server
    cli("-m", "hydra/launcher=joblib", "hydra.launcher.n_jobs=2", "experiment=smoke", "reuse=outputs/base",
        "algorithm.clip_eps=0.1,0.2,0.3", f"logger.tracking_uri={url}", "hydra.sweep.dir=outputs/sweep")
    client = MlflowClient(url)
    exp = client.get_experiment_by_name("rlhf")
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    jobs = client.search_runs([exp.experiment_id], "tags.stage = 'pipeline'")
    assert sorted(r.data.params["algorithm.clip_eps"] for r in jobs) == ["0.1", "0.2", "0.3"]
    assert all(r.info.status == "FINISHED" and "eval/gold/policy" in r.data.metrics for r in jobs)
    for job in jobs:  # each job's align and eval nested under it, with their metrics and artifacts
        kids = client.search_runs([exp.experiment_id], f"tags.mlflow.parentRunId = '{job.info.run_id}'")
        assert sorted(k.data.tags["stage"] for k in kids) == ["align", "eval"]
        align = next(k for k in kids if k.data.tags["stage"] == "align")
        assert len(client.get_metric_history(align.info.run_id, "ppo/reward/score_mean")) == 2
        ev = next(k for k in kids if k.data.tags["stage"] == "eval")
        assert {a.path for a in client.list_artifacts(ev.info.run_id)} >= {"eval_summary.json", "eval_rewards.png"}
    assert len(list(artifacts.rglob("eval_summary.json"))) == 3  # in the server's artifact store

    out = subprocess.run([sys.executable, "-m", "rlhf_exp.tools.compare", "--sweep", "outputs/sweep",
                          "--tracking-uri", url, "--out", str(tmp_path / "cmp")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert all(r.info.run_id[:8] in out.stdout for r in jobs) and "algorithm.clip_eps" in out.stdout.splitlines()[0]
    assert (tmp_path / "cmp/compare.md").is_file()


def test_the_printed_link_opens_the_runs_table_with_the_stages_under_the_pipeline(cli, mlflow_server, browser, base):
    """MLflow 3.17 opens an experiment on its GenAI overview (traces, tokens) unless the URL asks for
    the model-training view; the links a run prints ask for it."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    url, _ = mlflow_server
    out = cli("experiment=smoke", "reuse=outputs/base", f"logger.tracking_uri={url}", "experiment_name=link").stdout
    run_page = next(line.split("MLflow: ")[1] for line in out.splitlines() if line.startswith("MLflow: "))
    table = next(line.split("runs table: ")[1] for line in out.splitlines() if "runs table: " in line)
    assert table.startswith(f"{url}/#/experiments/") and table.endswith("/runs?workflowType=machine_learning")
    assert run_page.startswith(f"{url}/#/experiments/") and "workflowType=machine_learning" in run_page

    def names():
        return [a.text for a in browser.find_elements(By.CSS_SELECTOR, "[role=gridcell][col-id*='Run Name'] a")]
    browser.get(table)
    WebDriverWait(browser, 60).until(lambda b: "pipeline" in names())  # the runs table, the parent run in it
    assert names() == ["pipeline"]  # its stage runs folded under it
    cell = browser.find_element(By.CSS_SELECTOR, "[role=gridcell][col-id*='Run Name']")
    cell.find_element(By.CSS_SELECTOR, "button[data-component-id*='runnamecellrenderer']").click()
    WebDriverWait(browser, 30).until(lambda b: sorted(names()) == ["align", "eval", "pipeline"])
    browser.get(run_page)  # the pipeline run's own page
    WebDriverWait(browser, 60).until(lambda b: "pipeline" in b.find_element(By.TAG_NAME, "body").text
                                     and "Parameters" in b.find_element(By.TAG_NAME, "body").text)
