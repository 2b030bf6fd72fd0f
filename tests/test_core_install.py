"""A core install as users make it: `pip install rlhf-exp` (the wheel, no extras) in a fresh
virtualenv (`make core`), run from a directory outside the checkout. The default (PPO) and DPO smoke
pipelines run there in test_cli_e2e.py; here, what the install holds, a sweep from the checkout's
sweeps/, the benchmarks, and the named error for a feature whose extra is missing."""
import json
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.e2e


def run(python, *args, cwd, timeout=300):
    return subprocess.run([str(python), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def test_the_wheel_holds_the_configs_and_no_extra(core_python, tmp_path):
    probe = ("import importlib.util, json; from rlhf_exp.config import CONF_DIR; import rlhf_exp; "
             "print(json.dumps({'conf': str(CONF_DIR), 'package': rlhf_exp.__file__, "
             "'extras': [m for m in ('peft', 'gguf', 'accelerate', 'sentence_transformers', 'pytest') "
             "if importlib.util.find_spec(m)]}))")
    proc = run(core_python, "-c", probe, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    found = json.loads(proc.stdout)
    assert "site-packages" in found["package"]                      # installed, not the checkout
    assert found["conf"].endswith("site-packages/rlhf_exp/conf")     # the configs travel in the wheel
    assert found["extras"] == []                                     # no extra is installed


def test_a_sweep_from_the_checkout_and_the_benchmarks_run_on_a_core_install(core_python, tmp_path, smoke_run):
    env_python = str(core_python)
    proc = subprocess.run([env_python, "-m", "rlhf_exp", "-m", "--config-dir", str(ROOT / "sweeps"),
                           "--config-name", "ppo_clip", "experiment=smoke", "logger=none", f"reuse={smoke_run}",
                           "algorithm.clip_eps=0.1,0.3", "algorithm.max_steps=1", "hydra.sweep.dir=sweep"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for job in ("0", "1"):  # each job aligned its own policy from the reused run
        assert (tmp_path / "sweep" / job / "policy" / "config.json").is_file()
        assert (tmp_path / "sweep" / job / "eval_summary.json").is_file()

    proc = run(core_python, "-m", "rlhf_exp.tools.bench", "dpo", "--steps", "2", "--warmup", "1", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    figures = json.loads(proc.stdout.strip().splitlines()[-1])
    assert figures["bench"] == "dpo" and figures["median_step_s"] > 0


def test_lora_without_its_extra_is_refused_by_name(core_python, cli):
    proc = cli("experiment=smoke", "stage=sft", "model.lora_r=4", "logger=none", python=core_python, check=False)
    assert proc.returncode != 0
    assert ("LoRA (model.lora_r = 4) needs the 'peft' package, which is not installed: "
            "pip install 'rlhf-exp[models]'") in proc.stdout + proc.stderr
