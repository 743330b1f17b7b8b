"""Which requests reached which replica, counted on the replicas themselves: an ASGI middleware that
a vLLM server loads with ``--middleware rain_bench.vllm_session_log.SessionLog`` and that appends one
JSON line per HTTP request (time, path, the session header's value) to the file named by
``RAIN_SESSION_LOG``. The affinity test and ``rain bench vllm --replicas`` read these files.

It runs inside the vLLM server's own virtualenv, so it imports only the standard library (this
package's ``__init__`` imports nothing either); ``replica_env`` gives the environment and flags that
make a replica load it.
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["SessionLog", "busiest_shares", "read_log", "replica_flags", "replica_env"]

ENV_LOG = "RAIN_SESSION_LOG"
ENV_HEADER = "RAIN_SESSION_HEADER"
MIDDLEWARE = "rain_bench.vllm_session_log.SessionLog"
ROOT = Path(__file__).resolve().parents[1]


class SessionLog:
    """A pure ASGI middleware: logs each HTTP request's path and session header, then passes it on."""

    def __init__(self, app: Any) -> None:
        self.app = app
        path = os.environ.get(ENV_LOG)
        self.header = os.environ.get(ENV_HEADER, "x-session-id").lower().encode("latin-1")
        self._file = open(path, "a", buffering=1, encoding="utf-8") if path else None  # noqa: SIM115 (process lifetime)
        self._lock = threading.Lock()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") == "http" and self._file is not None:
            session = next((v.decode("latin-1") for k, v in scope.get("headers", ()) if k == self.header), None)
            line = json.dumps({"t": time.time(), "path": scope.get("path"), "session": session})
            with self._lock:
                self._file.write(line + "\n")
        await self.app(scope, receive, send)


def replica_flags() -> list[str]:
    """The vLLM server flags that load the middleware."""
    return ["--middleware", MIDDLEWARE]


def replica_env(log_path: str | os.PathLike[str], header: str = "X-Session-ID") -> dict[str, str]:
    """The environment a replica needs to load the middleware and log to ``log_path``."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {ENV_LOG: str(log_path), ENV_HEADER: header, "PYTHONPATH": pythonpath}


def read_log(
    path: str | os.PathLike[str], since: float = 0.0, paths: Iterable[str] = ("/v1/completions",)
) -> list[dict[str, Any]]:
    """The logged requests to ``paths`` at or after ``since`` (a missing file has none)."""
    wanted = set(paths)
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []
    out = []
    for line in lines:
        try:
            entry = json.loads(line)
        except ValueError:  # a line cut short by a kill
            continue
        if entry.get("t", 0) >= since and entry.get("path") in wanted:
            out.append(entry)
    return out


def busiest_shares(logs: Sequence[Sequence[dict[str, Any]]]) -> dict[str, tuple[float, int]]:
    """For each session seen in the replicas' ``logs`` (one list per replica): the share of its
    requests that reached its busiest replica, and how many requests it made."""
    per: dict[str, Counter[int]] = {}
    for replica, entries in enumerate(logs):
        for entry in entries:
            if entry.get("session"):
                per.setdefault(entry["session"], Counter())[replica] += 1
    return {s: (max(c.values()) / sum(c.values()), sum(c.values())) for s, c in per.items()}
