"""``ChatRain`` on the scripted fake: LangChain's standard unit suite, fields and call options,
replies with usage and RAIN statistics, streams, async calls, batches and LCEL chains.

Messages in: ``test_langchain_messages.py``; commit callbacks: ``test_langchain_callbacks.py``; tools:
``test_langchain_tools.py``; structured output: ``test_langchain_structured.py``; ``RainLLM``:
``test_langchain_llm.py``; constructors: ``test_constructors.py``; how streams end:
``test_streams.py``; cancellation and concurrency: ``test_langchain_async.py``; the real model:
``test_langchain_integration.py``."""

from __future__ import annotations

import asyncio
import time

import pytest
from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_fakes import chat_for, decoder_for, joined, last_user, scripted
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import ValidationError

from rain_core import RainConfig
from rain_integrations.langchain import MIN_TEMPERATURE, ChatRain, RainLLM

HELLO = "hello there."


@pytest.fixture
def hello() -> ChatRain:
    """A chat model whose fake always answers ``HELLO``."""
    return chat_for(HELLO)


class TestChatRainStandardUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatRain]:
        return ChatRain

    @property
    def chat_model_params(self) -> dict:
        return {"decoder": decoder_for(scripted(HELLO))}

    @property
    def standard_chat_model_params(self) -> dict:
        # ChatRain decodes in-process: there is no API key or retry to configure (timeout is RAIN's max_seconds).
        params = dict(super().standard_chat_model_params)
        for key in ("api_key", "max_retries"):
            params.pop(key)
        return params

    @property
    def supports_model_override(self) -> bool:
        return False  # one ChatRain wraps one loaded model


# --- fields and call options -----------------------------------------------------------------------
def test_standard_params_become_rain_options():
    chat = chat_for("hello.", max_tokens=7, temperature=0, stop=["x"], timeout=30, rain_options={"max_searches": 3})
    assert chat.call_options().options == {
        "max_searches": 3,
        "max_new_tokens": 7,
        "temperature": MIN_TEMPERATURE,
        "stop": ["x"],
        "max_seconds": 30,
    }
    call = chat.call_options(
        ["yy"], max_tokens=5, temperature=0.5, seed=3, timeout=2, rain_config=RainConfig(top_k=4), return_trace=True
    )
    opts = call.options
    assert opts["max_new_tokens"] == 5 and opts["temperature"] == 0.5 and opts["stop"] == ["yy"]
    assert opts["seed"] == 3 and opts["config"].top_k == 4 and opts["max_seconds"] == 2 and call.return_trace
    ls = chat._get_ls_params(stop=["yy"])
    assert ls["ls_provider"] == "rain" and ls["ls_model_type"] == "chat"
    assert ls["ls_model_name"] == "scripted-lm" and ls["ls_max_tokens"] == 7 and ls["ls_stop"] == ["yy"]


def test_fields_are_validated():
    dec = decoder_for(scripted("a"))
    with pytest.raises(ValidationError):
        ChatRain(decoder=dec, not_a_field=1)
    with pytest.raises(TypeError, match="unknown RAIN option"):
        ChatRain(decoder=dec, rain_options={"max_serches": 2})
    with pytest.raises(ValidationError):
        ChatRain(decoder=dec, temperature=-1)
    with pytest.raises(ValidationError):
        ChatRain(decoder=dec, timeout=0)
    with pytest.raises(ValidationError):
        RainLLM(decoder=dec, max_tokens=0)


def test_per_call_rain_overrides_change_the_search(hello):
    wide = hello.invoke("hi").response_metadata["rain"]
    assert wide["searches"] > wide["commits"]  # SMALL: several searches per commit
    one = dict(max_searches=1, extra_searches=0, min_visits=0)
    narrow = hello.invoke("hi", **one).response_metadata["rain"]
    assert narrow["searches"] == narrow["commits"]  # one search per commit
    bound = hello.bind(**one).invoke("hi").response_metadata["rain"]
    assert (bound["searches"], bound["commits"]) == (narrow["searches"], narrow["commits"])


def test_a_bad_call_option_fails_at_the_call(hello):
    with pytest.raises(TypeError, match="unknown RAIN option"):
        hello.invoke("hi", max_serches=1)
    with pytest.raises(TypeError, match="unknown RAIN option"):
        hello.stream("hi", max_serches=1).__next__()  # at the call, before the first chunk
    with pytest.raises(ValueError, match="decodes with 'scripted-lm'"):
        hello.invoke("hi", model="gpt-4")


def test_max_tokens_cuts_the_reply_and_temperature_zero_samples():
    chat = chat_for(HELLO, temperature=0)
    msg = chat.invoke("hi", max_tokens=4)
    assert msg.content == "hell" and msg.response_metadata["finish_reason"] == "length"
    assert msg.usage_metadata["output_tokens"] == 4


@pytest.mark.parametrize("stop", [["t"], ["lo th"], ["o there."], ["there.", "zzz"]])
def test_stop_strings_of_any_length_end_the_reply_before_them(hello, stop):
    expected = HELLO
    for s in stop:
        if s in expected:
            expected = expected[: expected.index(s)]
    assert hello.invoke("hi", stop=stop).content == expected
    assert "".join(c.content for c in hello.stream("hi", stop=stop)) == expected
    assert ChatRain(decoder=hello.decoder, stop=stop).invoke("hi").content == expected


