"""The counters of one ``VLLMEngine``'s traffic: requests sent (each retry counts), retries, error
answers, resent answers, prompt and completion tokens (the server's usage) and seconds waiting.
Thread-safe: every decode sharing the engine counts into the same object."""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

COUNTERS = ("requests", "retries", "errors", "resent", "prompt_tokens", "completion_tokens", "seconds")


class EngineStats:
    """Counters named by ``COUNTERS``; ``snapshot()`` copies them (``engine_stats()``)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[str, float] = dict.fromkeys(COUNTERS, 0)
        self._counts["seconds"] = 0.0

    def attempt(self, seconds: float, retried: bool) -> None:
        """One HTTP attempt that took ``seconds``; ``retried``: it repeats a failed one."""
        with self._lock:
            self._counts["requests"] += 1
            self._counts["retries"] += int(retried)
            self._counts["seconds"] += seconds

    def error(self) -> None:
        """An error answer (a refusal or a failure the engine raises)."""
        with self._lock:
            self._counts["errors"] += 1

    def resend(self) -> None:
        """Calls sent again because their answers came back cut short."""
        with self._lock:
            self._counts["resent"] += 1

    def usage(self, body: Any) -> None:
        """The ``usage`` block of a good answer (prompt and completion tokens), if it has one."""
        usage = body.get("usage") if isinstance(body, Mapping) else None
        if isinstance(usage, Mapping):
            with self._lock:
                self._counts["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
                self._counts["completion_tokens"] += int(usage.get("completion_tokens") or 0)

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return dict(self._counts)
