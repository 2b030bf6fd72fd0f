"""scripts/gpu_check.sh as far as a CPU allows: its install step (the carried wheels into a target of
their own, no index), then its steps with --cpu (the `gpu` tests' CPU fallback and the benchmarks at
the smallest sizes), and the one JSON of figures it writes. scripts/gpu_bundle.sh's downloads need the
package registries and are not run here: the bundle is this checkout's wheel alone, over this
environment's packages."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.e2e


@pytest.mark.slow  # the gpu tests, benchmarks and a pipeline once more, on the CPU: `make test-all`
def test_the_gpu_check_installs_from_its_bundle_and_runs_its_cpu_fallback(tmp_path):
    bundle, site, out = tmp_path / "bundle", tmp_path / "site", tmp_path / "out"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", bundle / "wheels", ROOT],
                   check=True, capture_output=True, timeout=300)
    env = {**os.environ, "PYTHON": sys.executable, "BUNDLE": str(bundle), "SITE": str(site), "OUT": str(out),
           "RLHF_EXP_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run(["bash", ROOT / "scripts/gpu_check.sh", "--cpu"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (site / "rlhf_exp" / "conf" / "config.yaml").is_file()  # the wheel, configs included, in its target
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["environment"]["cuda"] is False and report["failed_steps"] == []
    steps = {r["step"]: r for r in report["steps"]}
    assert steps["tests"]["tests"] == {"passed": 3, "failed": 0, "skipped": 0}  # every gpu test, on the CPU
    for name in ("ppo", "dpo"):
        figures = steps[f"bench_{name}_tiny_32-true"]["figures"]
        assert figures["bench"] == name and figures["device"] == "cpu" and figures["median_step_s"] > 0
    assert report["environment"]["rlhf_exp"] == str(site / "rlhf_exp")  # the installed package, not the checkout


def test_the_gpu_check_without_its_bundle_says_how_to_make_one(tmp_path):
    env = {**os.environ, "BUNDLE": str(tmp_path / "none"), "OUT": str(tmp_path / "out")}
    proc = subprocess.run(["bash", ROOT / "scripts/gpu_check.sh"], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "scripts/gpu_bundle.sh" in proc.stderr
