"""MLflow tracking through the sqlite store: nested runs, params, metrics, artifacts, statuses."""
import pytest
from mlflow.tracking import MlflowClient

from rlhf_exp.tracking.tracker import MLflowTracker, NoTracker


def test_parent_and_nested_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/db/mlflow.db"
    tracker = MLflowTracker(tracking_uri=uri, experiment_name="t", artifact_location=str(tmp_path / "art"), retry_s=15.0)
    (tmp_path / "out.txt").write_text("hello")
    with tracker.run("pipeline", tags={"stage": "pipeline"}) as parent:
        with tracker.run("prepare", tags={"stage": "prepare"}, parent=parent) as child:
            child.log_params({f"p{i}": i for i in range(150)})  # more than one batch
            child.log_metrics({"prepare/data/pairs": 7, "skip": None})
            child.log_artifact(tmp_path / "out.txt")
    client = MlflowClient(uri)
    c = client.get_run(child.id)
    assert c.data.tags["mlflow.parentRunId"] == parent.id and c.data.tags["stage"] == "prepare"
    assert len(c.data.params) == 150 and c.data.metrics == {"prepare/data/pairs": 7.0}
    assert [a.path for a in client.list_artifacts(child.id)] == ["out.txt"]
    assert c.info.status == "FINISHED" and client.get_run(parent.id).info.status == "FINISHED"
    # the experiment opens in the MLflow UI's model-training view (its runs table), not the GenAI overview
    assert client.get_experiment_by_name("t").tags["mlflow.experimentKind"] == "custom_model_development"


