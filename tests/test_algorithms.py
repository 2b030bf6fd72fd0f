"""The algorithm record (`modules/algorithms.py`) is the only list of algorithms: every reader (align,
resuming, the strategy checks, compare, the frontier) goes through it, for every algorithm it holds."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from rlhf_exp.config import ConfigError, conf_dir
from rlhf_exp.modules.algorithms import record_of, records
from rlhf_exp.modules.checkpoints import check_resume
from rlhf_exp.stages.checks import validate_config
from rlhf_exp.tracking.frontier import frontier_points
from tests.conftest import compose, settings
from tests.test_compare import job

RECORDS = records()
PACKAGE = Path(__file__).resolve().parents[1] / "rlhf_exp"
# where naming several algorithms is the point: the benchmark's choice of what it times
MAY_NAME_SEVERAL = {"bench.py"}


def test_every_algorithm_config_has_a_record_and_every_record_a_stage():
    files = sorted(p.stem for p in (conf_dir() / "algorithm").glob("*.yaml"))
    assert sorted(RECORDS) == files and {"ppo", "dpo", "kto", "online_dpo", "grpo", "rloo", "simpo"} <= set(files)
    for name, r in RECORDS.items():
        target = yaml.safe_load((conf_dir() / "algorithm" / f"{name}.yaml").read_text())["_target_"]
        assert f"{r.settings.__module__}.{r.settings.__qualname__}" == target
        assert callable(r.run()) and r.run().__module__.startswith("rlhf_exp.stages.")
        assert record_of(settings("algorithm", name)) is r
        assert r.curve.startswith(f"{name}/") and r.kl_knob.startswith("algorithm.")
        assert r.kl_knob.removeprefix("algorithm.") in yaml.safe_load((conf_dir() / "algorithm" / f"{name}.yaml").read_text())
        assert not r.shardable or r.on_policy                  # what shards is what fsdp1 refuses
        assert (r.resumes_by == "epochs") == (not r.on_policy)
    assert record_of(settings("sft")) is None                  # a stage's settings that are no algorithm


def test_no_module_lists_the_algorithms_but_their_records():
    """A module that names three or more algorithms as strings is a table of every algorithm, which
    the record replaces; an algorithm's own modules name themselves (GRPO and RLOO share theirs)."""
    offenders = {}
    for path in PACKAGE.rglob("*.py"):
        named = {n.value for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Constant)
                 and isinstance(n.value, str) and n.value in RECORDS}
        if len(named) >= 3 and path.name not in MAY_NAME_SEVERAL:
            offenders[str(path.relative_to(PACKAGE))] = sorted(named)
    assert not offenders, f"algorithm names listed outside the records: {offenders}"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_resuming_reads_the_record(tmp_path, name):
    """An on-policy algorithm's checkpoint is read for its loop state under its own name; the others
    by Lightning's epochs."""
    import torch
    ckpt = tmp_path / "last.ckpt"
    torch.save({"state_dict": {}, "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 9}}}},
                "other": {"iteration": 0}}, ckpt)
    s = settings("algorithm", name, ckpt_path=str(ckpt))
    if RECORDS[name].resumes_by == "epochs":
        with pytest.raises(Exception, match=f"finished 9 epoch.* algorithm.epochs = {s.epochs}"):
            check_resume(s, "algorithm.ckpt_path")
    else:
        with pytest.raises(Exception, match=f"expected its loop state under '{name}'"):
            check_resume(s, "algorithm.ckpt_path")


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_the_strategy_checks_read_the_record(name):
    r = RECORDS[name]
    if r.on_policy:
        with pytest.raises(ConfigError, match=f"algorithm={name}: an algorithm that generates while it trains cannot"):
            validate_config(compose("trainer=fsdp", f"algorithm={name}"))
    if r.shardable:
        validate_config(compose("trainer=fsdp2", "stage=align", f"algorithm={name}"))
    else:
        with pytest.raises(ConfigError, match=f"trainer=fsdp2 with algorithm={name}: only grpo, ppo, rloo shard"):
            validate_config(compose("trainer=fsdp2", "stage=align", f"algorithm={name}"))


def test_the_frontier_labels_each_method_by_its_records_knob():
    jobs = [job(f"{name}-{seed}", name, {r.kl_knob: "0.3", "seed": str(seed)}, eval__kl__policy_ref=0.1 * seed,
                eval__gold__policy=0.5) for name, r in RECORDS.items() for seed in (0, 1)]
    points = {p.method: p for p in frontier_points(jobs)}
    assert set(points) == set(RECORDS) and all(p.setting == "0.3" and p.n == 2 for p in points.values())


# -- every algorithm through the record, end to end ------------------------------------------------

@pytest.mark.e2e
@pytest.mark.parametrize("name", sorted(RECORDS))
def test_every_algorithm_runs_at_smoke_size_resumes_and_is_compared(cli, tmp_path, base, name):
    """From the session's smoke run (`reuse=`): align and eval at smoke size; the run is tagged with
    the record's name and its align run logged the record's curve; compare loads the job with that
    curve and the frontier has its point; then align resumes from its checkpoint for one more step
    (on-policy: iteration) or epoch and goes on from where it stopped."""
    from mlflow.tracking import MlflowClient
    from rlhf_exp.tracking.compare import load_jobs
    r = RECORDS[name]
    proc = cli("experiment=smoke", f"algorithm={name}", "reuse=outputs/base")
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    [job] = load_jobs(client, "rlhf", None)
    assert job.status == "FINISHED" and job.algorithm == name and job.curve, proc.stdout[-2000:]
    assert {"eval/gold/policy", "eval/kl/policy_ref"} <= set(job.metrics)
    assert [p.method for p in frontier_points([job]) if p.method != "best-of-n"] == [name]
    assert (tmp_path / "outputs/run/policy/config.json").is_file() and f"align ({name}" in proc.stdout
    last_step = job.curve[-1][0]

    ckpt = tmp_path / "outputs/run/checkpoints/align/last.ckpt"
    key = "epochs" if r.resumes_by == "epochs" else "max_steps"
    more = f"algorithm.{key}={int(job.params[f'algorithm.{key}']) + 1}"  # one more epoch, or iteration
    proc = cli("experiment=smoke", f"algorithm={name}", "reuse=outputs/base", "stage=[align]",
               f"algorithm.ckpt_path={ckpt}", more)
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id], "tags.stage = 'align'",
                              order_by=["attributes.start_time DESC"])
    steps = [m.step for m in client.get_metric_history(runs[0].info.run_id, r.curve)]
    assert runs[0].info.status == "FINISHED" and steps and min(steps) > last_step  # went on, not from the start
