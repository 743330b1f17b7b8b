"""``GET /metrics``: the server's Prometheus metrics, in a registry of its own (one per app).

Requests by endpoint and status; decodes in flight (a decode counts until it has really stopped,
also after its client left: its worker thread ends before its next model call); requests waiting
for a turn; and what the decodes cost: searches and commits as they happen, model calls,
evaluator calls and tokens when a decode ends, and seconds per committed token."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from ..results import RainResult

__all__ = ["CONTENT_TYPE_LATEST", "Metrics"]


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rain_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.request_seconds = Histogram(
            "rain_request_seconds",
            "Seconds from a request's arrival to its last byte",
            ["endpoint"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600),
            registry=r,
        )
        self.in_flight = Gauge("rain_decodes_in_flight", "Decodes running now", registry=r)
        self._decoding = 0
        self.queued = Gauge("rain_queue_length", "Requests waiting for a turn to decode", registry=r)
        self.draining = Gauge("rain_draining", "1 once SIGTERM was received: new requests get 503", registry=r)
        self.decodes = Counter("rain_decodes", "Decodes that ended, by why", ["finish_reason"], registry=r)
        self.cancelled = Counter("rain_decodes_cancelled", "Decodes stopped because the client left", registry=r)
        self.failed = Counter("rain_decodes_failed", "Decodes that failed, by error", ["error"], registry=r)
        self.searches = Counter("rain_searches", "Searches run", registry=r)
        self.commits = Counter("rain_commits", "Token sets committed", registry=r)
        self.model_calls = Counter("rain_model_calls", "Model calls (a batched call counts once)", registry=r)
        self.evaluator_calls = Counter("rain_evaluator_calls", "Evaluator calls (cache hits excluded)", registry=r)
        self.prompt_tokens = Counter("rain_prompt_tokens", "Prompt tokens of decodes that ended", registry=r)
        self.completion_tokens = Counter("rain_completion_tokens", "Answer tokens of decodes that ended", registry=r)
        self.simulated_tokens = Counter("rain_simulated_tokens", "Tokens sampled in simulations", registry=r)
        self.seconds_per_token = Histogram(
            "rain_seconds_per_token",
            "Seconds per committed token, per decode",
            buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )

    @property
    def decoding(self) -> int:
        """Decodes running now (the gauge's value)."""
        return self._decoding

    def decode_started(self) -> None:
        self._decoding += 1
        self.in_flight.inc()

    def decode_stopped(self) -> None:
        self._decoding -= 1
        self.in_flight.dec()

    def commit(self, stats: Mapping[str, Any] | None) -> None:
        """One commit, as it is made."""
        if stats is None:
            return
        self.commits.inc()
        self.searches.inc(float(stats.get("searches", 0)))

    def ended(self, result: RainResult) -> None:
        """A decode that ended with a result."""
        stats = result.stats
        self.decodes.labels(result.finish_reason).inc()
        self.model_calls.inc(float(stats.get("model_calls", 0)))
        self.evaluator_calls.inc(float(stats.get("evaluations", 0)))
        self.simulated_tokens.inc(float(stats.get("simulated_tokens", 0)))
        self.prompt_tokens.inc(result.prompt_tokens)
        self.completion_tokens.inc(result.completion_tokens)
        if result.completion_tokens:
            self.seconds_per_token.observe(float(stats.get("seconds", 0.0)) / result.completion_tokens)

    def answered(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.labels(endpoint, str(status)).inc()
        self.request_seconds.labels(endpoint).observe(seconds)

    def exposition(self) -> bytes:
        return bytes(generate_latest(self.registry))
