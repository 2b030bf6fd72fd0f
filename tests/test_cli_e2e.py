"""`rlhf-exp` end to end on the synthetic world and on files: outputs, exit codes, MLflow records."""
import json
import math

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.e2e


def mlflow_runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    exp = client.get_experiment_by_name("rlhf")
    return client, client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])


def read_jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_prepare_on_the_synthetic_world(cli, tmp_path):
    proc = cli("stage=prepare")
    run_dir = tmp_path / "outputs/run"
    pairs = read_jsonl(run_dir / "pairs.jsonl")
    labelers = json.loads((run_dir / "labelers.json").read_text())["labelers"]
    assert len(pairs) > 300 and set(pairs[0]) >= {"prompt", "chosen", "rejected", "agreement"}
    assert all(p["chosen"] != p["rejected"] for p in pairs)
    poor = {k for k, v in labelers.items() if v["simulated_kind"] != "good"}
    aside = {k for k, v in labelers.items() if v["set_aside"]}
    assert len(poor) == 2 and aside == poor  # it sets aside the poor labelers it simulated
    assert "SET ASIDE" in proc.stdout and f"pairs written: {len(pairs)}" in proc.stdout

    client, runs = mlflow_runs(tmp_path)
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED" and run.info.run_name == "prepare"
    assert run.data.tags["stage"] == "prepare" and run.data.tags["algorithm"] == "ppo"
    assert run.data.params["data.n_labelers"] == "6" and run.data.params["prepare.min_agreement"] == "0.2"
    assert "data._target_" not in run.data.params
    assert run.data.metrics["prepare/data/pairs"] == len(pairs)
    assert run.data.metrics["prepare/labelers/set_aside"] == 2
    assert run.data.metrics["prepare/labelers/kendall_w_kept"] > run.data.metrics["prepare/labelers/kendall_w_all"]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert artifacts >= {"pairs.jsonl", "pairs.parquet", "labelers.json", "feedback.jsonl", "prepare_summary.json",
                         "config.yaml", "labelers_over_time.png", "labelers_matrix.png"}

    # the simulated feedback, read back as a file, gives the same pairs
    cli("stage=prepare", "data=files", "data.feedback=outputs/run/feedback.jsonl", "hydra.run.dir=outputs/again")
    assert read_jsonl(tmp_path / "outputs/again/pairs.jsonl") == pairs


