"""LlamaIndex adapters for RAIN.

- ``RainLLM``: a ``CustomLLM`` over a ``RainDecoder``: ``complete``, ``stream_complete``, ``chat``,
  ``stream_chat`` and their async variants, usable as ``Settings.llm`` or as the ``llm=`` of query
  and chat engines.
- ``RainEmbedding``: a ``BaseEmbedding`` over the packaged all-MiniLM-L6-v2 (the encoder RAIN uses
  for its similarity update), so a ``VectorStoreIndex`` can be built offline.

The adapters translate and delegate: every call goes through ``RainLLM._rain_prompt`` (the one place
prompts are built, for completions and chats, streaming or not), keyword arguments become
``RainConfig`` overrides, and the ``RainResult`` becomes LlamaIndex responses with the RAIN stats in
``additional_kwargs`` and ``raw``. The search lives in ``rain_core``.

Install with the ``llamaindex`` extra: ``pip install -e '.[llamaindex]'`` in the rain checkout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, AsyncIterator, Iterator, Optional, Sequence, Union

try:
    from llama_index.core.base.llms.types import (
        ChatMessage,
        ChatResponse,
        ChatResponseAsyncGen,
        ChatResponseGen,
        CompletionResponse,
        CompletionResponseAsyncGen,
        CompletionResponseGen,
        LLMMetadata,
        MessageRole,
    )
    from llama_index.core.embeddings import BaseEmbedding
    from llama_index.core.llms import CustomLLM
    from llama_index.core.llms.callbacks import llm_chat_callback, llm_completion_callback
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "rain_integrations.llamaindex needs LlamaIndex: pip install -e '.[llamaindex]' in the rain checkout"
    ) from exc

from pydantic import Field, PrivateAttr, model_validator

from rain_core import RainDecoder, RainResult

logger = logging.getLogger(__name__)

__all__ = ["RainEmbedding", "RainLLM", "to_rain_messages"]

DEFAULT_EMBED_MODEL_NAME = "all-MiniLM-L6-v2"

# --- the default model: one copy per process, shared with the other adapters ---------------------
def _default_lm() -> Any:
    from rain_core.lm import shared_default_model

    return shared_default_model()


# --- messages in ---------------------------------------------------------------------------------
_ROLES = {
    MessageRole.SYSTEM: "system",
    MessageRole.DEVELOPER: "system",
    MessageRole.USER: "user",
    MessageRole.ASSISTANT: "assistant",
    MessageRole.CHATBOT: "assistant",
    MessageRole.MODEL: "assistant",
    MessageRole.TOOL: "tool",
    MessageRole.FUNCTION: "tool",
}
_SKIPPED_BLOCKS = {"thinking", "tool_call", "cache"}
"""Blocks that carry no prompt text for a text-only model: reasoning is not replayed, tool calls of a
non-function-calling model are not rendered, and cache points are provider hints."""


def _text_of(message: ChatMessage) -> str:
    parts = []
    for block in message.blocks:
        kind = getattr(block, "block_type", type(block).__name__)
        if kind == "text":
            parts.append(block.text)
        elif kind not in _SKIPPED_BLOCKS:
            raise ValueError(
                f"RainLLM is text-only: a {message.role.value} message has a {kind!r} block; "
                "pass text (images, audio, video and documents are not supported)"
            )
    return "\n".join(parts)


def to_rain_messages(messages: Sequence[ChatMessage], system_prompt: str | None = None) -> list[dict[str, Any]]:
    """LlamaIndex chat messages as RAIN's ``{"role", "content"}`` dicts; ``system_prompt`` becomes the
    first message unless the conversation already starts with a system message."""
    out = []
    for message in messages:
        role = _ROLES.get(MessageRole(message.role))
        if role is None:  # pragma: no cover - a role added to LlamaIndex after this adapter
            raise ValueError(f"RainLLM cannot render a message with role {message.role!r}")
        out.append({"role": role, "content": _text_of(message)})
    if system_prompt and not (out and out[0]["role"] == "system"):
        out.insert(0, {"role": "system", "content": system_prompt})
    return out


# --- results out ---------------------------------------------------------------------------------
def _usage(result: RainResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def _extras(result: RainResult | None) -> dict[str, Any]:
    """``additional_kwargs`` and ``raw`` of a response: token counts, finish reason, RAIN stats.
    ``raw["usage"]`` is where LlamaIndex's token counter looks."""
    if result is None:
        return {}
    info = {**_usage(result), "finish_reason": result.finish_reason, "rain_stats": dict(result.stats)}
    raw = {**dataclasses.asdict(result), "completion_tokens": result.completion_tokens, "usage": _usage(result)}
    return {"additional_kwargs": info, "raw": raw}


