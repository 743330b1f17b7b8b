#!/usr/bin/env bash
# Start, check or stop N CPU vLLM replicas of one model behind vLLM's own router (vllm-router), on
# this machine: the layout docs/scale.md describes, small enough to try here.
#
#   scripts/vllm_cluster.sh start N [PORT] [MODEL_DIR]   N replicas on PORT+1..PORT+N, the router on PORT;
#                                                        waits until each is up; prints the router's URL
#   scripts/vllm_cluster.sh status [PORT]                exit 0 when the router is ready (/readiness)
#   scripts/vllm_cluster.sh stop [PORT]                  ends exactly the processes `start` started
#
# PORT defaults to 8000; MODEL_DIR to the embedded SmolLM2-135M-Instruct (as scripts/vllm_server.sh),
# served as "smollm2" (RAIN_VLLM_NAME). The router runs `--policy consistent_hash` (RAIN_ROUTER_POLICY),
# which keeps each X-Session-ID on one replica; VLLMEngine sends one per decode. Its circuit breaker
# opens after 2 failures, so a dead replica's sessions move within the first request's retries, and
# tries the replica again after 5 s. Logs and pid files: RAIN_VLLM_RUN_DIR (default /tmp/rain-vllm),
# as cluster-PORT-*.log / *.pid. Extra replica flags: RAIN_VLLM_EXTRA_ARGS; extra router flags:
# RAIN_ROUTER_EXTRA_ARGS. Needs `make vllm` (vLLM and vllm-router in .venv-vllm).
#
# Replicas on one CPU machine share its cores: this shows routing, affinity and fail-over, not speed.
set -Eeuo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${RAIN_VLLM_VENV:-$ROOT/.venv-vllm}
NAME=${RAIN_VLLM_NAME:-smollm2}
POLICY=${RAIN_ROUTER_POLICY:-consistent_hash}
RUN_DIR=${RAIN_VLLM_RUN_DIR:-/tmp/rain-vllm}
TIMEOUT=${RAIN_VLLM_START_TIMEOUT:-600}
cmd=${1:-}

answers() {  # answers URL: exit 0 when URL answers 200
  python3 -c "import urllib.request,sys; sys.exit(0 if urllib.request.urlopen('$1', timeout=3).status == 200 else 1)" 2>/dev/null
}

stop_pid() {  # stop_pid PIDFILE: SIGTERM the process group the pid leads, SIGKILL after 30 s
  local pidfile=$1 pid
  [ -f "$pidfile" ] || return 0
  pid=$(cat "$pidfile")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.5; done
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true   # the engine core and worker of a replica
  rm -f "$pidfile"
}

stop() {
  local port=${1:-8000} found=0 f
  for f in "$RUN_DIR"/cluster-"$port"-router.pid "$RUN_DIR"/cluster-"$port"-replica-*.pid; do
    [ -f "$f" ] || continue
    found=1
    stop_pid "$f"
  done
  if [ "$found" = 0 ]; then echo "no cluster started by this script on port $port"; else echo "stopped the cluster on port $port"; fi
}