def test_default_pipeline_runs_every_stage_as_nested_runs(cli, tmp_path, core_python):
    proc = cli("experiment=smoke", python=core_python)  # installed from the wheel, no extras (test_core_install.py)
    client, runs = mlflow_runs(tmp_path)
    parent = [r for r in runs if r.data.tags["stage"] == "pipeline"]
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    assert len(parent) == 1 and list(children) == ["sft", "collect", "prepare", "reward_model", "align", "eval"]
    assert all(r.data.tags["mlflow.parentRunId"] == parent[0].info.run_id for r in children.values())
    assert all(r.info.status == "FINISHED" for r in runs)
    assert parent[0].data.params["data.n_labelers"] == "4"  # the smoke experiment's size

    run_dir = tmp_path / "outputs/run"
    sft = children["sft"].data.metrics
    assert {"sft/train/loss", "sft/val/loss", "sft/perf/seconds"} <= set(sft)
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification
    assert AutoModelForCausalLM.from_pretrained(run_dir / "sft").config.n_embd == 32
    assert "## epoch 0" in (run_dir / "sft_samples.txt").read_text()

    from rlhf_exp.worlds.synthetic import World
    n_prompts = len(World(seed=0, heldout_fraction=0.2).train_prompts)  # smoke: one set per prompt
    feedback = read_jsonl(run_dir / "feedback.jsonl")
    assert len(feedback) == n_prompts and all(len(r["completions"]) == 3 and r["rankings"] for r in feedback)
    assert read_jsonl(run_dir / "heldout.jsonl")[0].keys() == {"prompt", "completions"}
    assert children["collect"].data.metrics["collect/data/completions"] == n_prompts * 3
    pairs = read_jsonl(run_dir / "pairs.jsonl")
    assert children["prepare"].data.metrics["prepare/data/pairs"] == len(pairs) > 0

    rm = children["reward_model"].data.metrics
    assert {"reward/train/loss", "reward/val/loss", "reward/val/accuracy", "reward/val/margin",
            "reward/norm/mean", "reward/norm/std", "reward/gold/accuracy"} <= set(rm)
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "reward_model")
    assert model.config.num_labels == 1
    assert model.config.reward_mean == pytest.approx(rm["reward/norm/mean"])
    assert {a.path for a in client.list_artifacts(children["reward_model"].info.run_id)} >= {"reward_model", "config.yaml"}
    assert "[reward_model] done" in proc.stdout

    ppo = client.get_metric_history(children["align"].info.run_id, "ppo/reward/score_mean")
    assert [m.step for m in ppo] == [0, 1]  # one point per PPO iteration (smoke: 2)
    align = children["align"].data.metrics
    assert {"ppo/kl/ref", "ppo/kl/coef", "ppo/policy/clipfrac", "ppo/value/explained_var",
            "ppo/response/eos_rate", "ppo/perf/tokens_per_s", "align/perf/seconds"} <= set(align)
    assert children["align"].data.params["algorithm.clip_eps"] == "0.2"
    assert AutoModelForCausalLM.from_pretrained(run_dir / "policy").config.n_embd == 32
    assert len(read_jsonl(run_dir / "ppo_samples.jsonl")) == 8  # 4 per iteration
    assert (run_dir / "checkpoints/align/last.ckpt").is_file()

    ev = children["eval"].data.metrics
    keys = ["eval/reward/ref", "eval/reward/policy", "eval/gold/ref", "eval/gold/policy",
            "eval/toxicity/ref", "eval/toxicity/policy", "eval/kl/policy_ref", "eval/win_rate",
            "eval/reward/bon", "eval/gold/bon", "eval/toxicity/bon", "eval/kl/bon_ref", "eval/kl/bon_bound",
            "eval/reward/ref_se", "eval/reward/policy_se", "eval/kl/policy_ref_se", "eval/win_rate_se"]
    assert set(keys) <= set(ev) and 0 <= ev["eval/win_rate"] <= 1
    # best-of-2 (smoke): the reward model picks, so its reward beats the reference's; KL within the bound
    assert ev["eval/reward/bon"] > ev["eval/reward/ref"]
    assert 0 <= ev["eval/kl/bon_ref"] <= ev["eval/kl/bon_bound"] and ev["eval/kl/bon_bound"] == pytest.approx(math.log(2) - 0.5)
    summary = json.loads((run_dir / "eval_summary.json").read_text())
    n_heldout = len(World(seed=0, heldout_fraction=0.2).heldout_prompts)
    assert summary["responses_per_policy"] == 2 * n_heldout and summary["eval/win_rate"] == ev["eval/win_rate"]
    assert (run_dir / "eval_rewards.png").read_bytes()[:4] == b"\x89PNG"
    assert (run_dir / "eval_samples.md").read_text().count("- **aligned**") == 2 * n_heldout
    assert {a.path for a in client.list_artifacts(children["eval"].info.run_id)} >= {
        "eval_rewards.png", "eval_samples.md", "eval_summary.json"}
    assert "== before (reference) and after (aligned)" in proc.stdout and "win rate" in proc.stdout

    # align and eval alone, from the pipeline's outputs; align resumes from its checkpoint
    out = "outputs/run"
    cli("stage=align", "experiment=smoke", f"algorithm.policy={out}/sft", f"reward.path={out}/reward_model",
        "algorithm.max_steps=3", f"algorithm.ckpt_path={out}/checkpoints/align/last.ckpt", "hydra.run.dir=outputs/more")
    _, runs = mlflow_runs(tmp_path)
    resumed = client.get_metric_history(runs[-1].info.run_id, "ppo/reward/score_mean")
    assert [m.step for m in resumed] == [2]  # iterations 0 and 1 were done before
    proc = cli("stage=eval", "experiment=smoke", "eval.policy=outputs/more/policy", f"eval.reference={out}/sft",
               "reward=gold", "hydra.run.dir=outputs/more")
    assert "aligned" in proc.stdout and (tmp_path / "outputs/more/eval_summary.json").is_file()


