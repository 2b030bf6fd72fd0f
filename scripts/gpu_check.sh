#!/usr/bin/env bash
# The GPU check: on a machine with one NVIDIA GPU, its own torch and no network, install rlhf-exp from
# the wheels carried beside the checkout (scripts/gpu_bundle.sh made them), then run in one go
# (scripts/gpu_check.py): the tests marked `gpu`, the smoke pipelines in bfloat16 on CUDA, and the
# benchmarks on CUDA, writing one JSON of figures. With the device tool, from the checkout:
#   scripts/gpu_bundle.sh                                   # here, once
#   run(command="scripts/gpu_check.sh", carry=[".gpu"], timeout_s=540)   # there: figures in $OUT
# `--cpu` runs the same steps on the CPU at the smallest sizes (tests/test_gpu_check.py does, in CI).
# Environment: BUNDLE (.gpu), SITE (where the wheels go, /tmp/rlhf-gpu-site), OUT (where the figures go,
# outputs/gpu_check), PYTHON (python3), BUDGET_S (480: steps past it are skipped and named).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
BUNDLE=${BUNDLE:-.gpu}
SITE=${SITE:-/tmp/rlhf-gpu-site}
export OUT=${OUT:-outputs/gpu_check}
mkdir -p "$OUT"
if [ ! -d "$BUNDLE/wheels" ]; then
  echo "gpu_check: no $BUNDLE/wheels: run scripts/gpu_bundle.sh on a machine with the package registries, and carry $BUNDLE" >&2
  exit 2
fi
# the carried wheels over the machine's own packages, without touching them (a target of its own)
"$PY" -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
  "$BUNDLE"/wheels/*.whl > "$OUT/install.log" 2>&1 || { cat "$OUT/install.log" >&2; exit 1; }
export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1 RLHF_EXP_CACHE=${RLHF_EXP_CACHE:-/tmp/rlhf-gpu-cache}
exec "$PY" scripts/gpu_check.py "$@"
