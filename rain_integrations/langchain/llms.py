"""``RainLLM``: a LangChain text-completion model that decodes with RAIN (no chat template)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForLLMRun,
    CallbackManagerForLLMRun,
)
from langchain_core.language_models import BaseLLM
from langchain_core.language_models.base import LangSmithParams
from langchain_core.outputs import Generation, GenerationChunk, LLMResult
from pydantic import ConfigDict

from rain_core import RainResult

from .._decoding import Commit, Done, Event, Text, adecode_events, decode_events, usage_of
from .params import Commits, RainCall, RainParams

__all__ = ["RainLLM"]


class RainLLM(RainParams, BaseLLM):
    """A LangChain text-completion model that decodes with RAIN: the prompt is sent as it is.

    ``generate``/``batch`` send all prompts through one ``_generate`` call; each prompt's committed
    token sets reach ``on_llm_new_token`` callbacks as they are found (and ``rain_commit`` custom
    events carry each commit's statistics). RAIN's search statistics are in each generation's
    ``generation_info["rain"]``. Constructors as ``ChatRain``'s: ``from_model_id``, ``from_engine``,
    ``from_default``.

    ``stream``/``astream`` yield one piece per committed token set; the last piece is the reply's last
    token set, sent with the generation's ``finish_reason``, statistics and usage (what LangChain
    reports at the end of the run), so a stream does not end with an empty string, except when the
    decode ended with no text left to send (an empty reply, or a ``timeout`` that passed before the
    search could commit again): then the last piece is empty and carries the generation's info.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    @property
    def _llm_type(self) -> str:
        return "rain"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return self._identifying()

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> LangSmithParams:
        return LangSmithParams(ls_model_type="llm", **self._ls_common(stop, kwargs))  # type: ignore[typeddict-item]

    def _generation_info(self, result: RainResult, call: RainCall) -> dict[str, Any]:
        usage = usage_of(result)
        return {**self._info(result, call), "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens")}}

    @staticmethod
    def _llm_result(results: list[RainResult], infos: list[dict[str, Any]], model_name: str) -> LLMResult:
        prompt_tokens = sum(r.prompt_tokens for r in results)
        completion_tokens = sum(r.completion_tokens for r in results)
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        return LLMResult(
            generations=[[Generation(text=r.text, generation_info=i)] for r, i in zip(results, infos)],
            llm_output={"model_name": model_name, "token_usage": usage},
        )

    def _chunk_of(self, event: Event, call: RainCall) -> tuple[GenerationChunk, RainResult | None] | None:
        """A text event as a chunk; the end as the last chunk, with the generation's info and the result."""
        if isinstance(event, Text):
            return GenerationChunk(text=event.text), None
        if isinstance(event, Done):
            info = self._generation_info(event.result, call)
            return GenerationChunk(text=event.text, generation_info=info), event.result
        return None

    def _chunks(
        self, prompt: str, call: RainCall, run_manager: CallbackManagerForLLMRun | None
    ) -> Iterator[tuple[GenerationChunk, RainResult | None]]:
        """One chunk per committed token set (callbacks told), the last with the result."""
        commits = Commits(run_manager)
        events = decode_events(self.decoder, prompt, chat=False, **call.decode_kwargs())
        with contextlib.closing(events):
            for event in events:
                if isinstance(event, Commit):
                    commits.send(event.data)
                elif out := self._chunk_of(event, call):
                    if run_manager and out[0].text:
                        run_manager.on_llm_new_token(out[0].text, chunk=out[0])
                    yield out

    async def _achunks(
        self, prompt: str, call: RainCall, run_manager: AsyncCallbackManagerForLLMRun | None
    ) -> AsyncGenerator[tuple[GenerationChunk, RainResult | None], None]:
        """``_chunks`` for async code; leaving it stops the decode."""
        commits = Commits(run_manager)
        events = adecode_events(self.decoder, prompt, chat=False, **call.decode_kwargs())
        async with contextlib.aclosing(events):
            async for event in events:
                if isinstance(event, Commit):
                    await commits.asend(event.data)
                elif out := self._chunk_of(event, call):
                    if run_manager and out[0].text:
                        await run_manager.on_llm_new_token(out[0].text, chunk=out[0])
                    yield out

    def _generate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        call = self.call_options(stop, **kwargs)
        results = [r for prompt in prompts for _, r in self._chunks(prompt, call, run_manager) if r is not None]
        return self._llm_result(results, [self._generation_info(r, call) for r in results], self.model_name)

    async def _agenerate(
        self,
        prompts: list[str],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> LLMResult:
        call = self.call_options(stop, **kwargs)
        results = []
        for prompt in prompts:
            async with contextlib.aclosing(self._achunks(prompt, call, run_manager)) as chunks:
                results += [result async for _, result in chunks if result is not None]
        return self._llm_result(results, [self._generation_info(r, call) for r in results], self.model_name)

    def _stream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[GenerationChunk]:
        for chunk, _ in self._chunks(prompt, self.call_options(stop, **kwargs), run_manager):
            yield chunk

    async def _astream(
        self,
        prompt: str,
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[GenerationChunk]:
        chunks = self._achunks(prompt, self.call_options(stop, **kwargs), run_manager)
        async with contextlib.aclosing(chunks):
            async for chunk, _ in chunks:
                yield chunk