def test_stages_alone_with_human_labelers(cli, tmp_path):
    """Hugging Face datasets -> sft and collect for people (LABELING.md, empty rankings) in one command ->
    filled by hand -> prepare -> reward_model: a conversational demonstrations dataset trains the SFT
    policy; a prompt-only CSV gives the prompts that collect answers."""
    import datasets
    missing = cli("stage=eval", check=False)
    assert missing.returncode == 2 and "eval.policy: no input given" in missing.stderr

    demos = [{"messages": [{"role": "user", "content": f"Name a number above {i}."},
                           {"role": "assistant", "content": f"{i + 1}."}]} for i in range(12)]
    datasets.Dataset.from_list(demos).to_parquet(str(tmp_path / "demos.parquet"))
    prompts = [f"Name a colour, please ({i})." for i in range(3)]
    datasets.Dataset.from_dict({"prompt": prompts}).to_csv(str(tmp_path / "prompts.csv"), index=False)
    tiny = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "trainer.enable_progress_bar=false"]
    cli("stage=[sft,collect]", "data=hf", "data.demonstrations=demos.parquet", "data.prompts=prompts.csv",
        "collect=human", "sft.epochs=1", "collect.sets_per_prompt=2", "collect.max_new_tokens=6",
        "data.n_completions=3", *tiny, "hydra.run.dir=outputs/collect")
    assert (tmp_path / "outputs/collect/sft/config.json").is_file()
    sets = read_jsonl(tmp_path / "outputs/collect/feedback.jsonl")
    assert [r["prompt"] for r in sets] == [p for p in prompts for _ in range(2)]
    assert all(len(r["completions"]) == 3 and r["rankings"] == {} for r in sets)
    assert "Rank the answers from most to least helpful" in (tmp_path / "outputs/collect/LABELING.md").read_text()

    for r in sets:  # two people fill in their rankings
        r["rankings"] = {"ann": [1, 2, 3], "bob": [1, 3, 2]}
    (tmp_path / "filled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in sets))
    cli("stage=prepare", "data=files", "data.feedback=filled.jsonl", "hydra.run.dir=outputs/prepare")
    pairs = read_jsonl(tmp_path / "outputs/prepare/pairs.jsonl")
    # consensus (1, 2.5, 2.5): the first completion beats the other two, which tie
    expected = []
    for r in sets:
        a, b, c = r["completions"]
        expected += [(r["prompt"], a, x) for x in (b, c) if x != a and (r["prompt"], a, x) not in expected]
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == expected

    cli("stage=reward_model", "reward_model.epochs=1", *tiny, "reward_model.pairs=outputs/prepare/pairs.jsonl",
        "reward_model.backbone=outputs/collect/sft", "hydra.run.dir=outputs/reward")
    assert (tmp_path / "outputs/reward/reward_model/config.json").is_file()


def test_bad_input_exits_non_zero_names_every_bad_line_and_writes_no_pairs(cli, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n".join([
        json.dumps({"prompt": "p", "completions": ["a", "b"], "rankings": {"x": [1, 2]}}),
        "{oops",
        json.dumps({"prompt": "p", "completions": ["a", "b"], "rankings": {"x": [1, 3]}}),
        json.dumps({"prompt": "p", "completions": ["a", "b"]}),
    ]) + "\n")
    proc = cli("stage=prepare", "data=files", "data.feedback=bad.jsonl", check=False)
    assert proc.returncode != 0
    assert "bad.jsonl: 3 bad line(s)" in proc.stderr
    assert "line 2: bad JSON" in proc.stderr
    assert "line 3: field 'rankings.x[1]': expected an integer rank 1..2 or \"F\", got 3" in proc.stderr
    assert "line 4: field 'rankings': missing" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "outputs/run/pairs.jsonl").exists()
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"]


