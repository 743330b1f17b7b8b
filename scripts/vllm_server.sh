#!/usr/bin/env bash
# Start, check or stop a local vLLM server for rain on this CPU machine (the flags the tests use).
#
#   scripts/vllm_server.sh start [PORT] [MODEL_DIR]   background start; waits for /health; prints the base URL
#   scripts/vllm_server.sh status [PORT]              exit 0 when /health answers 200
#   scripts/vllm_server.sh stop [PORT]                SIGTERM the process group, SIGKILL after 30 s
#
# PORT defaults to 8000; MODEL_DIR to the embedded SmolLM2-135M-Instruct materialised in the user
# cache (made by .venv's rain). Served as "smollm2" (RAIN_VLLM_NAME). Log and pid files go to
# RAIN_VLLM_RUN_DIR (default /tmp/rain-vllm). Extra server flags: RAIN_VLLM_EXTRA_ARGS.
# A GPU machine needs none of the CPU flags: vllm serve MODEL --enable-prefix-caching [--tensor-parallel-size N]
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${RAIN_VLLM_VENV:-$ROOT/.venv-vllm}
NAME=${RAIN_VLLM_NAME:-smollm2}
RUN_DIR=${RAIN_VLLM_RUN_DIR:-/tmp/rain-vllm}
TIMEOUT=${RAIN_VLLM_START_TIMEOUT:-300}
cmd=${1:-}
port=${2:-8000}
pidfile="$RUN_DIR/vllm-$port.pid"
logfile="$RUN_DIR/vllm-$port.log"

healthy() { python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('http://127.0.0.1:$port/health', timeout=3).status == 200 else 1)" 2>/dev/null; }

stop() {
  [ -f "$pidfile" ] || { echo "no server started by this script on port $port"; return 0; }
  local pid; pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true   # the engine core and worker of a crashed server
  rm -f "$pidfile"
  echo "stopped vLLM on port $port"
}

start() {
  [ -x "$VENV/bin/python" ] || { echo "$VENV is missing: run \`make vllm\` first" >&2; exit 1; }
  if healthy; then echo "something already answers on port $port" >&2; exit 1; fi
  local model=${3:-}
  if [ -z "$model" ]; then
    model=$("$ROOT/.venv/bin/python" -c "from rain_core.loaders.embedded import materialize_default_model as m; print(m())")
  fi
  mkdir -p "$RUN_DIR"
  local t0; t0=$(date +%s)
  # setsid: a process group of its own, so stop reaches the API server, engine core and worker
  # shellcheck disable=SC2086
  setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
    --model "$model" --served-model-name "$NAME" --host 127.0.0.1 --port "$port" \
    --enable-prefix-caching --block-size 32 --max-model-len 2048 --dtype float32 --enforce-eager \
    --kv-cache-memory-bytes 1G --no-enable-chunked-prefill --disable-uvicorn-access-log \
    ${RAIN_VLLM_EXTRA_ARGS:-} </dev/null >"$logfile" 2>&1 &
  local pid=$!
  echo "$pid" >"$pidfile"
  until healthy; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "vLLM exited while starting; the end of $logfile:" >&2; tail -n 30 "$logfile" >&2; rm -f "$pidfile"; exit 1
    fi
    if [ $(( $(date +%s) - t0 )) -ge "$TIMEOUT" ]; then
      echo "vLLM not healthy after ${TIMEOUT}s (log $logfile); stopping it" >&2; stop; exit 1
    fi
    sleep 0.5
  done
  echo "vLLM ready at http://127.0.0.1:$port/v1 (model $NAME, pid $pid, $(( $(date +%s) - t0 )) s, log $logfile)"
}

case "$cmd" in
  start) start "$@" ;;
  stop) stop ;;
  status) healthy ;;
  *) echo "usage: $0 {start [PORT] [MODEL_DIR] | status [PORT] | stop [PORT]}" >&2; exit 2 ;;
esac