# --- replies -------------------------------------------------------------------------------------
def test_invoke_returns_text_usage_and_rain_stats(hello):
    msg = hello.invoke("hi")
    assert isinstance(msg, AIMessage) and msg.content == HELLO
    usage = msg.usage_metadata
    assert usage["output_tokens"] == len(HELLO) + 1  # + EOS
    assert usage["input_tokens"] == len(hello.decoder.lm.prompts[-1])
    assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"]
    meta = msg.response_metadata
    assert meta["model_name"] == "scripted-lm" and meta["finish_reason"] == "eos"
    assert meta["rain"]["searches"] >= meta["rain"]["commits"] > 0
    assert "evaluations" in meta["rain"] and "commit_log" not in meta["rain"] and "rain_trace" not in meta


def test_generation_info_carries_rain_stats():
    result = chat_for("ok.").generate([[HumanMessage("hi")]])
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == "eos" and info["rain"]["commits"] > 0
    assert result.llm_output["model_name"] == "scripted-lm"


def test_the_trace_is_in_the_metadata_when_asked_for():
    chat = chat_for(HELLO, return_trace=True)
    msg = chat.invoke("hi")
    trace = msg.response_metadata["rain_trace"]
    assert trace["schema"] == "rain.trace" and trace["version"] == 2
    assert trace["text"] == msg.content and trace["finish_reason"] == "eos"
    assert len(trace["commits"]) == msg.response_metadata["rain"]["commits"]
    assert "".join(c["text"] for c in trace["commits"]) == HELLO
    assert all("tree" not in c for c in trace["commits"])
    tree = chat.invoke("hi", keep_trees=True).response_metadata["rain_trace"]["commits"][0]["tree"]
    assert tree["parent"][0] == -1 and len(tree["visits"]) == len(tree["parent"]) > 1
    assert list(chat.stream("hi"))[-1].response_metadata["rain_trace"]["text"] == HELLO
    assert "rain_trace" not in chat_for("hi.").invoke("x").response_metadata


# --- streams and async ---------------------------------------------------------------------------
def test_stream_sends_one_chunk_per_committed_token_set_then_the_metadata():
    chat = chat_for("hello there, friend.")
    chunks = list(chat.stream("hi"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(chunks) > 3  # one per committed token set, not one blob
    full = joined(chunks)
    assert full.content == "hello there, friend." == chat.invoke("hi").content
    assert chunks[-1].chunk_position == "last"
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]
    assert full.usage_metadata["output_tokens"] == len("hello there, friend.") + 1
    assert full.response_metadata["rain"]["commits"] > 0 and full.response_metadata["model_name"] == "scripted-lm"


async def test_astream_ainvoke_and_abatch_give_the_sync_answers(hello):
    chunks = [c async for c in hello.astream("hi")]
    assert "".join(c.content for c in chunks) == HELLO
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata
    assert (await hello.ainvoke("hi")).content == HELLO
    assert [m.content for m in await hello.abatch(["a", "b"])] == [HELLO, HELLO]


@pytest.mark.parametrize("mode", ["ainvoke", "astream"])
async def test_async_decoding_leaves_the_event_loop_free(mode):
    chat = chat_for("a reply that takes a while to search.", delay=0.0005)
    ticks, done = 0, False

    async def ticker():
        nonlocal ticks
        while not done:
            ticks += 1
            await asyncio.sleep(0.002)

    task = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    if mode == "ainvoke":
        text = (await chat.ainvoke("hi")).content
    else:
        text = "".join([c.content async for c in chat.astream("hi")])
    elapsed = time.perf_counter() - t0
    done = True
    await task
    assert text == "a reply that takes a while to search."
    assert elapsed > 0.1
    # A blocked loop would tick about once; a free one ticks every few milliseconds.
    assert ticks >= elapsed / 0.002 * 0.2


def test_batch_decodes_each_prompt():
    chat = chat_for(lambda head: f"you said {last_user(head)}.")
    prompts = ["apple", "pear", "plum", "fig"]
    out = chat.batch(prompts)
    assert [m.content for m in out] == [f"you said {p}." for p in prompts]
    assert all(m.response_metadata["rain"]["commits"] > 0 for m in out)
    assert [m.content for m in chat.batch(prompts, config={"max_concurrency": 1})] == [m.content for m in out]


def test_an_lcel_chain_of_prompt_chat_and_parser():
    chat = chat_for(lambda head: f"a poem about {last_user(head).split()[-1]}")
    prompt = ChatPromptTemplate.from_messages([("system", "You write short poems."), ("human", "Write about {topic}")])
    chain = prompt | chat | StrOutputParser()
    assert chain.invoke({"topic": "rain"}) == "a poem about rain"
    assert "system: You write short poems.\nuser: Write about rain" in chat.decoder.lm.prompts[-1]
    assert "".join(chain.stream({"topic": "snow"})) == "a poem about snow"
    assert chain.batch([{"topic": "sun"}, {"topic": "fog"}]) == ["a poem about sun", "a poem about fog"]
