"""The GPU check's tests (marker `gpu`; scripts/gpu_check.sh runs them on a machine with an NVIDIA GPU):
bfloat16 training of every trained stage on CUDA, sampling on CUDA against the CPU's greedy tokens,
FSDP on one device. Where torch sees no GPU they are skipped, unless RLHF_GPU_CHECK=cpu asks for
their CPU fallback (the same code on the CPU: `gpu_check.sh --cpu`, tests/test_gpu_check.py), which
checks everything but the device itself."""
import math
import os

import pytest
import torch

from tests.test_cli_e2e import mlflow_runs

pytestmark = [pytest.mark.gpu, pytest.mark.e2e]


@pytest.fixture
def accelerator():
    """`gpu` where torch sees CUDA; `cpu` under RLHF_GPU_CHECK=cpu; skipped otherwise."""
    if torch.cuda.is_available():
        return "gpu"
    if os.environ.get("RLHF_GPU_CHECK") == "cpu":
        return "cpu"
    pytest.skip("no CUDA device (RLHF_GPU_CHECK=cpu runs the GPU check's tests on the CPU)")


def finite(metrics: dict, keys) -> None:
    missing = set(keys) - set(metrics)
    assert not missing, f"not logged: {sorted(missing)}"
    assert all(math.isfinite(metrics[k]) for k in keys), {k: metrics[k] for k in keys}


def test_every_trained_stage_in_bfloat16(cli, tmp_path, accelerator):
    """SFT, the reward model, PPO and DPO train under bf16 autocast on the device (the smoke world,
    tiny GPT-2): every loss finite, the PPO invariant checked at each first minibatch (the module
    stops the run if ratio ≠ 1 or KL ≠ 0 there), the policies written."""
    on = [f"trainer.accelerator={accelerator}", "trainer.precision=bf16-mixed"]
    cli("experiment=smoke", *on)
    _, runs = mlflow_runs(tmp_path)
    stages = {r.data.tags["stage"]: r.data.metrics for r in runs}
    assert all(r.info.status == "FINISHED" for r in runs)
    finite(stages["sft"], ["sft/train/loss", "sft/val/loss"])
    finite(stages["reward_model"], ["reward/train/loss", "reward/val/accuracy"])
    finite(stages["align"], ["ppo/kl/ref", "ppo/policy/clipfrac", "ppo/reward/score_mean"])
    finite(stages["eval"], ["eval/gold/policy", "eval/kl/policy_ref"])
    cli("experiment=smoke", "algorithm=dpo", "reuse=outputs/run", "hydra.run.dir=outputs/dpo", *on)
    _, runs = mlflow_runs(tmp_path)
    dpo = [r.data.metrics for r in runs if r.data.tags.get("algorithm") == "dpo" and r.data.tags["stage"] == "align"]
    assert len(dpo) == 1
    finite(dpo[0], ["dpo/train/loss", "dpo/rewards/margin"])
    assert (tmp_path / "outputs/run/policy").is_dir() and (tmp_path / "outputs/dpo/policy").is_dir()


def test_greedy_sampling_on_the_device_equals_the_cpu(tiny_spec, accelerator):
    """The tiny Llama's greedy answers on the device, token for token, as on the CPU (float32)."""
    from rlhf_exp.models.generation import encode_prompts, generate, left_pad_collate
    torch.manual_seed(0)
    spec = tiny_spec(llama=True, dropout=0.0)
    tokenizer = spec.tokenizer()
    lm = spec.causal_lm(tokenizer).eval()
    batch = left_pad_collate(tokenizer.pad_token_id)(
        encode_prompts(tokenizer, ["Tell me a knock-knock joke.", "My house is too hot. What can I do?"]))
    cpu = generate(lm, tokenizer, batch["input_ids"], batch["attention_mask"], max_new_tokens=12, temperature=0)
    with torch.no_grad():
        cpu_logits = lm(input_ids=cpu.input_ids, attention_mask=cpu.attention_mask).logits
    device = torch.device("cuda" if accelerator == "gpu" else "cpu")
    lm.to(device)
    on = generate(lm, tokenizer, batch["input_ids"].to(device), batch["attention_mask"].to(device),
                  max_new_tokens=12, temperature=0)
    assert on.response.device.type == device.type
    assert torch.equal(on.response.cpu(), cpu.response) and on.texts == cpu.texts
    with torch.no_grad():  # and the logits that PPO's log-probs come from, to float32 rounding
        logits = lm(input_ids=on.input_ids, attention_mask=on.attention_mask).logits
    assert torch.allclose(logits.cpu(), cpu_logits, atol=1e-4)


def test_fsdp_on_one_device(cli, tmp_path, accelerator):
    """Lightning's FSDP (trainer=fsdp) with one process: SFT, the reward model and DPO train sharded
    over one GPU. On a CPU FSDP is refused at compose time (pipeline.check_strategy), so the CPU
    fallback checks that refusal instead."""
    args = ["experiment=smoke", "algorithm=dpo", "trainer=fsdp", "trainer.devices=1", f"trainer.accelerator={accelerator}"]
    if accelerator == "cpu":
        proc = cli(*args, check=False)
        assert proc.returncode == 2 and "runs on GPUs only" in proc.stderr
        return
    cli(*args)
    _, runs = mlflow_runs(tmp_path)
    assert all(r.info.status == "FINISHED" for r in runs)
    align = [r.data.metrics for r in runs if r.data.tags["stage"] == "align"][0]
    finite(align, ["dpo/train/loss"])
