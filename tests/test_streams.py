"""Streams end cleanly: the last chunk of every adapter's stream carries the reply's last token set
together with the metadata, so no stream (and no ``prompt | chat | StrOutputParser()`` chain) ends
with an empty piece; a decode that ends with no text left (an empty reply, a stop string at once)
ends with one empty chunk that carries the metadata; each piece goes out as soon as its token set is
committed. Underneath, ``decode_events`` and ``adecode_events`` turn ``RainDecoder.stream``/``astream``
into commits, text and a last ``Done`` that holds the last text, and stop the decode when left."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from conftest import SMALL
from fakes import PRINTABLE, ScriptedLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_fakes import joined
from llama_index.core.base.llms.types import ChatMessage, MessageRole

from rain_core import DecodeCancelled, EvaluatorError, RainDecoder
from rain_integrations._decoding import Commit, Done, Text, adecode_events, decode_events
from rain_integrations.langchain import ChatRain, RainLLM
from rain_integrations.llamaindex import RainLlamaIndexLLM

REPLY = "Blue, green and red."


def decoder(reply: str = REPLY, *, delay: float = 0.0, marker: str = "\nassistant:", **overrides: Any) -> RainDecoder:
    lm = ScriptedLM(reply, vocab=PRINTABLE, delay=delay, marker=marker)
    return RainDecoder(lm, lambda prompt, response: 1.0, encoder=None, **{**SMALL, "max_new_tokens": 200, **overrides})


def chat_chain(chat: ChatRain) -> Any:
    prompt = ChatPromptTemplate.from_messages([("system", "You answer briefly."), ("human", "{question}")])
    return prompt | chat | StrOutputParser()


# --- LangChain ---------------------------------------------------------------------------------------
def test_chat_chain_streams_end_with_text():
    chain = chat_chain(ChatRain(decoder=decoder()))
    pieces = list(chain.stream({"question": "Name three colours."}))
    assert "".join(pieces) == REPLY and len(pieces) > 3
    assert all(pieces), pieces  # no empty piece, at the end or anywhere


async def test_chat_chain_astream_ends_with_text():
    chain = chat_chain(ChatRain(decoder=decoder()))
    pieces = [p async for p in chain.astream({"question": "Name three colours."})]
    assert "".join(pieces) == REPLY and len(pieces) > 3
    assert all(pieces), pieces


async def test_chat_rain_last_chunk_carries_text_and_metadata():
    chat = ChatRain(decoder=decoder())
    for chunks in (list(chat.stream("hi")), [c async for c in chat.astream("hi")]):
        last = chunks[-1]
        assert last.content and last.chunk_position == "last"
        assert last.usage_metadata and last.response_metadata["finish_reason"] == "eos"
        assert [c for c in chunks if c.usage_metadata] == [last] and all(c.content for c in chunks)
        full = joined(chunks)
        assert full.content == REPLY
        assert full.response_metadata["rain"]["commits"] == len(full.response_metadata["rain_commits"])


async def test_rain_llm_streams_end_with_text():
    llm = RainLLM(decoder=decoder(marker="A:"))
    for pieces in (list(llm.stream("Q: colours?\nA:")), [p async for p in llm.astream("Q: colours?\nA:")]):
        assert "".join(pieces) == REPLY and len(pieces) > 3 and all(pieces), pieces
    chain = PromptTemplate.from_template("Q: {q}\nA:") | llm | StrOutputParser()
    pieces = [p async for p in chain.astream({"q": "colours?"})]
    assert "".join(pieces) == REPLY and all(pieces), pieces


def test_a_reply_cut_by_a_stop_string_ends_with_its_text():
    chunks = list(ChatRain(decoder=decoder(), stop=[" and"]).stream("hi"))
    assert "".join(c.content for c in chunks) == "Blue, green"
    assert chunks[-1].content and chunks[-1].response_metadata["finish_reason"] == "stop"


def test_a_reply_cut_by_max_tokens_ends_with_its_text():
    chunks = list(ChatRain(decoder=decoder(), max_tokens=7).stream("hi"))
    assert "".join(c.content for c in chunks) == REPLY[:7]
    assert chunks[-1].content and chunks[-1].response_metadata["finish_reason"] == "length"


@pytest.mark.parametrize(("reply", "stop", "reason"), [("", None, "eos"), (REPLY, ["Blue"], "stop")])
async def test_a_decode_with_no_text_ends_with_one_metadata_chunk(reply, stop, reason):
    chat = ChatRain(decoder=decoder(reply), stop=stop)
    for chunks in (list(chat.stream("hi")), [c async for c in chat.astream("hi")]):
        assert len(chunks) == 1, chunks
        (last,) = chunks
        assert last.content == "" and last.chunk_position == "last"
        assert last.response_metadata["finish_reason"] == reason and last.usage_metadata["output_tokens"] >= 0
    assert list(RainLLM(decoder=decoder(reply, marker="A:"), stop=stop).stream("Q: colours?\nA:")) == [""]


# --- LlamaIndex --------------------------------------------------------------------------------------
USER = [ChatMessage(role=MessageRole.USER, content="Name three colours.")]


def check_llamaindex_stream(responses: list[Any]) -> None:
    assert "".join(r.delta for r in responses) == REPLY and len(responses) > 3
    assert all(r.delta for r in responses), [r.delta for r in responses]
    assert responses[-1].additional_kwargs["finish_reason"] == "eos"
    assert responses[-1].raw["usage"]["completion_tokens"] > 0


async def test_llamaindex_streams_end_with_text():
    llm = RainLlamaIndexLLM(decoder())
    check_llamaindex_stream(list(llm.stream_complete("Name three colours.")))
    check_llamaindex_stream(list(llm.stream_chat(USER)))
    check_llamaindex_stream([r async for r in await llm.astream_complete("Name three colours.")])
    check_llamaindex_stream([r async for r in await llm.astream_chat(USER)])
    assert [r async for r in await llm.astream_chat(USER)][-1].message.content == REPLY


def test_a_llamaindex_stream_with_no_text_ends_with_the_statistics():
    (only,) = list(RainLlamaIndexLLM(decoder("")).stream_chat(USER))
    assert only.delta == "" and only.additional_kwargs["finish_reason"] == "eos"


def test_a_plain_llamaindex_stream_is_one_response():
    responses = list(RainLlamaIndexLLM(decoder(), plain=True).stream_complete("Name three colours."))
    assert [r.delta for r in responses] == [REPLY] and responses[0].additional_kwargs["rain_stats"]


# --- each piece goes out as soon as its token set is committed -------------------------------------
def test_each_piece_arrives_when_its_token_set_is_committed():
    """40 searches per commit on a slow fake (over half a second each): the first chunk arrives when
    the first commit is made, not one commit later."""
    chat = ChatRain(decoder=decoder(delay=0.005, max_searches=40, extra_searches=40, value_threshold=1.0))
    t0 = time.perf_counter()
    stream = chat.stream("hi")
    first = next(stream)
    arrived = time.perf_counter() - t0
    stream.close()
    (commit,) = first.response_metadata["rain_commits"]
    assert first.content and commit["seconds"] > 0.3
    assert arrived < commit["seconds"] * 1.2 + 0.2, (arrived, commit["seconds"])


# --- the events underneath -----------------------------------------------------------------------------
def check_events(events: list[Any]) -> None:
    """Commits come before the text they made; every text is new; the last event is ``Done`` with the
    reply's last text and the result; the commits are numbered in order."""
    *middle, done = events
    assert isinstance(done, Done) and done.text and done.result.text == REPLY
    assert all(isinstance(e, (Commit, Text)) for e in middle) and isinstance(middle[0], Commit)
    assert "".join(e.text for e in middle if isinstance(e, Text)) + done.text == REPLY
    assert all(e.text for e in middle if isinstance(e, Text))
    commits = [e.data for e in middle if isinstance(e, Commit)]
    assert [c["index"] for c in commits] == list(range(done.result.stats["commits"]))


