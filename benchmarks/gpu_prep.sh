#!/usr/bin/env bash
# What the GPU check needs on a lent GPU machine (Python 3.12, PyTorch and transformers, no internet):
# the embedded model's tokenizer in .gpu/tokenizer and wheels of rain's light dependencies that the
# image lacks in .whl (both ignored by git; together well under the 64 MiB a device call carries).
# Then, on the device:  bash benchmarks/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
tok="$("$PY" -c 'from rain_core.engines.embedded import materialize_default_model as m; print(m())')"
mkdir -p .gpu/tokenizer .whl
for f in tokenizer.json tokenizer_config.json special_tokens_map.json chat_template.jinja generation_config.json; do
    if [ -f "$tok/$f" ]; then cp "$tok/$f" .gpu/tokenizer/; fi
done
# Not in the GPU image (its package list is in the device tool's KINDS.md): pydantic and the adapters' stacks.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
    "pydantic==$("$PY" -c 'import pydantic; print(pydantic.VERSION)')" pydantic-core annotated-types typing-inspection \
    langchain-core langchain-protocol langsmith jsonpatch jsonpointer uuid-utils orjson requests-toolbelt zstandard \
    tenacity httpx2 websockets sniffio distro \
    llama-index-core llama-index-workflows llama-index-instrumentation aiosqlite banks griffe dataclasses-json \
    marshmallow deprecated dirtyjson filetype nest-asyncio nltk sqlalchemy greenlet tinytag platformdirs
du -sh .whl .gpu
