"""Callbacks: each committed token set reaches LangChain as it happens. Where LangChain gives the model
its run manager (``invoke``, ``generate``, ``batch``, their async forms), a ``rain_commit`` custom
event carries the commit's statistics, attached to the model's own run; in ``stream``/``astream``,
where LangChain reports the tokens itself, the same statistics ride on the chunks
(``response_metadata["rain_commits"]``). A commit is reported once, never twice."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.messages import AIMessage
from langchain_fakes import AsyncRecorder, TokenRecorder, chat_for, completion_llm, joined

from rain_integrations.langchain import ChatRain

FRIEND = "hello there, friend."


@pytest.fixture
def friend() -> ChatRain:
    return chat_for(FRIEND)


def commits_seen(msg: AIMessage, recorder: Any) -> list[dict[str, Any]]:
    """The commits a caller received: as ``rain_commit`` events, or on the chunks merged into ``msg``."""
    assert not (recorder.commits and msg.response_metadata.get("rain_commits")), "reported twice"
    return recorder.commits or msg.response_metadata.get("rain_commits", [])


def test_commit_events_carry_each_commits_statistics(friend):
    rec = TokenRecorder()
    msg = friend.invoke("hi", config={"callbacks": [rec]})
    commits = msg.response_metadata["rain"]["commits"]
    assert len(rec.commits) == commits > 3
    assert [c["index"] for c in rec.commits] == list(range(commits))
    assert "".join(c["text"] for c in rec.commits) == FRIEND
    assert {"tokens", "searches", "visits", "real_visits", "value", "early_stop", "seconds"} <= set(rec.commits[0])
    assert sum(c["searches"] for c in rec.commits) == msg.response_metadata["rain"]["searches"]
    assert rec.commit_runs == rec.llm_runs and len(rec.llm_runs) == 1  # attached to the model's own run


def test_in_stream_the_commits_ride_on_the_chunks(friend):
    invoked = TokenRecorder()
    friend.invoke("hi", config={"callbacks": [invoked]})
    streamed = TokenRecorder()
    chunks = list(friend.stream("hi", config={"callbacks": [streamed]}))
    assert streamed.commits == []
    assert [c["text"] for c in joined(chunks).response_metadata["rain_commits"]] == [c["text"] for c in invoked.commits]
    assert all(c.response_metadata.get("rain_commits") for c in chunks[:-1] if c.content)


def test_streaming_callbacks_receive_each_token_set(friend):
    rec = TokenRecorder()
    pieces = [c.content for c in friend.stream("hi", config={"callbacks": [rec]})]
    assert rec.tokens == pieces and "".join(rec.tokens) == FRIEND


def test_streaming_true_sends_invoke_through_the_streaming_path(friend):
    rec = TokenRecorder()
    msg = ChatRain(decoder=friend.decoder, streaming=True).invoke("hi", config={"callbacks": [rec]})
    assert len([t for t in rec.tokens if t]) > 3 and "".join(rec.tokens) == msg.content
    assert len(commits_seen(msg, rec)) == msg.response_metadata["rain"]["commits"]


async def test_commit_events_on_async_paths_and_in_astream_events():
    chat = chat_for("hello there.")
    rec = AsyncRecorder()
    msg = await chat.ainvoke("hi", config={"callbacks": [rec]})
    assert len(rec.commits) == msg.response_metadata["rain"]["commits"] > 0
    texts = [c["text"] for c in rec.commits]
    chunks = [c async for c in chat.astream("hi")]
    assert [c["text"] for chunk in chunks for c in chunk.response_metadata.get("rain_commits", [])] == texts
    events = [e async for e in chat.astream_events("hi", version="v2")]
    streamed = [
        c["text"]
        for e in events
        if e["event"] == "on_chat_model_stream"
        for c in e["data"]["chunk"].response_metadata.get("rain_commits", [])
    ]
    assert streamed == texts
    streaming = ChatRain(decoder=chat.decoder, streaming=True)  # ainvoke through _astream
    rec3 = AsyncRecorder()
    msg = await streaming.ainvoke("hi", config={"callbacks": [rec3]})
    assert [c["text"] for c in commits_seen(msg, rec3)] == texts


def test_rain_llm_sends_commit_events():
    rec = TokenRecorder()
    out = completion_llm().generate(["Q: red\nA:"], callbacks=[rec])
    assert len(rec.commits) == out.generations[0][0].generation_info["rain"]["commits"] > 0
