#!/usr/bin/env bash
# What the GPU check needs on a lent GPU machine (Python 3.12, PyTorch and transformers, no internet):
# the embedded model's tokenizer in .gpu/tokenizer and, in .whl, wheels of every package the check
# imports that the image lacks (pydantic and the adapters' stacks), each pinned to the version
# installed in this venv (benchmarks/gpu_image.py pins: pydantic-core at the exact version pydantic
# requires, every requirement checked). Both are ignored by git and together stay under CARRY_MIB
# (the device tool carries 64 MiB in all).
# Then, on the device:  bash benchmarks/gpu_check.sh   (carry .whl and .gpu)
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
CARRY_MIB="${CARRY_MIB:-48}"
tok="$("$PY" -c 'from rain_core.loaders.embedded import materialize_default_model as m; print(m())')"
rm -rf .gpu .whl
mkdir -p .gpu/tokenizer .whl
for f in tokenizer.json tokenizer_config.json special_tokens_map.json chat_template.jinja generation_config.json; do
    if [ -f "$tok/$f" ]; then cp "$tok/$f" .gpu/tokenizer/; fi
done
"$PY" benchmarks/gpu_image.py pins > .gpu/requirements.txt
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d .whl -r .gpu/requirements.txt
# one wheel per pin, nothing else
wheels=$(find .whl -type f -name '*.whl' | wc -l)
pins=$(grep -c '==' .gpu/requirements.txt)
if [ "$wheels" -ne "$pins" ]; then
    echo "gpu_prep: $wheels wheels for $pins pins in .gpu/requirements.txt" >&2
    exit 1
fi
du -sh .whl .gpu
total=$(du -sm .whl .gpu | awk '{s += $1} END {print s}')
if [ "$total" -gt "$CARRY_MIB" ]; then
    echo "gpu_prep: .whl and .gpu hold ${total} MiB, over the ${CARRY_MIB} MiB budget" >&2
    exit 1
fi
echo "gpu_prep: $pins wheels pinned in .gpu/requirements.txt, ${total} MiB to carry"
