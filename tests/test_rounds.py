"""rounds=N (iterated RLHF, stages/rounds.py): which inputs each round reads, by hand; a smoke series of
two rounds end to end, its MLflow runs, killed for real in round 2 and resumed; collect=human waiting
for people between rounds."""
from types import SimpleNamespace
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlhf_exp.config import ConfigError
from rlhf_exp.stages import rounds
from rlhf_exp.stages.checks import validate_config
from tests.conftest import compose, settings


def series_settings(**overrides):
    return settings("series", **overrides)


# -- pure logic ------------------------------------------------------------------------------------

def test_each_round_reads_the_last_rounds_policy_and_every_rounds_pairs(tmp_path):
    run, sft = tmp_path, tmp_path / "sft"
    s = series_settings()  # the defaults: retrain, align from the last policy, against SFT
    built = validate_config(compose("rounds=3"))
    b1, out1 = rounds.round_inputs(s, built, run, 1, sft)
    b3, out3 = rounds.round_inputs(s, built, run, 3, sft)
    assert b1.collect.policy == b1.algorithm.policy == str(sft) and "reference" not in out1
    assert b3.collect.policy == b3.algorithm.policy == str(run / "round_2/policy")
    assert out3["reference"] == sft and out3["policy"] == sft  # π_ref and eval's reference: the original
    assert b3.reward_model.pairs == str(run / "round_3/pairs_so_far.jsonl") and "reward_model_start" not in out3
    assert rounds.feedback_files(run, 3, "pairs.jsonl") == [run / f"round_{k}/pairs.jsonl" for k in (1, 2, 3)]
    assert built.collect.policy is None  # the composed settings are left as they were


def test_each_series_setting_changes_what_a_round_reads(tmp_path):
    run, sft = tmp_path, tmp_path / "sft"
    built = validate_config(compose("rounds=2"))
    b, out = rounds.round_inputs(series_settings(align_from="sft"), built, run, 2, sft)
    assert b.algorithm.policy == str(sft) and b.collect.policy == str(run / "round_1/policy")
    assert "reference" not in out  # aligned from SFT: its own reference
    b, out = rounds.round_inputs(series_settings(reference="last"), built, run, 2, sft)
    assert b.algorithm.policy == str(run / "round_1/policy") and "reference" not in out
    _, out = rounds.round_inputs(series_settings(reward_model="continue"), built, run, 2, sft)
    assert out["reward_model_start"] == run / "round_1/reward_model"
    _, out = rounds.round_inputs(series_settings(reward_model="continue"), built, run, 1, sft)
    assert "reward_model_start" not in out  # round 1 has no earlier reward model
    b, _ = rounds.round_inputs(series_settings(), validate_config(compose(
        "rounds=2", "reward_model.objective=classifier", "reward=classifier")), run, 2, sft)
    assert b.reward_model.thumbs == str(run / "round_2/thumbs_so_far.jsonl")


def test_merged_pairs_keep_each_rounds_sets_apart(tmp_path):
    one, two = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    one.write_text('{"prompt": "p", "chosen": "a", "rejected": "b", "set_id": 0}\n'
                   '{"prompt": "p", "chosen": "a", "rejected": "c", "set_id": 4}\n')
    two.write_text('{"prompt": "p", "chosen": "x", "rejected": "y", "set_id": 0, "agreement": 1.0}\n'
                   '{"prompt": "q", "chosen": "x", "rejected": "z"}\n')
    rows = rounds.merged_rows([one, two], "pairs")
    assert [(r["set_id"] if "set_id" in r else None, r["round"]) for r in rows] == [(0, 1), (4, 1), (5, 2), (None, 2)]
    assert rows[2]["agreement"] == 1.0 and rows[3]["chosen"] == "x"
    thumbs = tmp_path / "t.jsonl"
    thumbs.write_text('{"prompt": "p", "completion": "a", "label": 1}\n')
    assert rounds.merged_rows([thumbs, thumbs], "thumbs") == [
        {"prompt": "p", "completion": "a", "label": 1, "round": k} for k in (1, 2)]


def test_ranked_sets_counts_the_sets_people_have_ranked(tmp_path):
    f = tmp_path / "feedback.jsonl"
    f.write_text('{"prompt": "p", "completions": ["a", "b"], "rankings": {}, "set_id": 0}\n'
                 '{"prompt": "q", "completions": ["a", "b"], "rankings": {"ann": [2, 1]}, "set_id": 1}\n')
    assert rounds.ranked_sets(f) == (1, 2)


def test_stage_seeds_are_fixed_and_differ_by_round_and_stage():
    assert rounds.stage_seed(0, 2, "collect") == rounds.stage_seed(0, 2, "collect")
    assert len({rounds.stage_seed(0, k, st) for k in (1, 2) for st in ("collect", "prepare")}) == 4
    assert all(0 <= rounds.stage_seed(s, 9, "eval") < 2 ** 32 for s in (0, 1, 12345))


