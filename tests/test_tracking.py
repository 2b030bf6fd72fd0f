"""MLflow tracking through the sqlite store: nested runs, params, metrics, artifacts, statuses."""
import pytest
from mlflow.tracking import MlflowClient

from rlhf_exp.tracking.tracker import MLflowTracker, NoTracker


def test_parent_and_nested_runs(tmp_path):
    uri = f"sqlite:///{tmp_path}/db/mlflow.db"
    tracker = MLflowTracker(tracking_uri=uri, experiment_name="t", artifact_location=str(tmp_path / "art"))
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
    tracker = MLflowTracker(tracking_uri=uri, experiment_name="t", artifact_location=str(tmp_path / "art"))
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
    MLflowTracker(tracking_uri=uri, experiment_name="old", artifact_location=str(tmp_path / "art")).experiment_id()
    assert MlflowClient(uri).get_experiment_by_name("old").tags["mlflow.experimentKind"] == "custom_model_development"


def test_an_experiment_made_by_a_parallel_job_between_lookup_and_creation_is_taken(tmp_path):
    """On a tracking server no file lock reaches, two sweep jobs may both find no experiment and
    both create it: the loser's create fails with RESOURCE_ALREADY_EXISTS and it takes the winner's."""
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    tracker = MLflowTracker(tracking_uri=uri, experiment_name="race", artifact_location=str(tmp_path / "art"))
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
