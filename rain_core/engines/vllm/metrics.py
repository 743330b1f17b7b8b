"""A vLLM server's Prometheus ``/metrics``: the counters rain reports (prefix-cache lookups and hits,
prompt and generated tokens, requests running and waiting) and the prefix-cache hit rate between two
readings.

The text is parsed here, without a Prometheus client: one ``name{labels} value`` sample a line.
Counters are summed over the server's engines; samples labelled with another model are left out."""

from __future__ import annotations

import re
from collections.abc import Mapping

METRIC_NAMES = {
    "vllm:prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:gpu_prefix_cache_queries_total": "prefix_cache_queries",
    "vllm:prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:gpu_prefix_cache_hits_total": "prefix_cache_hits",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:num_requests_running": "requests_running",
    "vllm:num_requests_waiting": "requests_waiting",
}
"""vLLM's metric names (older versions say ``gpu_`` on every device) and the keys rain reports them as."""

_SAMPLE = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str, model: str) -> dict[str, float]:
    """The counters of ``METRIC_NAMES`` for ``model`` in a ``/metrics`` answer, summed over engines."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in METRIC_NAMES:
            continue
        labels = match.group(2) or ""
        if "model_name=" in labels and f'model_name="{model}"' not in labels:
            continue
        key = METRIC_NAMES[match.group(1)]
        out[key] = out.get(key, 0.0) + float(match.group(3))
    return out


def prefix_cache_hit_rate(now: Mapping[str, float], before: Mapping[str, float] | None = None) -> float | None:
    """Share of prompt tokens served from the prefix cache between ``before`` and ``now`` (two
    ``parse_metrics`` readings; ``before`` None: since the server started). None when nothing was
    looked up."""
    earlier = before or {}
    queries = now.get("prefix_cache_queries", 0.0) - earlier.get("prefix_cache_queries", 0.0)
    hits = now.get("prefix_cache_hits", 0.0) - earlier.get("prefix_cache_hits", 0.0)
    return hits / queries if queries > 0 else None
