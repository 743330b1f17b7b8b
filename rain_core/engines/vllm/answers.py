"""Reading vLLM's ``/v1/completions`` answers: the choices in order, their token ids, the raw
log-probabilities of each token position keyed by token id, and a sampled token's log-probability
renormalised over the top-k at a temperature.

vLLM (with ``return_tokens_as_token_ids``) keys log-probabilities as ``"token_id:N"`` and sends -inf
as -9999.0; ``NEG_INF`` is the line below which a value counts as -inf.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ...protocols import EngineError
from .http import MissingFeatureError

NEG_INF = -9000.0
_TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")

Position = dict[int, float]
"""The raw log-probabilities the server listed at one token position: ``{token id: logprob}``."""


def token_id(key: str) -> int:
    """The id in a ``"token_id:N"`` key; ``MissingFeatureError`` for a token sent as text."""
    match = _TOKEN_ID.match(str(key))
    if match is None:
        raise MissingFeatureError(
            f"the server returned the token {key!r} as text, not as an id: it ignores return_tokens_as_token_ids; "
            "use a vLLM version that supports it (or start the server with --return-tokens-as-token-ids)"
        )
    return int(match.group(1))


def logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def choices(answer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """The answer's choices ordered by ``index`` (a batched prompt's rows come back in any order)."""
    found = answer.get("choices")
    if not isinstance(found, list):
        raise EngineError(f"the server's answer has no choices: {str(answer)[:300]}")
    return sorted(found, key=lambda c: int(c.get("index", 0)))


def tokens_of(choice: Mapping[str, Any]) -> list[int]:
    """The choice's token ids: its ``token_ids`` field, else the keys of its log-probability entries."""
    ids = choice.get("token_ids")
    if ids is not None:
        return [int(i) for i in ids]
    logprobs = choice.get("logprobs") or {}
    if logprobs.get("tokens") is not None:
        return [token_id(t) for t in logprobs["tokens"]]
    raise MissingFeatureError(
        "the server returned neither token_ids nor token-id log-probabilities; "
        "use a vLLM version with return_token_ids / return_tokens_as_token_ids"
    )


def positions_of(choice: Mapping[str, Any]) -> list[Position]:
    """The top log-probabilities of each generated position (the drawn token among them)."""
    logprobs = choice.get("logprobs") or {}
    tops = logprobs.get("top_logprobs")
    if tops is None:
        raise MissingFeatureError(
            "the server returned no log-probabilities (the logprobs field is empty); "
            "RAIN needs vLLM's per-token logprobs on /v1/completions"
        )
    return [{token_id(k): float(v) for k, v in (entry or {}).items()} for entry in tops]


def finite_count(position: Mapping[int, float]) -> int:
    """How many of ``position``'s log-probabilities are finite (vLLM pads with -9999.0)."""
    return sum(1 for v in position.values() if v > NEG_INF)


def renormalised_logprob(token: int, position: Mapping[int, float], top_k: int, temperature: float) -> float:
    """``token``'s log-probability in the ``top_k`` most probable tokens of ``position`` (raw
    log-probabilities of one position), renormalised at ``temperature``: ``lp/T - logsumexp(top-k lp/T)``.

    Raw log-probabilities are logits minus one constant, so this is exactly the sampler's value at any
    temperature. A token tied at the k-th place and broken the other way replaces the k-th."""
    ranked = sorted(position.items(), key=lambda kv: -kv[1])[:top_k]
    if token not in {i for i, _ in ranked}:
        ranked = ranked[:-1] + [(token, position[token])]
    scaled = [v / temperature for _, v in ranked]
    return position[token] / temperature - logsumexp(scaled)


def last_prompt_logprob(choice: Mapping[str, Any], token: int) -> float | None:
    """The log-probability ``prompt_logprobs`` gives the prompt's last token (``token``), or None."""
    last = (choice.get("prompt_logprobs") or [None])[-1]
    if not isinstance(last, Mapping) or str(token) not in last:
        return None
    entry = last[str(token)]
    return float(entry["logprob"] if isinstance(entry, Mapping) else entry)


def ended_at_own_eos(choice: Mapping[str, Any], tokens: Sequence[int]) -> bool:
    """Whether the server stopped this row at an EOS of its own (``finish_reason`` stop with no
    ``stop_reason``: neither a stop string nor a stop token id it was sent)."""
    return bool(tokens) and choice.get("finish_reason") == "stop" and choice.get("stop_reason") is None