_DONE = object()


async def _in_thread(items: Iterator[Any]) -> AsyncIterator[Any]:
    """Drive a blocking iterator from a worker thread, one item at a time, so the event loop stays
    free. One worker per stream: closing the iterator waits for a step still in progress."""
    loop = asyncio.get_running_loop()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rain-stream")
    try:
        while True:
            item = await loop.run_in_executor(worker, next, items, _DONE)
            if item is _DONE:
                return
            yield item
    finally:
        close = getattr(items, "close", None)
        if close is not None:
            worker.submit(close)
        worker.shutdown(wait=False)


# --- the LLM -------------------------------------------------------------------------------------
class RainLLM(CustomLLM):
    """A LlamaIndex LLM that decodes with RAIN on a local model.

    Build it from a ready ``RainDecoder`` (``RainLLM(decoder)``) or with ``RainLLM.from_default()``
    (the embedded SmolLM2-135M-Instruct, offline). Keyword arguments of ``complete``/``chat`` and
    friends are ``RainConfig`` overrides for that call (``max_new_tokens=32``, ``seed=1``, ...).
    """

    decoder: RainDecoder = Field(exclude=True, description="The RAIN decoder every call delegates to.")
    context_window: Optional[int] = Field(
        default=None, gt=1,
        description="Prompt plus answer token cap, passed to RAIN as max_length; LlamaIndex packs "
        "retrieved context up to it. Default: the model's real context window.",
    )
    chat_template: bool = Field(
        default=True,
        description="Render prompts with the model's chat template (completions as one user turn). "
        "False sends text as-is: completion_to_prompt / messages_to_prompt apply, as for any "
        "LlamaIndex completion model.",
    )
    plain: bool = Field(
        default=False,
        description="Decode without the search (plain sampling with the same model, limits and seed): "
        "the baseline to compare RAIN against.",
    )

    def __init__(self, decoder: RainDecoder | None = None, **kwargs: Any) -> None:
        if decoder is None and "decoder" not in kwargs:
            raise TypeError("RainLLM needs a RainDecoder: RainLLM(RainDecoder(lm, ...)), or use RainLLM.from_default()")
        if decoder is not None:
            kwargs["decoder"] = decoder
        super().__init__(**kwargs)

    @model_validator(mode="after")
    def _fill_context_window(self) -> "RainLLM":
        if self.context_window is None:
            self.context_window = int(self.decoder.lm.context_length)
        return self

    @classmethod
    def from_default(cls, evaluator: Any = None, *, config: Any = None, encoder: Any = "default",
                     llm_kwargs: dict[str, Any] | None = None, **rain_options: Any) -> "RainLLM":
        """RAIN on the embedded SmolLM2-135M-Instruct (loaded once per process, offline).
        ``evaluator``: as for ``RainDecoder`` (default: the model judges harmlessness);
        ``rain_options``: ``RainConfig`` fields; ``llm_kwargs``: ``RainLLM`` fields."""
        decoder = RainDecoder(_default_lm(), evaluator, encoder=encoder, config=config, **rain_options)
        return cls(decoder, **dict(llm_kwargs or {}))

    @classmethod
    def class_name(cls) -> str:
        return "RainLLM"

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata(
            context_window=self.context_window,
            num_output=self.decoder.config.max_new_tokens,
            is_chat_model=self.chat_template,
            is_function_calling_model=False,
            model_name=self.decoder.lm.name,
        )

    # --- the one prompt builder -------------------------------------------------------------------
    def _rain_prompt(self, prompt: Union[str, Sequence[ChatMessage]], formatted: bool) -> tuple[Any, bool]:
        """What ``RainDecoder`` receives for a completion (``str``) or a chat (messages), and whether
        to render it with the chat template. Every public method builds its prompt here."""
        if isinstance(prompt, str):
            if self.chat_template:
                system = None if formatted else self.system_prompt
                return to_rain_messages([ChatMessage(role=MessageRole.USER, content=prompt)], system), True
            if not formatted:
                prompt = self._extend_prompt(self.completion_to_prompt(prompt))
            return prompt, False
        if self.chat_template:
            return to_rain_messages(prompt, self.system_prompt), True
        return self.messages_to_prompt(self._extend_messages(list(prompt))), False

    def _options(self, kwargs: dict[str, Any]) -> dict[str, Any]:
        """Per-call ``RainConfig`` overrides, checked now (so a stream fails at the call, not at its
        first chunk); LlamaIndex's context window is RAIN's ``max_length``."""
        options = {"max_length": self.context_window, **kwargs}
        self.decoder.resolve_config(**options)
        return options

    # --- decoding (shared by every public method) -------------------------------------------------
    def _decode(self, prompt: Union[str, Sequence[ChatMessage]], formatted: bool, kwargs: dict[str, Any]) -> RainResult:
        rain_prompt, chat = self._rain_prompt(prompt, formatted)
        run = self.decoder.vanilla if self.plain else self.decoder.generate
        return run(rain_prompt, chat=chat, **self._options(kwargs))

    def _pieces(self, prompt: Union[str, Sequence[ChatMessage]], formatted: bool,
                kwargs: dict[str, Any]) -> Iterator[tuple[str, RainResult | None]]:
        """``(delta, None)`` per committed token set, then ``("", result)`` once at the end."""
        rain_prompt, chat = self._rain_prompt(prompt, formatted)
        options = self._options(kwargs)

        def pieces() -> Iterator[tuple[str, RainResult | None]]:
            if self.plain:
                result = self.decoder.vanilla(rain_prompt, chat=chat, **options)
                if result.text:
                    yield result.text, None
                yield "", result
                return
            results: list[RainResult] = []
            for piece in self.decoder.stream(rain_prompt, chat=chat, result=results, **options):
                yield piece, None
            yield "", results[0]

        return pieces()

    def _completion(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponse:
        result = self._decode(prompt, formatted, kwargs)
        return CompletionResponse(text=result.text, **_extras(result))

    def _completion_stream(self, prompt: str, formatted: bool, kwargs: dict[str, Any]) -> CompletionResponseGen:
        pieces = self._pieces(prompt, formatted, kwargs)

        def gen() -> CompletionResponseGen:
            text = ""
            for delta, result in pieces:
                text += delta
                yield CompletionResponse(text=text, delta=delta, **_extras(result))

        return gen()

    def _chat(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponse:
        result = self._decode(messages, False, kwargs)
        return ChatResponse(message=ChatMessage(role=MessageRole.ASSISTANT, content=result.text), **_extras(result))

    def _chat_stream(self, messages: Sequence[ChatMessage], kwargs: dict[str, Any]) -> ChatResponseGen:
        pieces = self._pieces(messages, False, kwargs)

        def gen() -> ChatResponseGen:
            text = ""
            for delta, result in pieces:
                text += delta
                yield ChatResponse(
                    message=ChatMessage(role=MessageRole.ASSISTANT, content=text), delta=delta, **_extras(result)
                )

        return gen()

    # --- LlamaIndex API -----------------------------------------------------------------------------
    @llm_completion_callback()
    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return self._completion(prompt, formatted, kwargs)

    @llm_completion_callback()
    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        return self._completion_stream(prompt, formatted, kwargs)

    @llm_chat_callback()
    def chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return self._chat(messages, kwargs)

    @llm_chat_callback()
    def stream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseGen:
        return self._chat_stream(messages, kwargs)

    # Async: the decode runs in a worker thread; the event loop stays free meanwhile.
    @llm_completion_callback()
    async def acomplete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        return await asyncio.to_thread(self._completion, prompt, formatted, kwargs)

    @llm_completion_callback()
    async def astream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseAsyncGen:
        return _in_thread(self._completion_stream(prompt, formatted, kwargs))

    @llm_chat_callback()
    async def achat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponse:
        return await asyncio.to_thread(self._chat, messages, kwargs)

    @llm_chat_callback()
    async def astream_chat(self, messages: Sequence[ChatMessage], **kwargs: Any) -> ChatResponseAsyncGen:
        return _in_thread(self._chat_stream(messages, kwargs))


# --- the embedding model -------------------------------------------------------------------------
class RainEmbedding(BaseEmbedding):
    """Sentence embeddings from the packaged all-MiniLM-L6-v2 (offline; the encoder RAIN uses for
    its similarity update). Pass ``encoder=`` to use any object with ``encode(texts) -> (n, d)``."""

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
                from rain_core.similarity import load_default_encoder

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
