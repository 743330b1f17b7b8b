#!/usr/bin/env bash
# On the GPU machine: install the carried wheels beside the image's PyTorch and transformers, then run
# the check. Prepare first, here: bash benchmarks/gpu_prep.sh; carry .whl and .gpu.
# PYTHON, WHEELS and RAIN_SITE (the interpreter, the wheels, where they install) default to the GPU
# machine's; the CPU rehearsal (gpu_rehearsal.sh) sets them to its stand-ins.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS="${WHEELS:-.whl}"
SITE="${RAIN_SITE:-/tmp/rain-site}"
"$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl
export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" benchmarks/gpu_check.py --tokenizer .gpu/tokenizer "$@"
