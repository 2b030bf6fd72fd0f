"""The `logger` group: MLflow tracking through `MlflowClient` (no global state), or none.

A pipeline is one parent run with a nested run per stage; a stage run alone is a top-level run.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Annotated, Iterator, Mapping

import pydantic
from pydantic import Field

from rlhf_exp.config import schema


class TrackedRun:
    """One MLflow run: params, metrics, tags and artifacts go to it."""

    def __init__(self, client, run_id: str, tracking_uri: str, experiment_id: str, continued: bool = False):
        self.client, self.id, self.tracking_uri, self.continued = client, run_id, tracking_uri, continued
        self.experiment_id = experiment_id

    def lightning_logger(self):
        """Lightning's MLFlowLogger writing into this run (metrics logged with `self.log`). In a run
        continued after a crash (`resume=`), a metric's steps that the dead process logged already
        are not logged again: resumed from its last checkpoint, the stage computes them anew, to the
        same values, and each step is in the history once. Within a process too, a metric's step is
        logged once (a checkpoint sends its step's metrics before Lightning does)."""
        from pytorch_lightning.loggers import MLFlowLogger
        done = {key: max(m.step for m in self.client.get_metric_history(self.id, key))
                for key in self.client.get_run(self.id).data.metrics} if self.continued else {}

        class Logger(MLFlowLogger):
            def log_metrics(self, metrics, step=None):  # each metric's step once (see PeriodicCheckpoint)
                fresh = {k: v for k, v in metrics.items() if step is None or step > done.get(k, -1)}
                if fresh:
                    super().log_metrics(fresh, step)
                    done.update({k: step for k in fresh if step is not None})

            def finalize(self, status="success"):  # the tracker ends the run (and keeps writes a dead store missed)
                pass
        logger = Logger(tracking_uri=self.tracking_uri, run_id=self.id)
        # through this run's client (writes wait out a store that fails), the run known: no lookup
        logger._mlflow_client, logger._experiment_id, logger._initialized = self.client, self.experiment_id, True
        return logger

    def ui_urls(self) -> tuple[str, str]:
        """This run's page and its experiment's runs table in the MLflow UI: on the tracking server,
        or where `mlflow ui` serves a local store by default. Both ask for the model-training view
        (`workflowType=machine_learning`): MLflow 3.17 opens an experiment on its GenAI overview
        unless the URL or the browser's remembered choice says otherwise."""
        experiment = self.experiment_id
        remote = self.tracking_uri.startswith(("http://", "https://"))
        base = f"{self.tracking_uri.rstrip('/')}/#/experiments/{experiment}" if remote else \
            f"http://127.0.0.1:5000/#/experiments/{experiment}"
        view = "?workflowType=machine_learning"
        return f"{base}/runs/{self.id}{view}", f"{base}/runs{view}"

    def log_params(self, params: Mapping[str, object]) -> None:
        from mlflow.entities import Param
        items = [Param(k, str(v)[:6000]) for k, v in params.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.id, params=items[i:i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int = 0) -> None:
        import time

        from mlflow.entities import Metric
        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), 1000):
            self.client.log_batch(self.id, metrics=items[i:i + 1000])

    def set_tags(self, tags: Mapping[str, object]) -> None:
        from mlflow.entities import RunTag
        self.client.log_batch(self.id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.id, str(path), artifact_path or path.name)
        else:
            self.client.log_artifact(self.id, str(path), artifact_path)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.id, text, artifact_file)

    def log_table(self, rows: list[dict], artifact_file: str) -> None:
        """Rows of equal keys as an MLflow table (shown in the run's artifacts)."""
        self.client.log_table(self.id, {k: [r[k] for r in rows] for k in rows[0]}, artifact_file)


class NullRun:
    """Tracking off: the same calls, doing nothing."""
    id = None

    def log_params(self, params): pass
    def log_metrics(self, metrics, step=0): pass
    def set_tags(self, tags): pass
    def log_artifact(self, path, artifact_path=None): pass
    def log_text(self, text, artifact_file): pass
    def log_table(self, rows, artifact_file): pass
    def lightning_logger(self): return False  # Lightning: no logger
    def ui_urls(self): return None


EXPERIMENT_KIND, MODEL_TRAINING = "mlflow.experimentKind", "custom_model_development"  # the UI's view