def timeless(events: list[Any]) -> list[Any]:
    """Each event's kind and content, without the seconds it took."""
    return [
        (type(e).__name__, {k: v for k, v in e.data.items() if k != "seconds"})
        if isinstance(e, Commit)
        else (type(e).__name__, e.text)
        for e in events
    ]


async def test_blocking_and_async_events_are_the_same():
    dec = decoder(seed=5)
    blocking = list(decode_events(dec, "hi"))
    check_events(blocking)
    awaited = [e async for e in adecode_events(dec, "hi")]
    check_events(awaited)
    assert timeless(awaited) == timeless(blocking)


def test_on_commit_sees_each_commit_as_it_happens():
    seen: list[dict[str, Any]] = []
    events = list(decode_events(decoder(), "hi", on_commit=seen.append))
    assert seen == [e.data for e in events if isinstance(e, Commit)] and seen


async def settled(lm: Any) -> int:
    """The model's forward passes once nothing uses it any more."""
    count = -1
    while count != lm.stats.forward_calls:
        count = lm.stats.forward_calls
        await asyncio.sleep(0.3)
    return count


def test_closing_the_events_stops_the_decode_and_frees_the_model():
    dec = decoder(REPLY * 20, delay=0.002)
    events = decode_events(dec, "hi")
    assert isinstance(next(events), Commit)
    events.close()
    count = dec.lm.stats.forward_calls
    time.sleep(0.3)
    assert dec.lm.stats.forward_calls == count  # nothing decodes in the background
    assert dec.generate("hi", max_new_tokens=3).text == REPLY[:3]  # the model is free


async def test_leaving_the_async_events_stops_the_decode_and_frees_the_model():
    dec = decoder(REPLY * 20, delay=0.002)
    events = adecode_events(dec, "hi")
    assert isinstance(await events.__anext__(), Commit)
    await events.aclose()
    count = await settled(dec.lm)
    assert count < 2000  # a few commits' work, not the long reply's
    assert (await dec.agenerate("hi", max_new_tokens=3)).text == REPLY[:3]


def test_cancel_stops_the_decode():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(DecodeCancelled):
        list(decode_events(decoder(), "hi", cancel=cancel))


async def test_an_evaluator_error_comes_after_the_text_before_it_with_the_partial_result():
    def failing(prompt: str, response: str) -> float:
        if len(response) > 6:
            raise RuntimeError("the judge went away")
        return 1.0

    dec = RainDecoder(ScriptedLM(REPLY, vocab=PRINTABLE), failing, encoder=None, **{**SMALL, "max_new_tokens": 200})
    seen: list[Any] = []
    with pytest.raises(EvaluatorError) as blocking:
        seen.extend(decode_events(dec, "hi"))
    assert blocking.value.partial is not None and REPLY.startswith(blocking.value.partial.text)
    assert "".join(e.text for e in seen if isinstance(e, Text)) == blocking.value.partial.text
    with pytest.raises(EvaluatorError) as awaited:
        [e async for e in adecode_events(dec, "hi")]
    assert awaited.value.partial is not None


# --- the embedded model --------------------------------------------------------------------------------
@pytest.mark.model
async def test_a_chain_on_the_embedded_model_ends_with_text():
    chat = ChatRain.from_default(
        max_tokens=6, max_searches=2, extra_searches=1, num_candidates=3, max_simulation_tokens=4, seed=0
    )
    pieces = [p async for p in chat_chain(chat).astream({"question": "Name a colour."})]
    assert pieces and all(pieces), pieces
