"""Start and stop a ``rain serve`` process (tests, benchmarks, scripts).

``LocalRainServer(["--max-searches", "4"]).start()`` runs ``python -m rain_core.serve`` with those
options on a free loopback port, waits until ``/health`` answers (failing with the end of its log if
it exits or takes too long), and ``stop()`` sends SIGTERM (the server drains) and SIGKILL to what is
left after ``timeout`` seconds, by the process's own id."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path

__all__ = ["LocalRainServer", "ServerStartError", "free_port"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServerStartError(RuntimeError):
    """The server exited or did not answer in time; the message ends with its log."""


class LocalRainServer:
    """One ``rain serve`` process on 127.0.0.1. ``options``: its command-line options (not
    ``--host``/``--port``); ``env``: variables added to this process's environment."""

    def __init__(
        self,
        options: Sequence[str] = (),
        *,
        port: int | None = None,
        env: Mapping[str, str] | None = None,
        python: str = sys.executable,
        log_path: str | os.PathLike[str] | None = None,
    ) -> None:
        self.options = list(options)
        self.port = port
        self.env = dict(env or {})
        self.python = python
        self.log_path = Path(log_path) if log_path else Path(tempfile.mkstemp(prefix="rain-serve-", suffix=".log")[1])
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None

    @property
    def url(self) -> str:
        """The server's root URL (``/v1`` is the OpenAI base URL under it)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    def command(self) -> list[str]:
        return [self.python, "-m", "rain_core.serve", "--host", "127.0.0.1", "--port", str(self.port), *self.options]

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/health", timeout=3) as resp:
                return int(resp.status) == 200
        except (urllib.error.URLError, OSError, ValueError):
            return False

    def start(self, timeout: float = 300.0) -> LocalRainServer:
        if self.port is None:
            self.port = free_port()
        t0 = time.monotonic()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command(),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **self.env},
            )
        while not self.healthy():
            if self.process.poll() is not None:
                code = self.process.returncode
                self.process = None
                raise ServerStartError(
                    f"rain serve exited with code {code}; its log ({self.log_path}):\n{self.log_tail()}"
                )
            if time.monotonic() - t0 > timeout:
                self.stop()
                raise ServerStartError(f"rain serve did not answer within {timeout:.0f} s; its log:\n{self.log_tail()}")
            time.sleep(0.3)
        self.startup_seconds = time.monotonic() - t0
        return self

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, sig)

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (the server drains), then SIGKILL after ``timeout`` s; the exit code."""
        proc = self.process
        if proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.signal(signal.SIGKILL)
            proc.wait(timeout=10)
        self.process = None
        return proc.returncode

    def __enter__(self) -> LocalRainServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