@schema
class MLflowTracker:
    """Runs in an MLflow tracking store (default: the sqlite file `outputs/mlflow.db`). It must answer
    when a run begins; later, while it fails, writes wait (tracking/resilient.py)."""
    tracking_uri: str
    experiment_name: str
    artifact_location: str
    retry_s: Annotated[float, Field(gt=0)]  # while the store fails, writes wait and it is tried again this often

    _client = None  # made on first use
    _reaped = False  # dead runs of this machine marked KILLED (once per process)

    @pydantic.model_validator(mode="after")
    def _named(self):
        if not self.experiment_name.strip():
            raise ValueError("experiment_name = '': expected a non-empty name")
        return self

    @property
    def client(self):
        """The MlflowClient; a sqlite store is created and migrated by one process at a time (parallel
        sweep jobs starting on a fresh store would otherwise race to create its tables and lose runs)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            from rlhf_exp.tracking.resilient import ResilientClient
            if self.tracking_uri.startswith(("http://", "https://")):  # fail fast and let the writes wait,
                for key, value in (("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2"),  # not minutes of retries
                                   ("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1"), ("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")):
                    os.environ.setdefault(key, value)
            with self._store_lock():  # the client creates (or migrates) the store when it is made
                self._client = ResilientClient(MlflowClient(self.tracking_uri), self.retry_s)
        return self._client

    @contextlib.contextmanager
    def keeping_writes(self, run_dir: Path) -> Iterator[None]:
        """Whatever happens inside, what a failing store could not take is then written beside the run."""
        try:
            yield
        finally:
            if self._client is not None:
                self._client.spill(run_dir)

    @contextlib.contextmanager
    def _store_lock(self):
        """An exclusive lock beside a sqlite store (`mlflow.db.lock`), for creating it and its
        experiment; nothing for a tracking server, which serialises its own writes."""
        if not self.tracking_uri.startswith("sqlite:///"):
            yield
            return
        import fcntl
        db = Path(self.tracking_uri[len("sqlite:///"):])
        db.parent.mkdir(parents=True, exist_ok=True)
        with open(db.with_name(db.name + ".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def experiment_id(self) -> str:
        """The experiment's id, created on first use (one process at a time). It is tagged as model
        training (`mlflow.experimentKind`), so the MLflow UI opens it on its runs table rather than
        on the GenAI overview it shows by default. With a tracking server, its own artifact store
        keeps the artifacts; with a local store, `artifact_location`. Parallel jobs on a server, which
        no file lock reaches, may race to create it: the loser takes the winner's."""
        client = self.client
        with self._store_lock():
            exp = client.get_experiment_by_name(self.experiment_name)
            if exp is None:
                remote = self.tracking_uri.startswith(("http://", "https://"))
                location = None if remote else Path(self.artifact_location).resolve().as_uri()
                from mlflow.exceptions import MlflowException
                try:
                    return client.create_experiment(self.experiment_name, artifact_location=location,
                                                    tags={EXPERIMENT_KIND: MODEL_TRAINING})
                except MlflowException as e:  # a parallel job on a tracking server made it first
                    if e.error_code != "RESOURCE_ALREADY_EXISTS":
                        raise
                    exp = client.get_experiment_by_name(self.experiment_name)
            if exp.tags.get(EXPERIMENT_KIND) is None:  # made by an earlier version
                client.set_experiment_tag(exp.experiment_id, EXPERIMENT_KIND, MODEL_TRAINING)
            return exp.experiment_id

    @contextlib.contextmanager
    def run(self, name: str, tags: Mapping[str, object] | None = None, parent: TrackedRun | None = None,
            continue_id: str | None = None) -> Iterator[TrackedRun]:
        """Start a run (nested under `parent` if given), or continue run `continue_id` (one whose
        process died: running again, owned by this process); end it FINISHED, or FAILED on an error."""
        from mlflow.entities import RunTag
        from mlflow.utils.mlflow_tags import MLFLOW_PARENT_RUN_ID
        tags = {k: str(v) for k, v in (tags or {}).items()}
        if parent is not None:
            tags[MLFLOW_PARENT_RUN_ID] = parent.id
        experiment = self.experiment_id()
        if not self._reaped:
            self._reaped = reap_dead_runs(self.client, experiment)
        if continue_id:
            self.client.update_run(continue_id, status="RUNNING")
            self.client.log_batch(continue_id, tags=[RunTag(k, v) for k, v in process_tags().items()])
            info = self.client.get_run(continue_id).info
        else:
            info = self.client.create_run(experiment, run_name=name, tags={**tags, **process_tags()}).info
        run = TrackedRun(self.client, info.run_id, self.tracking_uri, experiment, continued=bool(continue_id))
        status = "FAILED"
        try:
            yield run
            status = "FINISHED"
        except KeyboardInterrupt:
            status = "KILLED"
            raise
        except Exception as err:  # recorded with the run, then passed on
            run.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
            raise
        finally:
            self.client.set_terminated(info.run_id, status)


HOST, PID, STARTED = "rlhf_exp.host", "rlhf_exp.pid", "rlhf_exp.pid_started"


def _started(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from /proc), or None if it is not running;
    with the pid, it names a process even after the pid is reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name
    except (OSError, IndexError):
        return None


def process_tags() -> dict[str, str]:
    """The machine and process that own a run, so that a later process can tell it died."""
    import socket
    return {HOST: socket.gethostname(), PID: str(os.getpid()), STARTED: str(_started(os.getpid()))}


def reap_dead_runs(client, experiment_id: str) -> bool:
    """Mark KILLED the runs left RUNNING by a process of this machine that no longer exists (killed,
    or out of memory): MLflow would show them running forever. Runs of other machines are left as
    they are (nothing here can tell whether their process lives)."""
    import socket
    host = socket.gethostname().replace("'", "")
    for run in client.search_runs([experiment_id], f"attributes.status = 'RUNNING' and tags.`{HOST}` = '{host}'",
                                  max_results=1000):
        tags = run.data.tags
        if not tags.get(PID, "").isdigit() or _started(int(tags[PID])) == tags.get(STARTED):
            continue  # its process still runs
        client.set_tag(run.info.run_id, "error", f"its process (pid {tags[PID]} on {host}) died without ending it; "
                                                 "marked KILLED by a later run")
        client.set_terminated(run.info.run_id, "KILLED")
    return True


@schema
class NoTracker:
    """`logger=none`: nothing is tracked."""

    @contextlib.contextmanager
    def run(self, name, tags=None, parent=None, continue_id=None) -> Iterator[NullRun]:
        yield NullRun()

    @contextlib.contextmanager
    def keeping_writes(self, run_dir) -> Iterator[None]:
        yield
