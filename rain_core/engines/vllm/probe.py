"""Server probing: which model the server serves (``/v1/models``) and what it supports, read once
when ``VLLMEngine`` is made.

``probe`` is a request plan (``vllm_plans``) of two or three one-token requests that returns the
``ServerFeatures``: it checks that the server takes token-id prompts and returns raw
log-probabilities keyed by token id, whether answers carry ``token_ids``, and whether it keeps to
``allowed_token_ids`` (else option letters are read with ``prompt_logprobs``, and a server with
neither is refused). The server's ``--max-logprobs`` is not probed: vLLM does not report it, so it
is learnt from the first refusal (``ServerFacts``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from ...protocols import EngineError
from .answers import NEG_INF, choices, logsumexp, positions_of, tokens_of
from .facts import OptionScoring, ServedModel, ServerFeatures
from .http import START_HINT, MissingFeatureError, ModelNotServedError, Transport, raise_for_answer
from .plans import Calls, Plan, completion

logger = logging.getLogger(__name__)


def served_models(transport: Transport, base_url: str, model: str = "?") -> list[dict[str, Any]]:
    """``/v1/models``: the served models (``id``, ``root``, ``max_model_len``, ...)."""
    response = transport.request("GET", "/v1/models")
    raise_for_answer(response, base_url, model, False)
    data = response.json().get("data")
    if not isinstance(data, list):
        raise EngineError(
            f"{base_url}/v1/models answered without a model list; is this an OpenAI-compatible server? {START_HINT}"
        )
    return [m for m in data if isinstance(m, dict)]


def choose_model(served: Sequence[dict[str, Any]], model: str | None, base_url: str) -> ServedModel:
    """The entry of ``served`` named ``model`` (None: the only one served), with its context length."""
    names = [str(m.get("id")) for m in served]
    if model is None:
        if len(names) != 1:
            raise ModelNotServedError(
                f"{base_url} serves {names or 'no models'}; pass model= with one of them", served=names
            )
        model = names[0]
    if model not in names:
        raise ModelNotServedError(f"{base_url} does not serve {model!r}; it serves {names}", served=names)
    entry = served[names.index(model)]
    if not entry.get("max_model_len"):
        raise MissingFeatureError(
            f"{base_url}/v1/models gives no max_model_len for {model!r}; "
            "RAIN needs the context length (a vLLM server reports it)"
        )
    root = entry.get("root")
    return ServedModel(model, int(entry["max_model_len"]), None if root is None else str(root))


def probe(
    model: str, base_url: str, prompt: Sequence[int], probe_token: int, option_scoring: OptionScoring
) -> Plan[ServerFeatures]:
    """The server's features, from one-token requests on ``prompt``. ``probe_token``: the token the
    ``allowed_token_ids`` check allows (any id the model has; the engine uses an EOS id).
    ``option_scoring``: the way asked for; ``ALLOWED_TOKEN_IDS`` falls back to ``PROMPT_LOGPROBS``
    when the server ignores ``allowed_token_ids``."""
    ids = [int(t) for t in prompt]
    (answer,) = yield Calls((completion(model, ids, 1, temperature=1.0, top_k=1, logprobs=5),))
    choice = choices(answer)[0]
    token_ids_field = choice.get("token_ids") is not None
    positions = positions_of(choice)
    if not positions or not positions[0]:
        raise MissingFeatureError(f"{base_url} returned no log-probabilities; RAIN needs them")
    values = sorted(positions[0].values(), reverse=True)
    if len(values) > 1 and values[1] <= NEG_INF:
        raise MissingFeatureError(
            f"{base_url} returns processed log-probabilities (--logprobs-mode processed_*); this engine "
            "renormalises raw ones itself: restart vLLM without --logprobs-mode (the default raw_logprobs)"
        )
    if logsumexp(values) > 1e-3:
        raise MissingFeatureError(
            f"{base_url} returns logits, not log-probabilities (--logprobs-mode raw_logits?); restart vLLM "
            "without --logprobs-mode (the default raw_logprobs)"
        )
    if option_scoring is OptionScoring.ALLOWED_TOKEN_IDS:
        call = completion(model, ids, 1, temperature=0.0, logprobs=0, allowed_token_ids=[probe_token])
        (answer,) = yield Calls((call,))
        choice = choices(answer)[0]
        if tokens_of(choice)[:1] != [probe_token] or probe_token not in positions_of(choice)[0]:
            logger.warning(
                "%s does not keep to allowed_token_ids; reading option letters with prompt_logprobs "
                "(exact, but without the prefix cache)",
                base_url,
            )
            option_scoring = OptionScoring.PROMPT_LOGPROBS
    if option_scoring is OptionScoring.PROMPT_LOGPROBS:
        (answer,) = yield Calls((completion(model, ids, 1, temperature=0.0, prompt_logprobs=0),))
        got = choices(answer)[0].get("prompt_logprobs")
        if not isinstance(got, list) or len(got) != len(ids):
            raise MissingFeatureError(
                f"{base_url} gives neither allowed_token_ids nor prompt_logprobs, so the option letters' "
                "exact log-probabilities cannot be read; use vLLM (0.32 has both)"
            )
    return ServerFeatures(token_ids_field=token_ids_field, option_scoring=option_scoring)


def server_version(transport: Transport) -> str | None:
    """The server's ``/version`` (vLLM's), or None when it does not say (an older server, a proxy)."""
    try:
        response = transport.request("GET", "/version")
        return str(response.json().get("version")) if response.status_code == 200 else None
    except Exception:  # the version is only informative
        return None
