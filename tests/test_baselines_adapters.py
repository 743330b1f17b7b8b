"""Every baseline behind the adapters: ``ChatRain(decoder=...)`` and ``RainLlamaIndexLLM(decoder)``
invoke, stream and their async forms give the decoder's own answer, with its statistics, and a RAIN
search option sent to a baseline is an error."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import PRINTABLE, ScriptedLM

from rain_core import (
    BestOfNDecoder,
    BlockwiseBestOfKDecoder,
    CheckRetryDecoder,
    Decoder,
    EscalatingDecoder,
    PlainDecoder,
)

pytest.importorskip("langchain_core")
pytest.importorskip("llama_index.core")

from langchain_fakes import joined  # noqa: E402

from rain_integrations.langchain import ChatRain, RainLLM  # noqa: E402
from rain_integrations.llamaindex import RainLlamaIndexLLM  # noqa: E402

SCRIPT = "the cat sat on the mat."


def no_mat(prompt: str, reply: str) -> float:
    return -1.0 if "mat" in reply else 1.0


def make(which: str) -> Decoder:
    """A baseline over a fake that strongly writes ``SCRIPT`` (other characters stay possible), judged
    by ``no_mat``."""
    lm = ScriptedLM(SCRIPT, vocab=PRINTABLE, strength=8.0)
    common: dict[str, Any] = {"max_new_tokens": 24, "seed": 2, "temperature": 1.0}
    return {
        "plain": lambda: PlainDecoder(lm, no_mat, **common),
        "best-of-n": lambda: BestOfNDecoder(lm, no_mat, n=8, **common),
        "check-retry": lambda: CheckRetryDecoder(lm, no_mat, max_tries=5, **common),
        "blockwise": lambda: BlockwiseBestOfKDecoder(lm, no_mat, k=3, block_tokens=5, **common),
        "escalating": lambda: EscalatingDecoder(lm, no_mat, encoder=None, max_searches=3, extra_searches=1, **common),
    }[which]()


METHODS = ["plain", "best-of-n", "check-retry", "blockwise", "escalating"]


def test_the_methods_answer_differently_here():
    """The scenario below tells the methods apart (plain decoding writes "mat" here, as it mostly does)."""
    answers = {m: make(m).generate("Tell me about the cat.").text for m in METHODS}
    assert "mat" in answers["plain"] and len(set(answers.values())) >= 4


@pytest.mark.parametrize("which", METHODS)
def test_chat_rain_invoke_and_stream_give_the_decoders_answer(which):
    dec = make(which)
    expected = dec.generate("Tell me about the cat.")
    chat = ChatRain(decoder=dec)
    reply = chat.invoke("Tell me about the cat.")
    assert reply.content == expected.text
    meta = reply.response_metadata
    assert meta["finish_reason"] == expected.finish_reason and meta["rain"]["method"] == which
    assert meta["rain"]["model_calls"] == expected.stats["model_calls"]
    chunks = list(chat.stream("Tell me about the cat."))
    assert joined(chunks).content == expected.text and chunks[-1].response_metadata["rain"]["method"] == which
    assert (
        RainLLM(decoder=dec).invoke("Tell me about the cat.") == dec.generate("Tell me about the cat.", chat=False).text
    )


@pytest.mark.parametrize("which", METHODS)
async def test_chat_rain_async_gives_the_decoders_answer(which):
    dec = make(which)
    expected = dec.generate("Tell me about the cat.").text
    chat = ChatRain(decoder=dec)
    assert (await chat.ainvoke("Tell me about the cat.")).content == expected
    chunks = [c async for c in chat.astream("Tell me about the cat.")]
    assert joined(chunks).content == expected


@pytest.mark.parametrize("which", METHODS)
def test_llamaindex_complete_and_stream_give_the_decoders_answer(which):
    dec = make(which)
    expected = dec.generate("Tell me about the cat.")
    llm = RainLlamaIndexLLM(dec)
    reply = llm.complete("Tell me about the cat.")
    assert reply.text == expected.text and reply.additional_kwargs["rain_stats"]["method"] == which
    responses = list(llm.stream_complete("Tell me about the cat."))
    assert "".join(r.delta for r in responses) == expected.text == responses[-1].text
    assert "rain_stats" in responses[-1].additional_kwargs


@pytest.mark.parametrize("which", METHODS)
async def test_llamaindex_async_gives_the_decoders_answer(which):
    dec = make(which)
    expected = dec.generate("Tell me about the cat.").text
    llm = RainLlamaIndexLLM(dec)
    assert (await llm.acomplete("Tell me about the cat.")).text == expected
    responses = [r async for r in await llm.astream_complete("Tell me about the cat.")]
    assert "".join(r.delta for r in responses) == expected


def test_a_search_option_sent_to_a_baseline_is_an_error():
    chat = ChatRain(decoder=make("best-of-n"))
    with pytest.raises(TypeError, match="max_searches"):
        chat.invoke("hi", max_searches=3)
    with pytest.raises(TypeError, match="num_candidates"):
        ChatRain(decoder=make("check-retry"), rain_options={"num_candidates": 3})
    llm = RainLlamaIndexLLM(make("blockwise"))
    with pytest.raises(TypeError, match="max_searches"):
        llm.complete("hi", max_searches=3)
    assert llm.complete("hi", max_new_tokens=4).additional_kwargs["rain_stats"]["new_tokens"] <= 4
