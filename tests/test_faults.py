"""Faults for real: processes killed with SIGKILL mid-stage, and what the next process finds."""
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
import torch
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def start(tmp_path, cache_dir, *overrides):
    env = {**os.environ, "RLHF_EXP_CACHE": str(cache_dir)}
    return subprocess.Popen([sys.executable, "-m", "rlhf_exp", *overrides], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(predicate, timeout=240):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if (value := predicate()) is not None:
            return value
        time.sleep(0.5)
    raise AssertionError("timed out")


def test_runs_of_a_killed_process_are_marked_killed_by_the_next_one(cli, tmp_path, cache_dir, base):
    """kill -9 during align: its pipeline and align runs stay RUNNING in MLflow (nothing in the
    process can end them); the next process on this machine finds their process gone and marks them
    KILLED, saying why. A run whose process still lives is left RUNNING."""
    db = tmp_path / "outputs/mlflow.db"
    proc = start(tmp_path, cache_dir, "experiment=smoke", "reuse=outputs/base", "algorithm.max_steps=100000",
                 "hydra.run.dir=outputs/killed")
    living = start(tmp_path, cache_dir, "experiment=smoke", "reuse=outputs/base", "algorithm.max_steps=100000",
                   "hydra.run.dir=outputs/living")
    try:
        def running_align():  # read with sqlite3: an MlflowClient would race the jobs to create the store
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                    pids = {pid for (pid,) in con.execute(
                        "select p.value from runs r join tags s on s.run_uuid = r.run_uuid and s.key = 'stage' "
                        "join tags p on p.run_uuid = r.run_uuid and p.key = 'rlhf_exp.pid' "
                        "where r.status = 'RUNNING' and s.value = 'align'")}
            except sqlite3.Error:
                return None
            return True if pids == {str(proc.pid), str(living.pid)} else None
        wait_for(running_align)
        client = MlflowClient(f"sqlite:///{db}")
        runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id], "attributes.status = 'RUNNING'")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        dead = {r.info.run_id for r in runs if r.data.tags["rlhf_exp.pid"] == str(proc.pid)}
        assert len(dead) == 2  # the pipeline run and its align run

        (tmp_path / "good.jsonl").write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n')
        cli("stage=prepare", "data=files", "data.feedback=good.jsonl")  # the next process
        client = MlflowClient(f"sqlite:///{db}")
        for run_id in dead:
            run = client.get_run(run_id)
            assert run.info.status == "KILLED" and f"pid {proc.pid}" in run.data.tags["error"]
        alive = [r for r in runs if r.data.tags["rlhf_exp.pid"] == str(living.pid)]
        assert len(alive) == 2 and all(client.get_run(r.info.run_id).info.status == "RUNNING" for r in alive)
    finally:
        for p in (proc, living):
            p.kill()
            p.wait(timeout=30)


def kill_after(proc, ckpt):
    """SIGKILL to `proc` at a random moment within half a second of its first checkpoint `ckpt`
    (perhaps while it writes the next one), before it ends."""
    import random
    try:
        wait_for(lambda: True if ckpt.is_file() else None)
        time.sleep(random.uniform(0, 0.5))
        assert proc.poll() is None, "the run ended before it was killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()


ALIGN = {"ppo": ["algorithm.max_steps=40", "reward.path=outputs/base/reward_model"],
         "dpo": ["algorithm.epochs=12", "algorithm.pairs=outputs/base/pairs.jsonl"]}