start() {
  local n=${1:-} port=${2:-8000} model=${3:-} i rport pid urls=() t0
  case "$n" in ''|*[!0-9]*) echo "usage: $0 start N [PORT] [MODEL_DIR] (N replicas, N >= 1)" >&2; exit 2 ;; esac
  [ "$n" -ge 1 ] || { echo "N must be at least 1" >&2; exit 2; }
  [ -x "$VENV/bin/python" ] || { echo "$VENV is missing: run \`make vllm\` first" >&2; exit 1; }
  [ -x "$VENV/bin/vllm-router" ] || { echo "$VENV/bin/vllm-router is missing: run \`make vllm\` (it installs vllm-router)" >&2; exit 1; }
  for i in $(seq 0 "$n"); do
    if answers "http://127.0.0.1:$((port + i))/health" || answers "http://127.0.0.1:$((port + i))/readiness"; then
      echo "something already answers on port $((port + i)); pick another PORT" >&2; exit 1
    fi
  done
  if [ -z "$model" ]; then
    model=$("$ROOT/.venv/bin/python" -c "from rain_core.loaders.embedded import materialize_default_model as m; print(m())")
  fi
  mkdir -p "$RUN_DIR"
  t0=$(date +%s)
  trap 'echo "start failed; stopping what started" >&2; stop "$port" >/dev/null' ERR INT TERM
  for i in $(seq 1 "$n"); do
    rport=$((port + i))
    # setsid: a process group of its own, so stop reaches the API server, engine core and worker
    # shellcheck disable=SC2086
    setsid "$VENV/bin/python" -m vllm.entrypoints.openai.api_server \
      --model "$model" --served-model-name "$NAME" --host 127.0.0.1 --port "$rport" \
      --enable-prefix-caching --block-size 32 --max-model-len 2048 --dtype float32 --enforce-eager \
      --kv-cache-memory-bytes 1G --no-enable-chunked-prefill --disable-uvicorn-access-log \
      ${RAIN_VLLM_EXTRA_ARGS:-} </dev/null >"$RUN_DIR/cluster-$port-replica-$i.log" 2>&1 &
    echo "$!" >"$RUN_DIR/cluster-$port-replica-$i.pid"
    urls+=("http://127.0.0.1:$rport")
  done
  for i in $(seq 1 "$n"); do   # the router starts once every replica is up (see docs/scale.md)
    rport=$((port + i)); pid=$(cat "$RUN_DIR/cluster-$port-replica-$i.pid")
    until answers "http://127.0.0.1:$rport/health"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        echo "replica $i exited while starting; the end of $RUN_DIR/cluster-$port-replica-$i.log:" >&2
        tail -n 30 "$RUN_DIR/cluster-$port-replica-$i.log" >&2; false
      fi
      if [ $(( $(date +%s) - t0 )) -ge "$TIMEOUT" ]; then echo "replica $i not up after ${TIMEOUT}s" >&2; false; fi
      sleep 1
    done
    echo "replica $i ready at http://127.0.0.1:$rport/v1 (pid $pid)"
  done
  # RUST_LOG=warn: vllm-router 0.1.17 logs every request's session id at INFO whatever --log-level says
  # shellcheck disable=SC2086
  RUST_LOG=${RUST_LOG:-warn} setsid "$VENV/bin/vllm-router" --host 127.0.0.1 --port "$port" --worker-urls "${urls[@]}" \
    --policy "$POLICY" --prometheus-host 127.0.0.1 --prometheus-port "$((port + n + 1))" \
    --cb-failure-threshold 2 --cb-timeout-duration-secs 5 --health-check-interval-secs 5 \
    --worker-startup-check-interval 1 --log-level warning ${RAIN_ROUTER_EXTRA_ARGS:-} \
    </dev/null >"$RUN_DIR/cluster-$port-router.log" 2>&1 &
  echo "$!" >"$RUN_DIR/cluster-$port-router.pid"
  pid=$!
  until answers "http://127.0.0.1:$port/readiness"; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "vllm-router exited while starting; the end of $RUN_DIR/cluster-$port-router.log:" >&2
      tail -n 30 "$RUN_DIR/cluster-$port-router.log" >&2; false
    fi
    sleep 0.5
  done
  trap - ERR INT TERM
  echo "router ($POLICY) ready at http://127.0.0.1:$port/v1 in front of $n replicas (model $NAME, $(( $(date +%s) - t0 )) s); metrics on port $((port + n + 1))"
  echo "stop with: $0 stop $port"
}

case "$cmd" in
  start) shift; start "$@" ;;
  stop) stop "${2:-8000}" ;;
  status) answers "http://127.0.0.1:${2:-8000}/readiness" ;;
  *) echo "usage: $0 {start N [PORT] [MODEL_DIR] | status [PORT] | stop [PORT]}" >&2; exit 2 ;;
esac
