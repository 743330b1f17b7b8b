"""What every decoder offers its callers: ``Decoder``, the one interface that ``RainDecoder`` and the
baselines of ``rain_core.baselines`` (best-of-N, check-retry, blockwise best-of-K, escalating) share.

The adapters (``ChatRain``, ``RainLLM``, ``RainLlamaIndexLLM``), the ``rain`` command and the
benchmarks depend on this protocol, not on RAIN's class, so any of these decoders goes where
``RainDecoder`` goes: the same prompts (text or chat messages, rendered with the model's chat
template), the same ``RainConfig`` limits (``max_new_tokens``, ``max_length``, ``temperature``,
``top_k``, ``seed``, ``stop``, ``max_seconds``, ``evaluator_timeout``), the same streams of
``Commit`` values and the same ``RainResult``, whose ``stats`` carry the same cost figures
(``model_calls``, ``evaluations``, ``new_tokens``, ``seconds`` and the engine's counters).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol, Union, runtime_checkable

from .chat import Message, TemplateSupport
from .config import RainConfig
from .control import Cancel
from .protocols import Evaluator, LanguageModel
from .results import RainResult
from .streams import AsyncRainStream, OnCommit, RainStream

__all__ = ["Decoder", "Prompt"]

Prompt = Union[str, Sequence[Message]]  # noqa: UP007 (a runtime alias: Python 3.10 needs Union here)


@runtime_checkable
class Decoder(Protocol):
    """A decoder of one model with one evaluator: ``RainDecoder`` or a baseline.

    ``method`` names the decoding method (``"rain"``, ``"best-of-n"``, ...). ``config`` is the base
    ``RainConfig`` of every call; ``resolve_config`` applies a call's overrides to it and raises on
    an option the decoder cannot take (a baseline refuses RAIN's search settings). ``stream`` and
    ``astream`` hand up ``Commit`` values through ``RainStream``/``AsyncRainStream``; ``generate``
    and ``agenerate`` return the ``RainResult``; ``vanilla`` is plain decoding with the same model,
    limits and seed. ``cancel`` (an ``Event`` or a function returning True) stops a decode before its
    next model call with ``DecodeCancelled``; ``max_seconds`` ends it with ``finish_reason ==
    "time"``."""

    lm: LanguageModel
    config: RainConfig

    @property
    def method(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    @property
    def template_support(self) -> TemplateSupport: ...

    @property
    def evaluator(self) -> Evaluator: ...

    def chat_prompt(self, messages: Sequence[Message], **chat_kwargs: Any) -> str: ...

    def resolve_config(self, config: RainConfig | None = None, **overrides: Any) -> RainConfig: ...

    def stream(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> RainStream: ...

    def generate(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> RainResult: ...

    def astream(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> AsyncRainStream: ...

    async def agenerate(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> RainResult: ...

    def vanilla(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> RainResult: ...