def test_a_failing_run_is_marked_failed(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MLflowTracker(tracking_uri=uri, experiment_name="t", artifact_location=str(tmp_path / "art"), retry_s=15.0)
    with pytest.raises(RuntimeError):
        with tracker.run("prepare") as run:
            raise RuntimeError("boom")
    assert MlflowClient(uri).get_run(run.id).info.status == "FAILED"


def test_no_tracker_accepts_the_same_calls():
    with NoTracker().run("x") as run:
        run.log_params({"a": 1})
        run.log_metrics({"b": 2.0})
        run.log_text("t", "t.txt")
    assert run.id is None


def test_an_experiment_made_by_an_earlier_version_gets_its_kind(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    MlflowClient(uri).create_experiment("old", artifact_location=(tmp_path / "art").as_uri())
    MLflowTracker(tracking_uri=uri, experiment_name="old", artifact_location=str(tmp_path / "art"), retry_s=15.0).experiment_id()
    assert MlflowClient(uri).get_experiment_by_name("old").tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_made_by_a_parallel_job_between_lookup_and_creation_is_taken(tmp_path):
    """On a tracking server no file lock reaches, two sweep jobs may both find no experiment and
    both create it: the loser's create fails with RESOURCE_ALREADY_EXISTS and it takes the winner's."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MLflowTracker(tracking_uri=uri, experiment_name="race", artifact_location=str(tmp_path / "art"), retry_s=15.0)
    client = tracker.client
    winner = MlflowClient(uri).create_experiment("race", tags={"mlflow.experimentKind": "custom_model_development"})
    looked = client.get_experiment_by_name
    calls = []

    def lookup(name):  # the first lookup ran before the winner created it
        calls.append(name)
        return None if len(calls) == 1 else looked(name)
    client.get_experiment_by_name = lookup
    assert tracker.experiment_id() == winner and len(calls) == 2
    from mlflow.exceptions import MlflowException  # any other failure to create it is not swallowed

    def refuse(*a, **k):
        raise MlflowException("store is read-only", error_code="PERMISSION_DENIED")
    client.get_experiment_by_name, client.create_experiment = (lambda name: None), refuse
    with pytest.raises(MlflowException, match="read-only"):
        tracker.experiment_id()


def test_writes_wait_out_a_failing_store_in_order_and_are_kept_beside_the_run_if_it_stays_down(tmp_path):
    """A store that fails (down, locked, unreachable) does not stop the run: its writes wait, in
    order, and go out when it answers again; a write the store refuses as wrong is raised at once;
    what still waits at the end is written to mlflow_pending.jsonl, which the replay command sends."""
    from mlflow.entities import Metric
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import RESOURCE_DOES_NOT_EXIST

    from rlhf_exp.tracking.resilient import ResilientClient, replay
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    real = MlflowClient(uri)
    run_id = real.create_run(real.create_experiment("r")).info.run_id

    class Flaky:  # the store: down while `down` is set
        down, calls = True, []

        def log_batch(self, run_id, metrics=()):
            if self.down:
                raise OSError("connection refused")
            self.calls.append([m.step for m in metrics])
            real.log_batch(run_id, metrics=metrics)

        def set_tag(self, run_id, key, value):
            raise MlflowException("no such run", error_code=RESOURCE_DOES_NOT_EXIST)

    store = Flaky()
    client = ResilientClient(store, retry_s=0.0)
    for step in range(3):
        client.log_batch(run_id, metrics=[Metric("m", float(step), 0, step)])  # no error: training goes on
    assert len(client.queue) == 3 and store.calls == []
    store.down = False
    client.log_batch(run_id, metrics=[Metric("m", 3.0, 0, 3)])
    assert store.calls == [[0], [1], [2], [3]] and client.queue == []  # in order, nothing lost
    with pytest.raises(MlflowException, match="no such run"):  # a refusal is an error, not an outage
        client.set_tag(run_id, "k", "v")

    store.down = True
    client.log_batch(run_id, metrics=[Metric("m", 4.0, 0, 4)])
    client.log_batch(run_id, metrics=[Metric("m", 5.0, 0, 5)])
    kept = client.spill(tmp_path)
    assert kept == tmp_path / "mlflow_pending.jsonl" and len(kept.read_text().splitlines()) == 2
    assert replay(kept, real) == 2 and not kept.exists()
    assert sorted((m.step, m.value) for m in real.get_metric_history(run_id, "m")) == [(s, float(s)) for s in range(6)]


@pytest.mark.e2e  # waits out sqlite's busy timeout (about 20 s)
def test_a_locked_sqlite_store_makes_writes_wait_not_fail(tmp_path):
    """Another process holds the store's write lock (a long transaction) past sqlite's busy timeout:
    the run's writes wait, and go out in order once the lock is released."""
    import sqlite3
    import time

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MLflowTracker(tracking_uri=uri, experiment_name="t", artifact_location=str(tmp_path / "art"), retry_s=15.0)
    with tracker.run("align") as run:
        run.client.retry_s = 0.0
        holder = sqlite3.connect(tmp_path / "mlflow.db", timeout=0)
        holder.execute("BEGIN EXCLUSIVE")  # nobody else may read or write now
        t0 = time.monotonic()
        run.log_metrics({"m": 1.0}, step=0)  # returns: the write waits in memory
        assert run.client.queue and time.monotonic() - t0 < 60
        holder.rollback()
        holder.close()
        run.log_metrics({"m": 2.0}, step=1)
        assert not run.client.queue
    client = MlflowClient(uri)
    assert sorted((m.step, m.value) for m in client.get_metric_history(run.id, "m")) == [(0, 1.0), (1, 2.0)]
    assert client.get_run(run.id).info.status == "FINISHED"


def test_the_retry_interval_reaches_the_resilient_client(tmp_path):
    from rlhf_exp.tracking.resilient import ResilientClient
    tracker = MLflowTracker(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment_name="t",
                            artifact_location=str(tmp_path / "art"), retry_s=3.5)
    assert isinstance(tracker.client, ResilientClient) and tracker.client.retry_s == 3.5


def test_a_checkpoint_holds_no_step_whose_metrics_are_not_yet_tracked(tmp_path):
    """Lightning writes a step's metrics after the batch-end hooks, where the periodic checkpoint is
    saved: a crash between the two lost that step (a resumed run starts after it). The checkpoint now
    sends them first, and each step is still logged once."""
    import pytorch_lightning as pl
    import torch

    from rlhf_exp.modules.checkpoints import PeriodicCheckpoint

    class Module(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def training_step(self, batch, batch_idx):
            self.log("m", float(batch_idx), on_step=True, on_epoch=False)
            return (self.w - batch).pow(2).mean()

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    tracker = MLflowTracker(tracking_uri=f"sqlite:///{tmp_path}/m.db", experiment_name="t",
                            artifact_location=str(tmp_path / "art"), retry_s=15.0)
    seen = []

    class AtEachCheckpoint(pl.Callback):  # runs right after PeriodicCheckpoint: where a kill would hit
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if (trainer.fit_loop.total_batch_idx + 1) % 2 == 0:
                seen.append((batch_idx, sorted(m.step for m in run.client.get_metric_history(run.id, "m"))))

    with tracker.run("sft") as run:
        trainer = pl.Trainer(max_epochs=1, logger=run.lightning_logger(), log_every_n_steps=1, enable_progress_bar=False,
                             enable_checkpointing=False, default_root_dir=tmp_path,
                             enable_model_summary=False, callbacks=[PeriodicCheckpoint(tmp_path, 2), AtEachCheckpoint()])
        trainer.fit(Module(), torch.utils.data.DataLoader(torch.arange(6.0), batch_size=1))
    assert seen == [(1, [0, 1]), (3, [0, 1, 2, 3]), (5, [0, 1, 2, 3, 4, 5])]  # the checkpoint's step is tracked
    assert sorted(m.step for m in MlflowClient(tracker.tracking_uri).get_metric_history(run.id, "m")) == list(range(6))