def test_a_series_refuses_settings_that_would_fix_every_rounds_inputs():
    with pytest.raises(ConfigError) as err:
        validate_config(compose("rounds=2", "collect.policy=/tmp/p", "algorithm.ckpt_path=/tmp/c.ckpt"))
    assert "rounds = 2: collect.policy = '/tmp/p', algorithm.ckpt_path = '/tmp/c.ckpt'" in str(err.value)
    with pytest.raises(ConfigError, match=r"rounds = 2 with stage = 'align': .* expected stage=pipeline"):
        validate_config(compose("rounds=2", "stage=align"))
    with pytest.raises(ConfigError, match=r"rounds = 0: expected a value >= 1"):
        validate_config(compose("rounds=0"))
    for loose in ("true", "2.0"):  # not taken as 1 or 2: a series that silently does not happen
        with pytest.raises(ConfigError, match=r"rounds = .*: expected an integer"):
            validate_config(compose(f"rounds={loose}"))
    with pytest.raises(ConfigError) as err:
        validate_config(compose("rounds=2", "series.align_from=sft", "series.reference=last"), {"series": "default"})
    assert "conf/series/default.yaml" in str(err.value) and "expected reference=sft, or align_from=last" in str(err.value)
    with pytest.raises(ConfigError, match="series: unknown key 'reward_modle'"):
        validate_config(compose("rounds=2", "+series.reward_modle=continue"))
    assert validate_config(compose()).run.rounds == 1  # the default: the pipeline once


def test_a_finished_series_is_not_resumed(tmp_path):
    from rlhf_exp.errors import UserError
    (tmp_path / "run.json").write_text('{"runs": {}, "done": ["sft", "round_1", "round_2", "pipeline"], "outputs": {}}')
    cfg = compose("rounds=2", f"resume={tmp_path}", f"paths.output_dir={tmp_path}")
    with pytest.raises(UserError, match="that run finished .*; nothing to resume"):
        rounds.Series(cfg, validate_config(cfg), {})


def test_the_reward_model_of_a_continued_series_keeps_its_head(tiny, tmp_path):
    """series.reward_model=continue: round k's reward model starts from round k−1's, head and all;
    retrained, the backbone gets a fresh head."""
    from rlhf_exp.models.value import classification_head
    from rlhf_exp.stages.context import StageContext
    from rlhf_exp.stages.reward_model import backbone
    spec, tok = tiny
    rm = spec.sequence_classifier(tok)
    torch.nn.init.constant_(classification_head(rm).weight, 0.25)
    rm.save_pretrained(tmp_path / "rm")
    tok.save_pretrained(tmp_path / "rm")
    ctx = StageContext(None, SimpleNamespace(model=spec), tmp_path, None, {"reward_model_start": tmp_path / "rm"})
    _, model = backbone(ctx, None)
    assert torch.all(classification_head(model).weight == 0.25)
    fresh = spec.from_dir(tmp_path / "rm").sequence_classifier(tok)  # what retrain does to a backbone
    assert not torch.all(classification_head(fresh).weight == 0.25)


def test_the_reference_of_a_round_is_the_policy_the_series_names(tiny, tmp_path):
    """series.reference=sft with align_from=last: π_ref is the SFT policy, loaded frozen, not the policy
    that starts; without it, a frozen copy of the starting policy (and the policy itself for DPO's
    log-probs taken once)."""
    from rlhf_exp.stages.context import StageContext
    spec, tok = tiny
    torch.manual_seed(1)
    sft = spec.causal_lm(tok)
    sft.save_pretrained(tmp_path / "sft")
    tok.save_pretrained(tmp_path / "sft")
    torch.manual_seed(2)
    last = spec.causal_lm(tok)
    ctx = StageContext(None, SimpleNamespace(model=spec), tmp_path, None, {"reference": tmp_path / "sft"})
    ref = ctx.reference(last)
    assert all(torch.equal(a, b) for a, b in zip(ref.state_dict().values(), sft.state_dict().values()))
    assert not any(p.requires_grad for p in ref.parameters()) and ctx.reference(last, copy=False) is not last
    plain = StageContext(None, SimpleNamespace(model=spec), tmp_path, None, {})
    same = plain.reference(last)
    assert same is not last and all(torch.equal(a, b) for a, b in zip(same.state_dict().values(),
                                                                      last.state_dict().values()))
    assert plain.reference(last, copy=False) is last


