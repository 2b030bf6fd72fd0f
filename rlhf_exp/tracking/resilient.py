"""Tracking that never stops training and never loses a write: an MlflowClient whose writes, when the
store is down, locked or unreachable, wait in order in memory and go out once it answers again; what
is still waiting when the run ends is written beside it (`mlflow_pending.jsonl`), and
`python -m rlhf_exp.tracking.resilient FILE [--tracking-uri URI]` sends it later."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

WRITES = ("log_batch", "log_artifact", "log_artifacts", "log_text", "log_table", "set_terminated", "set_tag",
          "update_run")
# what a store answers to a write that is wrong, not to one it cannot take now: raised, never retried
REFUSALS = ("INVALID_PARAMETER_VALUE", "RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST")
PENDING = "mlflow_pending.jsonl"


def refused(err: Exception) -> bool:
    return getattr(err, "error_code", None) in REFUSALS


class ResilientClient:
    """Wraps an MlflowClient. Reads pass through. A write joins a queue that is sent in order; when
    the store fails (anything but a refusal of the write itself), the queue waits and is tried again
    with the next write after `retry_s` seconds, so that training does not wait on a dead store.
    The first failure and the recovery are announced on stderr."""

    def __init__(self, client, retry_s: float = 15.0):
        self._client, self.retry_s = client, retry_s
        self.queue: list[tuple[str, tuple, dict]] = []
        self._next_try, self.down_since = 0.0, None

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if name not in WRITES:
            return attr

        def write(*args, **kwargs):
            self.queue.append((name, args, kwargs))
            self.flush()
        return write

    def flush(self, force: bool = False) -> bool:
        """Send what waits, in order; False if the store still fails (the rest keeps waiting)."""
        if self.queue and (force or time.monotonic() >= self._next_try):
            while self.queue:
                name, args, kwargs = self.queue[0]
                try:
                    getattr(self._client, name)(*args, **kwargs)
                except Exception as err:
                    if refused(err):
                        self.queue.pop(0)
                        raise
                    if self.down_since is None:
                        self.down_since = time.time()
                        print(f"warning: the tracking store failed ({type(err).__name__}: {str(err)[:200]}); "
                              f"training goes on, and what it logs waits to be sent (retried every "
                              f"{self.retry_s:g} s)", file=sys.stderr)
                    self._next_try = time.monotonic() + self.retry_s
                    return False
                self.queue.pop(0)
            if self.down_since is not None:
                print(f"the tracking store answers again: what waited since "
                      f"{time.strftime('%H:%M:%S', time.localtime(self.down_since))} is logged", file=sys.stderr)
                self.down_since = None
        return not self.queue

    def spill(self, run_dir: Path) -> Path | None:
        """After a last try, write what still waits into run_dir/mlflow_pending.jsonl (appended to
        what an earlier process left) and say so; None if nothing waits."""
        if self.flush(force=True):
            return None
        path = Path(run_dir) / PENDING
        with path.open("a", encoding="utf-8") as fh:
            for name, args, kwargs in self.queue:
                fh.write(json.dumps({"call": name, "args": [encode(a) for a in args],
                                     "kwargs": {k: encode(v) for k, v in kwargs.items()}}) + "\n")
        print(f"warning: the tracking store did not answer; {len(self.queue)} write(s) to it are kept in {path}. "
              f"Send them when it is back: python -m rlhf_exp.tracking.resilient {path}", file=sys.stderr)
        self.queue.clear()
        return path


def encode(value):
    """MLflow's entities (Metric, Param, RunTag) and lists of them as JSON."""
    from mlflow.entities import Metric, Param, RunTag
    if isinstance(value, list):
        return [encode(v) for v in value]
    if isinstance(value, Metric):
        return {"metric": [value.key, value.value, value.timestamp, value.step]}
    if isinstance(value, Param):
        return {"param": [value.key, value.value]}
    if isinstance(value, RunTag):
        return {"tag": [value.key, value.value]}
    return value


def decode(value):
    from mlflow.entities import Metric, Param, RunTag
    if isinstance(value, list):
        return [decode(v) for v in value]
    if isinstance(value, dict) and len(value) == 1:
        (kind, fields), = value.items()
        entity = {"metric": Metric, "param": Param, "tag": RunTag}.get(kind)
        if entity is not None:
            return entity(*fields)
    return value


def replay(path: Path, client) -> int:
    """Send the writes kept in `path`, in order; the file is removed once all went out."""
    lines = [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    for row in lines:
        getattr(client, row["call"])(*decode(row["args"]), **{k: decode(v) for k, v in row["kwargs"].items()})
    Path(path).unlink()
    return len(lines)


def main(argv=None) -> None:
    from mlflow.tracking import MlflowClient
    p = argparse.ArgumentParser(description="Send the MLflow writes a run kept while its store was down.")
    p.add_argument("pending", type=Path, help=f"a run's {PENDING}")
    p.add_argument("--tracking-uri", default="sqlite:///outputs/mlflow.db")
    args = p.parse_args(argv)
    print(f"{replay(args.pending, MlflowClient(args.tracking_uri))} write(s) sent to {args.tracking_uri}")


if __name__ == "__main__":
    main()