@pytest.mark.parametrize("algorithm", ["ppo", "dpo"])
def test_align_killed_at_a_random_moment_and_resumed_equals_the_uninterrupted_run(cli, tmp_path, cache_dir, algorithm,
                                                                                base):
    """kill -9 of a real `stage=align` soon after its first checkpoint (at a random moment, perhaps
    while a checkpoint is being written); resumed from checkpoints/align/last.ckpt, it logs the very
    metrics of an uninterrupted run from the checkpoint on (same steps, same values, each once) and
    saves the same policy, weight for weight. (Both train with dropout off; tests/test_resume.py
    checks SFT, which keeps it on, and the random generators it needs.)"""
    from safetensors.torch import load_file
    align = ["experiment=smoke", "stage=align", f"algorithm={algorithm}", "algorithm.policy=outputs/base/sft",
             "algorithm.checkpoint_every=3", *ALIGN[algorithm]]
    cli(*align, "hydra.run.dir=outputs/whole")
    proc = start(tmp_path, cache_dir, *align, "hydra.run.dir=outputs/killed")
    ckpt = tmp_path / "outputs/killed/checkpoints/align/last.ckpt"
    kill_after(proc, ckpt)
    cli(*align, f"algorithm.ckpt_path={ckpt}", "hydra.run.dir=outputs/resumed")

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    by_dir = {}
    for r in client.search_runs([client.get_experiment_by_name("rlhf").experiment_id], "tags.stage = 'align'"):
        by_dir[r.data.params["paths.output_dir"].rsplit("/", 1)[-1]] = r.info.run_id
    whole, resumed = by_dir["whole"], by_dir["resumed"]
    metrics = [k for k in client.get_run(whole).data.metrics if k.startswith(f"{algorithm}/") and "/perf/" not in k]
    assert len(metrics) >= 5
    first = min(m.step for m in client.get_metric_history(resumed, metrics[0]))
    assert 0 < first < max(m.step for m in client.get_metric_history(whole, metrics[0]))
    for name in metrics:
        w = sorted((m.step, m.value) for m in client.get_metric_history(whole, name))
        r = sorted((m.step, m.value) for m in client.get_metric_history(resumed, name))
        assert r == [x for x in w if x[0] >= first], name  # from the checkpoint on, each step once
    a = load_file(tmp_path / "outputs/whole/policy/model.safetensors")
    b = load_file(tmp_path / "outputs/resumed/policy/model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_pipeline_killed_in_align_and_resumed_in_place_ends_as_the_uninterrupted_one(cli, tmp_path, cache_dir):
    """`rlhf-exp resume=DIR` after kill -9 during align: sft, collect, prepare and reward_model (done)
    are skipped, align goes on from its last checkpoint, eval runs; the evaluation and the policy are
    those of an uninterrupted pipeline, and MLflow holds one pipeline run with one run per stage,
    the same ones as before the crash, finished, each align step logged once."""
    import json

    from safetensors.torch import load_file
    run = ["experiment=smoke", "algorithm.max_steps=40", "algorithm.checkpoint_every=3"]
    cli(*run, "hydra.run.dir=outputs/whole")
    proc = start(tmp_path, cache_dir, *run, "hydra.run.dir=outputs/killed")
    killed = tmp_path / "outputs/killed"
    kill_after(proc, killed / "checkpoints/align/last.ckpt")
    before = json.loads((killed / "run.json").read_text())
    assert before["done"] == ["sft", "collect", "prepare", "reward_model"] and "align" in before["runs"]

    out = cli("resume=outputs/killed").stdout
    assert "resume: align goes on from" in out and "[sft]" not in out and "[align] done" in out
    after = json.loads((killed / "run.json").read_text())
    assert after["done"] == before["done"] + ["align", "eval", "pipeline"]
    assert {k: after["runs"][k] for k in before["runs"]} == before["runs"]  # the same MLflow runs, continued
    whole = json.loads((tmp_path / "outputs/whole/eval_summary.json").read_text())
    resumed = json.loads((killed / "eval_summary.json").read_text())
    assert {k: v for k, v in resumed.items() if k.startswith("eval/")} == \
        {k: v for k, v in whole.items() if k.startswith("eval/")}
    a, b = load_file(tmp_path / "outputs/whole/policy/model.safetensors"), load_file(killed / "policy/model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)

    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    exp = client.get_experiment_by_name("rlhf").experiment_id
    ours = [r for r in client.search_runs([exp]) if r.data.params.get("paths.output_dir", "").endswith("killed")]
    assert sorted(r.data.tags["stage"] for r in ours) == sorted(["pipeline", "sft", "collect", "prepare",
                                                                  "reward_model", "align", "eval"])
    assert all(r.info.status == "FINISHED" for r in ours)
    steps = [m.step for m in client.get_metric_history(after["runs"]["align"], "ppo/reward/score_mean")]
    assert sorted(steps) == list(range(40))  # each iteration once: none lost, none logged twice

    done = cli("resume=outputs/whole", check=False)  # a finished run, and no run at all, are refused
    assert done.returncode == 2 and "that run finished" in done.stderr and "nothing to resume" in done.stderr
    none = cli("resume=outputs/nothing", check=False)
    assert none.returncode == 2 and "outputs/nothing/.hydra/overrides.yaml" in none.stderr


def serve(store, port):
    """A real `mlflow server` on 127.0.0.1:port over the sqlite store in `store`; (process, url). It
    runs its web workers as child processes: `kill_server` kills the whole process group."""
    import urllib.request
    proc = subprocess.Popen([sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
                             f"sqlite:///{store}/mlflow.db", "--artifacts-destination", str(store / "artifacts"),
                             "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}"

    def up():
        try:
            return True if urllib.request.urlopen(f"{url}/health", timeout=1).read() == b"OK" else None
        except OSError:
            return None
    wait_for(up, timeout=60)
    return proc, url


def test_a_tracking_server_that_dies_mid_run_loses_nothing(cli, tmp_path, cache_dir, base):
    """The server is killed with SIGKILL while align logs to it. Training goes on and exits 0. If the
    server comes back before the run ends, every step reaches it; if it does not, what waits is kept
    in the run's mlflow_pending.jsonl and the replay command sends it once the server is back."""
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "server"
    store.mkdir()
    server, url = serve(store, port)
    align = ["experiment=smoke", "stage=align", "algorithm.policy=outputs/base/sft",
             "reward.path=outputs/base/reward_model", f"logger.tracking_uri={url}", "logger.retry_s=2"]
    try:  # back: long enough to outlast the outage and the next try (about 15 s of steps); gone: any length
        for name, back, steps in (("back", True, 60), ("gone", False, 20)):
            proc = subprocess.Popen([sys.executable, "-m", "rlhf_exp", *align, f"algorithm.max_steps={steps}",
                                     f"hydra.run.dir=outputs/{name}"],
                                    cwd=tmp_path, env={**os.environ, "RLHF_EXP_CACHE": str(cache_dir)},
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            client = MlflowClient(url)

            def logging():
                exp = client.get_experiment_by_name("rlhf")
                runs = client.search_runs([exp.experiment_id], f"params.`paths.output_dir` LIKE '%{name}'") if exp else []
                return runs[0].info.run_id if runs else None
            run_id = wait_for(logging)
            kill_server(server)
            if back:
                time.sleep(1.0)  # a few iterations with no server
                server, url = serve(store, port)
            out, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err[-3000:]
            assert "warning: the tracking store failed" in err
            pending = tmp_path / f"outputs/{name}/mlflow_pending.jsonl"
            if not back:
                assert pending.is_file() and f"python -m rlhf_exp.tracking.resilient {pending}" in err
                server, url = serve(store, port)
                sent = subprocess.run([sys.executable, "-m", "rlhf_exp.tracking.resilient", str(pending),
                                       "--tracking-uri", url], capture_output=True, text=True, timeout=120)
                assert sent.returncode == 0 and not pending.exists(), sent.stderr
            else:
                assert not pending.exists()
            client = MlflowClient(url)
            logged = sorted(m.step for m in client.get_metric_history(run_id, "ppo/reward/score_mean"))
            assert logged == list(range(steps)), name  # every iteration's metrics, once
            assert client.get_run(run_id).info.status == "FINISHED"
    finally:
        kill_server(server)


def kill_server(proc):
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
