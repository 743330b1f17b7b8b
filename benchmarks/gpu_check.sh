#!/usr/bin/env bash
# On the GPU machine: install the carried wheels beside the image's PyTorch and transformers, then run
# the check. Prepare first, here: bash benchmarks/gpu_prep.sh; carry .whl and .gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/rain-site .whl/*.whl
export PYTHONPATH="$PWD:/tmp/rain-site${PYTHONPATH:+:$PYTHONPATH}"
exec python3 benchmarks/gpu_check.py --tokenizer .gpu/tokenizer "$@"