@pytest.mark.parametrize("stage", [["stage=reward_model", "reward_model.pairs=pairs.jsonl"],
                                   ["stage=align", "algorithm=dpo", "algorithm.pairs=pairs.jsonl"]],
                         ids=["reward_model", "align_dpo"])
def test_a_bad_hand_made_pairs_file_is_refused_line_by_line(cli, tmp_path, stage):
    (tmp_path / "pairs.jsonl").write_text("\n".join([
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}),
        json.dumps({"prompt": "p", "chosen": "a"}),
        json.dumps({"prompt": "p", "chosen": "a", "rejected": ["b"]}),
        json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "margin": "x"}),
    ]) + "\n")
    proc = cli(*stage, "experiment=smoke", "logger=none", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "pairs.jsonl: 3 bad line(s); nothing was written" in proc.stderr
    assert "line 2: field 'rejected': missing (expected a string)" in proc.stderr
    assert "line 3: field 'rejected': expected a string, got list" in proc.stderr
    assert "line 4: field 'margin': expected a number, got 'x'" in proc.stderr
    assert not any((tmp_path / "outputs/run").glob("*/config.json"))  # no model written


def test_config_errors_stop_before_any_work(cli, tmp_path):
    proc = cli("stage=prepare", "data.tie_rate=2", "+data.labelrs=3", check=False)
    assert proc.returncode == 2
    assert "data.tie_rate = 2.0: expected a value >= 0 and <= 1" in proc.stderr
    assert "unknown key 'labelrs'" in proc.stderr
    assert not (tmp_path / "outputs/mlflow.db").exists()


def test_binary_feedback_file_and_logger_none(cli, tmp_path):
    rows = [{"prompt": "p", "completion": "good", "label": 1}, {"prompt": "p", "completion": "bad", "label": 0},
            {"prompt": "q", "completion": "alone", "label": 1}]
    (tmp_path / "thumbs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    proc = cli("stage=prepare", "data=files", "data.feedback=thumbs.jsonl", "logger=none")
    assert read_jsonl(tmp_path / "outputs/run/pairs.jsonl") == [
        {"prompt": "p", "chosen": "good", "rejected": "bad", "source": "binary"}]
    assert "binary prompts without both a thumbs-up and a thumbs-down" in proc.stdout
    assert not (tmp_path / "outputs/mlflow.db").exists()


def test_multirun_tags_each_job_with_the_sweep_and_goes_on_after_a_failed_job(cli, tmp_path):
    proc = cli("-m", "stage=prepare", "data.noise=0.1,-1,0.3", "hydra.sweep.dir=outputs/sweep", check=False)
    assert "data.noise = -1.0: expected a value >= 0" in proc.stderr  # job 1 refused, sweep goes on
    assert proc.returncode == 1 and "1 of 3 jobs failed:\n  job 1 (outputs/sweep/1): config error:" in proc.stderr
    assert (tmp_path / "outputs/sweep/1/FAILED").is_file() and not (tmp_path / "outputs/sweep/0/FAILED").exists()
    _, runs = mlflow_runs(tmp_path)
    assert len(runs) == 2
    assert {r.data.tags["sweep_id"] for r in runs} == {"outputs/sweep"}
    assert sorted(r.data.tags["sweep_job"] for r in runs) == ["0", "2"]
    assert sorted(r.data.params["data.noise"] for r in runs) == ["0.1", "0.3"]
    assert (tmp_path / "outputs/sweep/2/pairs.jsonl").is_file()


def test_dpo_is_one_override_away(cli, tmp_path, core_python):
    proc = cli("experiment=smoke", "algorithm=dpo", python=core_python)  # the core install, as above
    client, runs = mlflow_runs(tmp_path)
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    assert list(children) == ["sft", "collect", "prepare", "reward_model", "align", "eval"]
    assert all(r.data.tags["algorithm"] == "dpo" and r.info.status == "FINISHED" for r in runs)
    align = children["align"]
    assert align.data.params["algorithm.loss_type"] == "sigmoid" and "algorithm.clip_eps" not in align.data.params
    assert {"dpo/train/loss", "dpo/rewards/chosen", "dpo/rewards/rejected", "dpo/rewards/accuracy",
            "dpo/rewards/margin", "dpo/val/loss"} <= set(align.data.metrics)
    assert not any(k.startswith("ppo/") for k in align.data.metrics)
    assert {"eval/gold/policy", "eval/win_rate", "eval/kl/policy_ref"} <= set(children["eval"].data.metrics)
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "outputs/run/policy").config.n_embd == 32
    assert "align (dpo, sigmoid, beta 0.5)" in proc.stdout and "== before (reference) and after" in proc.stdout


def test_listwise_dpo_and_a_plackett_luce_reward_model(cli, tmp_path):
    proc = cli("experiment=smoke", "algorithm=dpo", "algorithm.loss_type=plackett_luce",
               "reward_model.objective=plackett_luce")
    client, runs = mlflow_runs(tmp_path)
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {"reward/train/loss", "reward/val/accuracy", "reward/gold/accuracy"} <= set(children["reward_model"].data.metrics)
    assert children["reward_model"].data.params["reward_model.objective"] == "plackett_luce"
    align = children["align"].data.metrics
    assert {"dpo/train/loss", "dpo/rewards/accuracy", "dpo/rewards/margin", "dpo/val/loss"} <= set(align)
    assert "align (dpo, plackett_luce, beta 0.5)" in proc.stdout and " val sets;" in proc.stdout


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_critic_free_algorithms_are_one_override_away(cli, tmp_path, algorithm):
    proc = cli("experiment=smoke", f"algorithm={algorithm}")
    client, runs = mlflow_runs(tmp_path)
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    assert list(children) == ["sft", "collect", "prepare", "reward_model", "align", "eval"]
    assert all(r.data.tags["algorithm"] == algorithm and r.info.status == "FINISHED" for r in runs)
    align = children["align"]
    history = client.get_metric_history(align.info.run_id, f"{algorithm}/reward/score_mean")
    assert [m.step for m in history] == [0, 1]  # one point per iteration (smoke: 2)
    assert {f"{algorithm}/kl/ref", f"{algorithm}/policy/clipfrac", f"{algorithm}/reward/group_std",
            f"{algorithm}/advantages/abs_mean", "align/perf/seconds"} <= set(align.data.metrics)
    assert not any(k.startswith("ppo/") for k in align.data.metrics)
    assert align.data.params["algorithm.group_size"] == "2"
    run_dir = tmp_path / "outputs/run"
    assert len(read_jsonl(run_dir / f"{algorithm}_samples.jsonl")) == 8  # 4 per iteration
    assert (run_dir / "checkpoints/align/last.ckpt").is_file()
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(run_dir / "policy").config.n_embd == 32
    assert {"eval/gold/policy", "eval/win_rate", "eval/kl/policy_ref"} <= set(children["eval"].data.metrics)
    assert f"align ({algorithm}): 2 iterations" in proc.stdout


def test_a_classifier_reward_trained_from_thumbs_through_the_pipeline(cli, tmp_path):
    proc = cli("experiment=smoke", "reward_model.objective=classifier", "reward=classifier")
    client, runs = mlflow_runs(tmp_path)
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    assert all(r.info.status == "FINISHED" for r in runs)
    run_dir = tmp_path / "outputs/run"
    from rlhf_exp.worlds.synthetic import World
    thumbs = read_jsonl(run_dir / "thumbs.jsonl")  # collect: a thumbs up or down for each completion
    assert len(thumbs) == 3 * len(World(seed=0, heldout_fraction=0.2).train_prompts)
    assert {t["label"] for t in thumbs} == {0, 1} and set(thumbs[0]) == {"prompt", "completion", "label"}
    from transformers import AutoModelForSequenceClassification
    model = AutoModelForSequenceClassification.from_pretrained(run_dir / "reward_model")
    assert model.config.num_labels == 2 and model.config.id2label == {0: "harmful", 1: "harmless"}
    rm = children["reward_model"].data.metrics
    assert {"reward/train/loss", "reward/val/loss", "reward/val/accuracy", "reward/gold/accuracy"} <= set(rm)
    assert rm["reward/data/thumbs_up"] + rm["reward/data/thumbs_down"] == len(thumbs)
    assert children["align"].data.params["reward.positive_label"] == "harmless"
    assert {"eval/reward/policy", "eval/gold/policy"} <= set(children["eval"].data.metrics)
    assert "reward (classifier 'harmful' / 'harmless')" in proc.stdout


def test_a_chat_model_with_lora_through_the_whole_pipeline(cli, tmp_path):
    """The tiny Llama with a chat template, LoRA in every trained stage, PPO then DPO."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    cli("experiment=smoke", "model=tiny_llama", "model.lora_r=4", "logger=none", "hydra.run.dir=outputs/ppo")
    cli("experiment=smoke", "model=tiny_llama", "model.lora_r=4", "logger=none", "algorithm=dpo",
        "hydra.run.dir=outputs/dpo")
    for run in ("ppo", "dpo"):
        out = tmp_path / "outputs" / run
        for name in ("sft", "reward_model", "policy"):
            assert (out / f"{name}_adapter" / "adapter_config.json").is_file(), (run, name)
            assert (out / name / "config.json").is_file()  # merged: a plain model
        tok = AutoTokenizer.from_pretrained(out / "policy")
        assert tok.chat_template and tok.eos_token == "<|im_end|>"  # the template travels with every model
        assert AutoModelForCausalLM.from_pretrained(out / "policy").config.model_type == "llama"
        assert "eval/gold/policy" in json.loads((out / "eval_summary.json").read_text())


def test_a_diverging_run_stops_with_a_named_error_and_saves_no_policy(cli, tmp_path, tiny_spec):
    """The reported case: lr 1e3 and no effective gradient clipping used to run on with an infinite
    gradient norm, exit 0 and save the policy."""
    spec = tiny_spec(vocab_size=2048, tokenizer_dir=str(tmp_path / "tok"))
    tok = spec.tokenizer()
    spec.causal_lm(tok).save_pretrained(tmp_path / "policy")
    tok.save_pretrained(tmp_path / "policy")
    proc = cli("stage=align", "experiment=smoke", "reward=gold", "algorithm.policy=policy", "algorithm.lr=1e3",
               "algorithm.max_grad_norm=1e9", "algorithm.max_steps=6", check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "training diverged: align diverged at iteration" in proc.stderr
    assert "ppo/policy/grad_norm = inf" in proc.stderr or "= nan" in proc.stderr
    assert not (tmp_path / "outputs/run/policy").exists()
    _, runs = mlflow_runs(tmp_path)
    assert [r.info.status for r in runs] == ["FAILED"] and "diverged" in runs[0].data.tags["error"]


def test_kto_is_one_override_away_and_trains_on_thumbs(cli, tmp_path, base):
    proc = cli("experiment=smoke", "algorithm=kto", "reuse=outputs/base")
    client, runs = mlflow_runs(tmp_path)
    children = {r.data.tags["stage"]: r for r in runs if r.data.tags["stage"] != "pipeline"}
    assert list(children) == ["align", "eval"] and all(r.info.status == "FINISHED" for r in runs)
    align = children["align"]
    assert align.data.tags["algorithm"] == "kto" and align.data.params["algorithm.beta"] == "0.5"
    thumbs = read_jsonl(base / "thumbs.jsonl")
    ups = sum(t["label"] for t in thumbs)
    assert align.data.metrics["kto/data/desirable"] == ups and align.data.metrics["kto/data/undesirable"] == len(thumbs) - ups
    assert {"kto/train/loss", "kto/train/kl", "kto/rewards/desirable", "kto/rewards/undesirable",
            "kto/val/loss"} <= set(align.data.metrics)
    assert align.data.metrics["kto/train/kl"] >= 0  # z₀ is clamped at 0
    assert {"eval/gold/policy", "eval/win_rate", "eval/kl/policy_ref"} <= set(children["eval"].data.metrics)
    from transformers import AutoModelForCausalLM
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "outputs/run/policy").config.n_embd == 32
    assert "align (kto, beta 0.5" in proc.stdout
