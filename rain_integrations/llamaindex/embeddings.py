"""``RainEmbedding``: sentence embeddings from the packaged all-MiniLM-L6-v2, offline."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

from llama_index.core.embeddings import BaseEmbedding
from pydantic import Field, PrivateAttr

__all__ = ["DEFAULT_EMBED_MODEL_NAME", "RainEmbedding"]

DEFAULT_EMBED_MODEL_NAME = "all-MiniLM-L6-v2"


class RainEmbedding(BaseEmbedding):
    """Sentence embeddings from the packaged all-MiniLM-L6-v2 (offline; the encoder RAIN uses for
    its similarity update), so a ``VectorStoreIndex`` can be built without a network. Pass
    ``encoder=`` to use any ``rain_core.protocols.Encoder`` (``encode(texts) -> (n, d)``)."""

    model_name: str = Field(default=DEFAULT_EMBED_MODEL_NAME, description="The name of the embedding model.")
    _encoder: Any = PrivateAttr(default=None)
    _lock: Any = PrivateAttr(default_factory=threading.Lock)

    def __init__(self, encoder: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "RainEmbedding"

    @property
    def encoder(self) -> Any:
        with self._lock:
            if self._encoder is None:
                from rain_core.loaders import load_default_encoder

                self._encoder = load_default_encoder()
            return self._encoder

    def _embed(self, texts: Sequence[str]) -> list[list[float]]:
        return [[float(x) for x in row] for row in self.encoder.encode(list(texts))]

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embed([query])[0]

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embed([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embed(texts)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return await asyncio.to_thread(self._embed, texts)