def test_eval_counts_the_pairs_the_reward_orders_as_the_gold_does():
    from rlhf_exp.stages.eval import ordered_as_gold
    # two prompts, three answers each; pairs with gold gaps under 0.1 (and NaN) are left out
    rewards = [3.0, 1.0, 2.0, 0.0, 1.0, 5.0]
    gold = [0.9, 0.1, 0.95, 0.0, float("nan"), -1.0]
    assert ordered_as_gold(rewards, gold, 3) == [1.0, 1.0, 0.0]  # (0,1) (1,2) right; (3,5) wrong


# -- a smoke series, end to end --------------------------------------------------------------------

SMOKE = ["experiment=smoke", "rounds=2", "eval.best_of_n=null"]


def launch(cwd: Path, cache_dir, *overrides, wait=True):
    env = {**os.environ, "RLHF_EXP_CACHE": str(cache_dir), "HYDRA_FULL_ERROR": "1"}
    cmd = [sys.executable, "-m", "rlhf_exp", *overrides]
    if not wait:
        return subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def series(tmp_path_factory, cache_dir):
    """One uninterrupted smoke series of two rounds, tracked: (working dir, run dir, its stdout)."""
    where = tmp_path_factory.mktemp("series")
    proc = launch(where, cache_dir, *SMOKE, "hydra.run.dir=outputs/whole")
    return where, where / "outputs/whole", proc.stdout


def store(where):
    from mlflow.tracking import MlflowClient
    client = MlflowClient(f"sqlite:///{where}/outputs/mlflow.db")
    return client, client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])


def read_jsonl(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


@pytest.mark.e2e
def test_a_series_runs_each_round_from_the_last_rounds_policy_as_nested_runs(series):
    where, run_dir, stdout = series
    client, runs = store(where)
    parent = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    assert len(parent) == 1 and parent[0].data.tags["rounds"] == "2"
    pid = parent[0].info.run_id
    by_parent = {}
    for r in runs:
        by_parent.setdefault(r.data.tags.get("mlflow.parentRunId"), []).append(r)
    assert sorted(r.info.run_name for r in by_parent[pid]) == ["round_1", "round_2", "sft"]
    rounds_ = {r.info.run_name: r for r in by_parent[pid] if r.data.tags["stage"] == "round"}
    for k in (1, 2):
        stages = sorted(r.data.tags["stage"] for r in by_parent[rounds_[f"round_{k}"].info.run_id])
        assert stages == sorted(rounds.ROUND_STAGES)
        assert all(r.data.tags["round"] == str(k) for r in by_parent[rounds_[f"round_{k}"].info.run_id])
    assert all(r.info.status == "FINISHED" for r in runs) and len(runs) == 1 + 1 + 2 + 10

    # round k collects from (and aligns from) round k−1's policy; round 1 from SFT; π_ref stays SFT
    tags = {k: rounds_[f"round_{k}"].data.tags for k in (1, 2)}
    assert tags[1]["round.collect_policy"] == str(run_dir / "sft")
    assert tags[2]["round.collect_policy"] == tags[2]["round.align_policy"] == str(run_dir / "round_1/policy")
    assert tags[2]["round.reference"] == str(run_dir / "sft")
    assert f"from {run_dir / 'round_1/policy'} in" in stdout and f"from {run_dir / 'sft'} in" in stdout

    # the reward model's data grows: round 2 trains on both rounds' pairs
    m = {k: rounds_[f"round_{k}"].data.metrics for k in (1, 2)}
    assert m[1]["round/data/pairs_total"] == m[1]["round/data/pairs"] > 0
    assert m[2]["round/data/pairs_total"] == m[1]["round/data/pairs"] + m[2]["round/data/pairs"] > m[1]["round/data/pairs_total"]
    so_far = read_jsonl(run_dir / "round_2/pairs_so_far.jsonl")
    assert len(so_far) == m[2]["round/data/pairs_total"] and {r["round"] for r in so_far} == {1, 2}
    ids = {k: {r["set_id"] for r in so_far if r["round"] == k} for k in (1, 2)}
    assert ids[1] and ids[2] and not ids[1] & ids[2]
    history = client.get_metric_history(pid, "round/data/pairs_total")
    assert sorted((h.step, h.value) for h in history) == [(1, m[1]["round/data/pairs_total"]),
                                                         (2, m[2]["round/data/pairs_total"])]
    # each round evaluated on its own policy, on the series run round by round; the last is the result
    gold = sorted((h.step, h.value) for h in client.get_metric_history(pid, "eval/gold/policy"))
    assert [s for s, _ in gold] == [1, 2]
    last = json.loads((run_dir / "round_2/eval_summary.json").read_text())
    assert parent[0].data.metrics["eval/gold/policy"] == last["eval/gold/policy"] == gold[-1][1]
    summary = json.loads((run_dir / "rounds.json").read_text())
    assert [r["round"] for r in summary] == [1, 2] and summary[1]["eval/gold/policy"] == last["eval/gold/policy"]


def figures(run_dir):
    return [{k: v for k, v in r.items() if k.startswith(("round/", "eval/"))}
            for r in json.loads((run_dir / "rounds.json").read_text())]


def began(round_dir: Path) -> dict:
    """The stages a round's run record says have begun (empty until it is written)."""
    from rlhf_exp.stages.record import RECORD
    try:
        return json.loads((round_dir / RECORD).read_text())["runs"]
    except (FileNotFoundError, json.JSONDecodeError, KeyError):
        return {}


@pytest.mark.e2e
def test_a_series_killed_in_round_2_and_resumed_ends_as_the_uninterrupted_one(series, cache_dir):
    """kill -9 at a random moment of round 2 (any of its stages); `resume=` goes on at round 2 and the
    stage it stopped in, in the same MLflow runs; the figures, pairs, reward model and policy equal
    the uninterrupted series'. (It reuses that series' sft/, which is the same policy either way.)"""
    from safetensors.torch import load_file
    where, whole, _ = series
    killed = where / "outputs/killed"
    proc = launch(where, cache_dir, *SMOKE, f"reuse={whole}", "hydra.run.dir=outputs/killed", wait=False)
    stage = random.choice(rounds.ROUND_STAGES)  # a stage of round 2, chosen at random: killed as it begins
    try:
        end = time.monotonic() + 240
        while stage not in began(killed / "round_2"):  # not a fixed delay: a fast machine ends round 2 in seconds
            assert proc.poll() is None and time.monotonic() < end, f"the series ended before round 2's {stage} began"
            time.sleep(0.05)
        time.sleep(random.uniform(0, 0.3))
        assert proc.poll() is None, f"the series ended before it was killed in round 2's {stage}"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        proc.kill()
    before = json.loads((killed / "run.json").read_text())
    assert before["done"] == ["round_1"] and "round_2" in before["runs"]

    out = launch(where, cache_dir, "resume=outputs/killed").stdout
    assert "[round_1/" not in out and "[round_2/eval] done" in out
    after = json.loads((killed / "run.json").read_text())
    assert after["done"] == ["round_1", "round_2", "pipeline"]
    assert {k: after["runs"][k] for k in before["runs"]} == before["runs"]  # the same MLflow runs, continued
    assert figures(killed) == figures(whole)
    assert read_jsonl(killed / "round_2/pairs_so_far.jsonl") == read_jsonl(whole / "round_2/pairs_so_far.jsonl")
    for model in ("round_2/reward_model", "round_2/policy"):
        a, b = load_file(whole / model / "model.safetensors"), load_file(killed / model / "model.safetensors")
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), model

    _, runs = store(where)
    ours = [r for r in runs if r.data.params.get("paths.output_dir", "").endswith("killed")]
    assert sorted(r.data.tags["stage"] for r in ours) == sorted(["pipeline", "round", "round", *rounds.ROUND_STAGES * 2])
    assert all(r.info.status == "FINISHED" for r in ours)


