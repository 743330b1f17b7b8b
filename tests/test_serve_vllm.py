"""``rain serve`` in front of a real vLLM server (``.venv-vllm``, as ``vllm_server.py`` starts one): a
client that disconnects mid-stream has its decode cancelled at once; a ``kill -9`` of the vLLM server
mid-stream reaches the client as an error event within 10 seconds; requests while it is down get 503
with the engine's own message; and once vLLM is back on its port, ``rain serve`` (still running,
never restarted) serves again.

This module starts a vLLM server of its own (it kills it), not the session's shared one."""

from __future__ import annotations

import json
import os
import signal
import time

import httpx
import pytest
from serve_helpers import metrics, wait_for
from vllm_server import PYTHON, SERVED_NAME

from rain_core.serve.launch import LocalRainServer

pytestmark = pytest.mark.vllm

SETTINGS = dict(max_searches=2, extra_searches=1, min_visits=1, num_candidates=3, max_simulation_tokens=4)
STORY = [{"role": "user", "content": "Write a long story about a dragon who learns to bake bread."}]


def _vllm(port=None):
    from rain_core.engines.vllm.launch import LocalVLLMServer
    from rain_core.loaders.embedded import materialize_default_model

    if not PYTHON.exists():
        pytest.fail(f"{PYTHON} is missing: the vllm tests need the vLLM virtualenv; run `make vllm`")
    server = LocalVLLMServer(PYTHON, materialize_default_model(), name=SERVED_NAME, port=port)
    return server.start(timeout=float(os.environ.get("RAIN_VLLM_START_TIMEOUT", "420")))


@pytest.fixture(scope="module")
def stack():
    vllm = _vllm()
    options = ["--engine", "vllm", "--base-url", vllm.base_url, "--model", SERVED_NAME, "--limit-max-tokens", "300"]
    for field, value in SETTINGS.items():
        options += ["--set", f"{field}={value}"]
    rain = LocalRainServer(options, env={"OMP_NUM_THREADS": "1"})
    try:
        rain.start(timeout=300)
        yield vllm, rain
    finally:
        rain.stop()
        vllm.stop()


def _chat(rain, **body):
    return httpx.post(f"{rain.base_url}/chat/completions", json={"model": SERVED_NAME, **body}, timeout=120)


def test_a_killed_engine_ends_the_stream_with_an_error_and_rain_serve_serves_again_once_it_is_back(stack):
    vllm, rain = stack
    first = _chat(rain, messages=STORY, max_tokens=8)
    assert first.status_code == 200 and first.json()["choices"][0]["message"]["content"]

    # a client that leaves mid-stream: its decode's task is cancelled, its requests to vLLM closed
    with httpx.Client(timeout=120) as http:
        body = {"model": SERVED_NAME, "messages": STORY, "max_tokens": 300, "stream": True}
        with http.stream("POST", f"{rain.base_url}/chat/completions", json=body) as response:
            lines = response.iter_lines()  # kept: dropping a half-read iterator closes the connection
            for line in lines:
                if '"content": "' in line and '"content": ""' not in line:
                    break
            assert metrics(rain.url)["rain_decodes_in_flight"] == 1
    wait_for(lambda: metrics(rain.url)["rain_decodes_in_flight"] == 0, 5)
    assert metrics(rain.url)["rain_decodes_cancelled_total"] == 1

    body = {"model": SERVED_NAME, "messages": STORY, "max_tokens": 300, "stream": True}
    events = []
    with httpx.Client(timeout=120) as http:
        with http.stream("POST", f"{rain.base_url}/chat/completions", json=body) as response:
            lines = response.iter_lines()
            for line in lines:
                if '"content": "' in line and '"content": ""' not in line:
                    break
            os.killpg(vllm.process.pid, signal.SIGKILL)  # the API server, its engine core and its worker
            killed = time.monotonic()
            for line in lines:
                if line.startswith("data: "):
                    events.append(line[len("data: ") :])
            seconds = time.monotonic() - killed
    assert events[-1] == "[DONE]", events[-3:]
    error = json.loads(events[-2])["error"]
    assert seconds < 10, seconds
    assert error["status"] == 503 and error["type"] == "service_unavailable_error"
    assert "cannot reach the vLLM server" in error["message"] or "engine" in error["message"]
    vllm.stop()  # reaps the killed process group

    t0 = time.monotonic()
    down = _chat(rain, messages=STORY, max_tokens=4)
    assert down.status_code == 503 and time.monotonic() - t0 < 10
    assert "cannot reach the vLLM server" in down.json()["error"]["message"]
    assert httpx.get(f"{rain.url}/health").status_code == 200  # rain serve itself is up

    back = _vllm(port=vllm.port)
    try:
        again = _chat(rain, messages=STORY, max_tokens=8)
        assert again.status_code == 200, again.text
        assert again.json()["choices"][0]["message"]["content"]
    finally:
        back.stop()
