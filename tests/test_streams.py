"""Streams end cleanly: the last chunk of every adapter's stream carries the reply's last token set
together with the metadata, so no stream (and no ``prompt | chat | StrOutputParser()`` chain) ends
with an empty piece; a held piece still goes out as soon as the next search starts; and
``stream_events``, which does the holding, loses, reorders and delays nothing beyond its rule."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from conftest import SMALL
from fakes import PRINTABLE, ScriptedLM
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from llama_index.core.base.llms.types import ChatMessage, MessageRole

import rain_integrations._common as common
from rain_core import RainDecoder
from rain_integrations._common import LAST_TEXT_WAIT, Commit, Done, Event, Text, stream_events
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
        full = chunks[0]
        for c in chunks[1:]:
            full = full + c
        assert full.content == REPLY and full.response_metadata["rain"]["commits"] == len(
            full.response_metadata["rain_commits"]
        )


async def test_rain_llm_streams_end_with_text():
    llm = RainLLM(decoder=decoder(marker="A:"))
    for pieces in (list(llm.stream("Q: colours?\nA:")), [p async for p in llm.astream("Q: colours?\nA:")]):
        assert "".join(pieces) == REPLY and len(pieces) > 3 and all(pieces), pieces
    chain = PromptTemplate.from_template("Q: {q}\nA:") | llm | StrOutputParser()
    pieces = [p async for p in chain.astream({"q": "colours?"})]
    assert "".join(pieces) == REPLY and all(pieces), pieces


def test_a_reply_cut_by_a_stop_string_ends_with_its_text():
    chat = ChatRain(decoder=decoder(), stop=[" and"])
    chunks = list(chat.stream("hi"))
    assert "".join(c.content for c in chunks) == "Blue, green"
    assert chunks[-1].content and chunks[-1].response_metadata["finish_reason"] == "stop"


def test_a_reply_cut_by_max_tokens_ends_with_its_text():
    chat = ChatRain(decoder=decoder(), max_tokens=7)
    chunks = list(chat.stream("hi"))
    assert "".join(c.content for c in chunks) == REPLY[:7]
    assert chunks[-1].content and chunks[-1].response_metadata["finish_reason"] == "length"


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


def test_a_plain_llamaindex_stream_is_one_response():
    responses = list(RainLlamaIndexLLM(decoder(), plain=True).stream_complete("Name three colours."))
    assert [r.delta for r in responses] == [REPLY] and responses[0].additional_kwargs["rain_stats"]


# --- the held piece goes out as soon as the next search starts ----------------------------------------
def test_each_piece_arrives_when_the_next_search_starts_not_after_the_next_commit(monkeypatch):
    """40 searches per commit on a slow fake (over half a second each): holding a piece until the
    next commit would double the wait for the first one. The fallback wait is made long, so only the
    next search's start can have sent the piece."""
    monkeypatch.setattr(common, "LAST_TEXT_WAIT", 30.0)
    chat = ChatRain(decoder=decoder(delay=0.005, max_searches=40, extra_searches=40, value_threshold=1.0))
    t0 = time.perf_counter()
    stream = chat.stream("hi")
    first = next(stream)
    arrived = time.perf_counter() - t0
    stream.close()
    (commit,) = first.response_metadata["rain_commits"]
    assert first.content and commit["seconds"] > 0.3
    assert arrived < commit["seconds"] * 1.5 + 0.2, (arrived, commit["seconds"])


# --- stream_events itself ------------------------------------------------------------------------------
def events_then(steps: list[Any]) -> Callable[[Callable[[], bool]], Iterator[Event]]:
    """A decode's events as ``start(poll)``: each step is an event, ``"poll"`` (a search starts) or a
    number of seconds the decode works without polling (its model busy elsewhere)."""

    def start(poll: Callable[[], bool]) -> Iterator[Event]:
        for step in steps:
            if step == "poll":
                if poll():
                    raise RuntimeError("cancelled")
            elif isinstance(step, float):
                time.sleep(step)
            else:
                yield step

    return start


def timed(events: Iterator[Event]) -> list[tuple[Event, float]]:
    t0 = time.perf_counter()
    return [(event, time.perf_counter() - t0) for event in events]


DONE = Done(result=None)  # type: ignore[arg-type]  # stream_events never looks inside


def test_the_last_piece_goes_out_with_the_result():
    out = list(
        stream_events(
            events_then([Commit({"index": 0}), Text("a"), "poll", Commit({"index": 1}), Text("b"), Text("c"), DONE])
        )
    )
    assert out == [Commit({"index": 0}), Text("a"), Commit({"index": 1}), Done(None, "bc")]  # type: ignore[arg-type]


def test_a_piece_goes_out_when_a_search_starts():
    out = timed(stream_events(events_then([Text("a"), "poll", 1.0, Text("b"), DONE])))
    assert [e for e, _ in out] == [Text("a"), Done(None, "b")]  # type: ignore[arg-type]
    assert out[0][1] < 0.5 and out[1][1] >= 1.0


def test_a_piece_goes_out_after_the_wait_when_the_decode_gives_no_sign():
    out = timed(stream_events(events_then([Text("a"), 1.0, Text("b"), DONE])))
    assert [e for e, _ in out] == [Text("a"), Done(None, "b")]  # type: ignore[arg-type]
    assert LAST_TEXT_WAIT <= out[0][1] < LAST_TEXT_WAIT + 0.5 and out[1][1] >= 1.0


def test_errors_are_raised_in_the_consumer_after_the_pieces_before_them():
    def start(poll: Callable[[], bool]) -> Iterator[Event]:
        yield Text("a")
        poll()
        raise ValueError("the evaluator failed")

    events = stream_events(start)
    assert next(events) == Text("a")
    with pytest.raises(ValueError, match="the evaluator failed"):
        next(events)


def test_closing_stops_the_decode_and_waits_for_its_thread():
    polls_after_close: list[bool] = []
    closed = threading.Event()

    def start(poll: Callable[[], bool]) -> Iterator[Event]:
        yield Text("a")
        while True:  # a long decode: a search, then the next
            stop = poll()
            if closed.is_set():
                polls_after_close.append(stop)
            if stop:
                raise RuntimeError("cancelled")
            time.sleep(0.01)

    events = stream_events(start)
    assert next(events) == Text("a")
    closed.set()
    events.close()
    assert polls_after_close and polls_after_close[-1] is True
    assert not [t for t in threading.enumerate() if t.name == "rain-decode-stream"]


def test_a_set_cancel_stops_the_decode():
    cancel = threading.Event()
    cancel.set()
    with pytest.raises(RuntimeError, match="cancelled"):
        list(stream_events(events_then([Text("a"), "poll", Text("b"), DONE]), cancel))


# --- the embedded model --------------------------------------------------------------------------------
@pytest.mark.model
async def test_a_chain_on_the_embedded_model_ends_with_text():
    chat = ChatRain.from_default(
        max_tokens=6, max_searches=2, extra_searches=1, num_candidates=3, max_simulation_tokens=4, seed=0
    )
    pieces = [p async for p in chat_chain(chat).astream({"question": "Name a colour."})]
    assert pieces and all(pieces), pieces
