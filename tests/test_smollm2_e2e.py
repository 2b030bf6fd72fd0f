"""`experiment=smollm2` end to end at tiny sizes: the whole life cycle on SmolLM2-135M-Instruct with
LoRA in the real-text world, judged (marked `real_model` and `e2e`: SmolLM2 and gemma-3-270m are
converted once per session, shared with test_chat_models.py and test_judge.py)."""
import json
import math

import pytest
from mlflow.tracking import MlflowClient

pytestmark = [pytest.mark.e2e, pytest.mark.real_model, pytest.mark.slow]  # minutes: `make test-all`

TINY = ["experiment=smollm2", "stage=[collect,prepare,reward_model,align,eval]", "data.prompts.everyday=4", "data.prompts.harmful=4", "data.prompts.truthful=4",
        "data.prompts.toxic=4", "data.prompts.factual=4", "data.prompts.edgy=4", "data.n_labelers=4", "data.labelers_per_set=3", "data.poor_labelers=1",
        "collect.max_new_tokens=10", "eval.max_new_tokens=10", "eval.samples_per_prompt=1", "eval.best_of_n=2",
        "trainer.enable_progress_bar=false"]


def runs_of(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    exp = client.get_experiment_by_name("smollm2")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def test_the_life_cycle_on_smollm2_with_dpo_then_ppo_on_its_feedback(cli, tmp_path):
    cli(*TINY, "algorithm=dpo", timeout=900)  # real models: about 2 minutes here, more on a busy machine
    run_dir = tmp_path / "outputs/run"
    feedback = [json.loads(ln) for ln in (run_dir / "feedback.jsonl").read_text().splitlines()]
    held = [json.loads(ln) for ln in (run_dir / "heldout.jsonl").read_text().splitlines()]
    assert feedback and held and not {json.dumps(r["prompt"]) for r in feedback} & {json.dumps(r["prompt"]) for r in held}
    assert all(len(r["completions"]) == 4 and r["rankings"] for r in feedback)  # K real completions, ranked
    labelers = json.loads((run_dir / "labelers.json").read_text())["labelers"]
    assert sorted(v["simulated_kind"] for v in labelers.values()).count("good") == 3
    assert (run_dir / "reward_model_adapter").is_dir() and (run_dir / "policy_adapter").is_dir()  # LoRA on SmolLM2
    assert not (run_dir / "sft").exists()  # without sft, SmolLM2 itself is the reference
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    for policy in ("ref", "policy", "bon"):
        assert math.isfinite(summary[f"eval/judge/{policy}"]) and math.isfinite(summary[f"eval/judge/{policy}_se"])
        assert 0 <= summary[f"eval/toxicity/{policy}"] <= 1 and 0 <= summary[f"eval/refusal/{policy}"] <= 1
        assert 0 <= summary[f"eval/truthful/{policy}"] <= 1
    assert "judge" in (run_dir / "eval_samples.md").read_text()

    client, runs = runs_of(tmp_path)
    stages = [r.data.tags["stage"] for r in runs]
    assert stages == ["pipeline", "collect", "prepare", "reward_model", "align", "eval"]
    rm = next(r for r in runs if r.data.tags["stage"] == "reward_model")
    assert rm.data.metrics["reward/gold/pairs"] > 0 and 0 <= rm.data.metrics["reward/gold/accuracy"] <= 1  # against the judge
    assert runs[0].data.metrics["eval/judge/policy"] == summary["eval/judge/policy"]

    # PPO on the same feedback and reward model: align and eval only, the proxy and the judge logged
    # each iteration (GRPO and RLOO log them through the same reward source)
    for algorithm in ("ppo",):
        cli(*TINY, f"algorithm={algorithm}", "reuse=outputs/run", f"hydra.run.dir=outputs/{algorithm}",
            "algorithm.max_steps=2", "algorithm.batch_size=4", "algorithm.minibatches=2", "algorithm.max_new_tokens=8",
            timeout=600)
        client, runs = runs_of(tmp_path)
        latest = [r for r in runs if r.data.tags.get("algorithm") == algorithm]
        assert [r.data.tags["stage"] for r in latest] == ["pipeline", "align", "eval"]
        align = latest[1]
        proxy = client.get_metric_history(align.info.run_id, f"{algorithm}/reward/score_mean")
        gold = client.get_metric_history(align.info.run_id, f"{algorithm}/gold/score_mean")
        assert [m.step for m in gold] == [m.step for m in proxy] and len(gold) == 2
        assert math.isfinite(latest[2].data.metrics["eval/judge/policy"])
