"""Sharded weights for PPO, GRPO and RLOO (`trainer=fsdp2`: Lightning's ModelParallelStrategy, torch's
FSDP2) on two CPU processes with gloo: the same losses and weights as the unsharded ranks of DDP (each
rank samples its own rollouts with the same seeds either way, so DDP, itself pinned against one
process in test_distributed.py, is the reference), the first-minibatch invariant at every iteration,
ranks kept in step when their generations stop apart, the whole weights saved; and the configs that
cannot shard refused when composed."""
import json
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient
from transformers import AutoModelForCausalLM

from rlhf_exp.config import ConfigError
from rlhf_exp.stages.checks import validate_config
from tests.conftest import ROOT, compose

pytestmark = pytest.mark.e2e


@pytest.mark.parametrize("algorithm", ["ppo", pytest.param("grpo", marks=pytest.mark.slow)])
def test_sharded_ranks_train_as_ddp_ranks_and_save_the_whole_policy(algorithm, tiny_spec, tmp_path):
    spec = tiny_spec(dropout=0.0)
    spec.tokenizer()  # trained once, before the processes read it
    seen = {}
    for strategy in ("ddp", "fsdp2"):
        out = tmp_path / strategy
        out.mkdir()
        proc = subprocess.run([sys.executable, str(ROOT / "tests/fsdp2_check.py"), algorithm, strategy,
                               spec.tokenizer_dir, str(out)], cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]  # an InvariantError (ratio ≠ 1 or KL ≠ 0) fails here
        seen[strategy] = json.loads((out / "seen.json").read_text())
    ddp, fsdp2 = seen["ddp"], seen["fsdp2"]
    assert fsdp2["sharded"] and not ddp["sharded"] and fsdp2["iterations"] == ddp["iterations"] == 2
    assert fsdp2["widths"] == [2, 6]  # ranks that stop generating apart are kept in step (no hang)
    assert fsdp2["rows"][0]["kl/ref"] == 0.0  # the policy starts as its reference
    for sharded, whole in zip(fsdp2["rows"], ddp["rows"], strict=True):
        assert sharded == pytest.approx(whole, abs=1e-5)                  # iteration by iteration
    assert fsdp2["weights"] == pytest.approx(ddp["weights"], abs=1e-5)
    assert fsdp2["rows"][1]["kl/ref"] > 0  # and it moved away from it
    saved = {s: AutoModelForCausalLM.from_pretrained(tmp_path / s / "policy").state_dict() for s in seen}
    assert saved["fsdp2"].keys() == saved["ddp"].keys()
    for name, tensor in saved["fsdp2"].items():  # the whole weights, as one process saves them
        assert tensor.shape == saved["ddp"][name].shape
        assert torch.allclose(tensor, saved["ddp"][name], atol=1e-5), name


def test_the_align_stage_runs_with_fsdp2_on_two_processes(cli, tmp_path):
    """With held-out evaluation on the sharded policy, and its best weights put back at the end."""
    cli("stage=align", "experiment=smoke", "reward=gold", "trainer=fsdp2", "trainer.accelerator=cpu",
        "trainer.devices=2", "algorithm.eval_every=1", "algorithm.stop_on=reward")
    client = MlflowClient(f"sqlite:///{tmp_path}/outputs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("rlhf").experiment_id])
    align = next(r for r in runs if r.data.tags["stage"] == "align")
    assert align.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(align.info.run_id, "ppo/reward/score_mean")] == [0, 1]
    assert [m.step for m in client.get_metric_history(align.info.run_id, "ppo/heldout/reward")] == [0, 1, 2]
    run = tmp_path / "outputs/run"
    policy = AutoModelForCausalLM.from_pretrained(run / "policy")  # written once, whole, by rank 0
    assert not any("_fsdp" in n or "DTensor" in type(p).__name__ for n, p in policy.named_parameters())
    assert (run / "checkpoints/align/last.ckpt").is_file() and not (run / ".rank1" / "policy").exists()


def test_fsdp2_is_composed_for_the_on_policy_algorithms_and_refused_elsewhere():
    """Refused when the config is composed (before any work; exit 2 from the CLI like every ConfigError)."""
    for algorithm in ("ppo", "grpo", "rloo"):
        validate_config(compose("trainer=fsdp2", "stage=align", f"algorithm={algorithm}"))
    validate_config(compose("trainer=fsdp2", "trainer.accelerator=cpu", "trainer.devices=4", "stage=align"))
    with pytest.raises(ConfigError, match="cannot under Lightning's FSDP .* expected trainer=fsdp2 .* for grpo, ppo, rloo"):
        validate_config(compose("trainer=fsdp", "algorithm=ppo"))
    refused = {("stage=pipeline",): "trainer=fsdp2 with stage sft, reward_model: only grpo, ppo, rloo shard",
               ("stage=sft",): "trainer=fsdp2 with stage sft:",
               ("stage=align", "algorithm=dpo"): "trainer=fsdp2 with algorithm=dpo: .* expected algorithm=grpo\\|ppo\\|rloo",
               ("stage=align", "model.lora_r=4"): "model.lora_r = 4 with trainer=fsdp2: .* expected model.lora_r=0",
               ("stage=align", "algorithm.ckpt_path=/tmp/x.ckpt"): "algorithm.ckpt_path = /tmp/x.ckpt with "
                                                                   "trainer=fsdp2: resuming a sharded run",
               ("stage=align", "trainer.devices=4", "trainer.strategy.data_parallel_size=2"):
                   "trainer.strategy.data_parallel_size = 2 .* over 4 processes .* expected data_parallel_size=4",
               ("stage=align", "experiment=smoke", "trainer.devices=3", "trainer.strategy.data_parallel_size=3"):
                   "algorithm.batch_size = 8 over 3 processes"}
    for overrides, message in refused.items():
        with pytest.raises(ConfigError, match=message):
            validate_config(compose("trainer=fsdp2", *overrides))