@pytest.mark.e2e
def test_a_round_of_people_waits_for_their_rankings_and_resume_goes_on(series, cache_dir):
    """collect=human: a round stops after collect until every set is ranked; `resume=` then goes on,
    and the next round waits for its own people."""
    where, whole, _ = series
    run_dir = where / "outputs/human"
    args = [*SMOKE, "collect=human", "series.eval_every_round=false", f"reuse={whole}", "hydra.run.dir=outputs/human"]
    out = launch(where, cache_dir, *args).stdout
    feedback = run_dir / "round_1/feedback.jsonl"
    sets = read_jsonl(feedback)
    assert f"round 1 waits for people: 0 of the {len(sets)} sets of {feedback} are ranked" in out
    assert f"rlhf-exp resume={run_dir}" in out and not (run_dir / "round_1/pairs.jsonl").exists()
    assert (run_dir / "LABELING.md").is_file() or (run_dir / "round_1/LABELING.md").is_file()

    for s in sets:  # two people rank each set: the shorter answer first
        order = sorted(range(len(s["completions"])), key=lambda i: (len(s["completions"][i]), i))
        ranks = [order.index(i) + 1 for i in range(len(s["completions"]))]
        s["rankings"] = {"ann": ranks, "bob": ranks}
    feedback.write_text("".join(json.dumps(s) + "\n" for s in sets))
    out = launch(where, cache_dir, "resume=outputs/human").stdout
    assert "[round_1/prepare] done" in out and "[round_1/align] done" in out and "[round_1/eval]" not in out
    assert "round 2 waits for people: 0 of the" in out
    assert read_jsonl(run_dir / "round_1/pairs.jsonl") and (run_dir / "round_1/policy").is_dir()
    tags = json.loads((run_dir / "rounds.json").read_text())[0]
    assert tags["round.collect_policy"] == str(whole / "sft")
    assert f"from {run_dir / 'round_1/policy'} in" in out  # round 2 collected from round 1's policy
