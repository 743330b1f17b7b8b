"""LlamaIndex adapter on fake models: ``RainLlamaIndexLLM`` (prompt building, streaming, async with
cancellation, stats, tools and a ``FunctionAgent``, instrumentation events, constructors).
``RainEmbedding`` (the offline MiniLM) and end-to-end tests on the embedded model are in
``test_llamaindex_model.py``."""

from __future__ import annotations

import asyncio
import gc
import time
from typing import Any

import pytest

pytest.importorskip("llama_index.core")

from conftest import SMALL  # noqa: E402
from fakes import PRINTABLE, CharLM, ScriptedLM  # noqa: E402
from llama_index.core.agent.workflow import FunctionAgent  # noqa: E402
from llama_index.core.base.llms.types import ImageBlock, TextBlock  # noqa: E402
from llama_index.core.callbacks.token_counting import get_tokens_from_response  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.llms import ChatMessage, MessageRole  # noqa: E402
from llama_index.core.tools import FunctionTool  # noqa: E402

from rain_core import ContextTooLongError, RainDecoder  # noqa: E402
from rain_integrations.llamaindex import (  # noqa: E402
    RainCommitEvent,
    RainLlamaIndexLLM,
    RainSearchEndEvent,
    RainSearchStartEvent,
    messages_from_llamaindex,
)

USER_HI = [ChatMessage(role=MessageRole.USER, content="hi there")]
CONTEXT = CharLM().context_length


def fake_llm(evaluator=None, lm=None, **fields) -> RainLlamaIndexLLM:
    dec = RainDecoder(lm or CharLM(), evaluator or (lambda p, r: 0.5), encoder=None, **SMALL)
    return RainLlamaIndexLLM(dec, **fields)


def deltas_and_last(chunks):
    chunks = list(chunks)
    return "".join(c.delta for c in chunks), chunks


# --- construction --------------------------------------------------------------------------------
def test_needs_a_decoder():
    with pytest.raises(TypeError, match="RainDecoder"):
        RainLlamaIndexLLM()
    with pytest.raises(Exception, match="instance of Decoder"):  # RainDecoder or a baseline (rain_core.Decoder)
        RainLlamaIndexLLM(decoder="not a decoder")


def test_metadata_reports_the_model_and_budget():
    llm = fake_llm()
    meta = llm.metadata
    assert meta.context_window == CONTEXT
    assert meta.num_output == SMALL["max_new_tokens"]
    assert meta.model_name == "char-lm"
    assert meta.is_chat_model is True and meta.is_function_calling_model is True
    assert fake_llm(context_window=1000).metadata.context_window == 1000
    plain = fake_llm(chat_template=False).metadata
    assert plain.is_chat_model is False and plain.is_function_calling_model is False


# --- prompts, streaming, stats -------------------------------------------------------------------
def test_every_path_reaches_the_decoder_with_the_same_prompt(monkeypatch):
    """complete/stream_complete/chat/stream_chat and the async variants build their prompt in one
    place: the decoder receives the same rendered prompt from each."""
    llm = fake_llm(system_prompt="be kind")
    prepared = []
    original_prepare = llm.decoder.prepare

    def prepare(prompt, **kwargs):
        ids, _ = out = original_prepare(prompt, **kwargs)
        prepared.append(tuple(ids))
        return out

    monkeypatch.setattr(llm.decoder, "prepare", prepare)

    async def run_async():
        await llm.acomplete("hi there")
        [c async for c in await llm.astream_complete("hi there")]
        await llm.achat(USER_HI)
        [c async for c in await llm.astream_chat(USER_HI)]

    llm.complete("hi there")
    list(llm.stream_complete("hi there"))
    llm.chat(USER_HI)
    list(llm.stream_chat(USER_HI))
    asyncio.run(run_async())
    assert len(prepared) == 8 and len(set(prepared)) == 1
    assert CharLM().decode(prepared[0]) == "system: be kind\nuser: hi there\nassistant:"


def test_stream_complete_deltas_add_up_to_complete():
    llm = fake_llm()
    full = llm.complete("tell me a story", seed=3)
    joined, chunks = deltas_and_last(llm.stream_complete("tell me a story", seed=3))
    assert full.text and joined == full.text
    running = ""
    for c in chunks:
        running += c.delta
        assert c.text == running  # cumulative text
    assert len(chunks) >= 3  # token sets arrive one by one, the last with the stats
    assert all(not c.additional_kwargs for c in chunks[:-1])
    assert chunks[-1].delta and chunks[-1].additional_kwargs["rain_stats"]["commits"] >= 2


def test_chat_and_stream_chat_agree():
    llm = fake_llm()
    reply = llm.chat(USER_HI, seed=1)
    assert reply.message.role == MessageRole.ASSISTANT
    joined, chunks = deltas_and_last(llm.stream_chat(USER_HI, seed=1))
    assert joined == reply.message.content == chunks[-1].message.content
    assert reply.message.content == llm.complete("hi there", seed=1).text  # one user turn either way


def test_usage_and_rain_stats_are_reported():
    resp = fake_llm().complete("hello")
    info = resp.additional_kwargs
    assert info["completion_tokens"] == len(resp.raw["token_ids"]) > 0
    assert info["prompt_tokens"] == len("user: hello\nassistant:")
    assert info["total_tokens"] == info["prompt_tokens"] + info["completion_tokens"]
    assert info["finish_reason"] in ("eos", "stop", "length")
    assert {"searches", "evaluations", "commits", "rewinds"} <= set(info["rain_stats"])
    assert "commit_log" not in info["rain_stats"] and "rain_trace" not in info
    assert resp.raw["stats"]["searches"] == info["rain_stats"]["searches"] > 0
    # LlamaIndex's token counter reads the usage from ``raw``
    assert get_tokens_from_response(resp) == (info["prompt_tokens"], info["completion_tokens"])


def test_trace_on_request():
    llm = fake_llm(return_trace=True)
    resp = llm.complete("hello", keep_trees=True)
    trace = resp.additional_kwargs["rain_trace"]
    assert trace["schema"] == "rain.trace" and trace["text"] == resp.text
    assert len(trace["commits"]) == resp.additional_kwargs["rain_stats"]["commits"]
    assert "tree" in trace["commits"][0]


def test_per_call_rain_options_and_unknown_ones():
    llm = fake_llm()
    assert llm.complete("hello", max_new_tokens=3).additional_kwargs["completion_tokens"] <= 3
    assert llm.complete("hello", stop=["e"]).text.count("e") == 0
    with pytest.raises(TypeError, match="max_searches"):
        llm.complete("hello", max_searchs=3)
    with pytest.raises(TypeError, match="max_searches"):
        llm.stream_chat(USER_HI, max_searchs=3)  # at the call, before the first chunk
    with pytest.raises(ValueError):
        llm.stream_complete("hello", temperature=-1)
    assert llm.complete("hello", temperature=0).text  # 0 means "as greedy as possible", not an error


def test_context_window_caps_the_prompt():
    with pytest.raises(ContextTooLongError):
        fake_llm(context_window=10).complete("a prompt longer than ten tokens")


def test_messages_translate_to_rain_roles():
    msgs = [
        ChatMessage(role=MessageRole.DEVELOPER, content="rules"),
        ChatMessage(role=MessageRole.USER, blocks=[TextBlock(text="a"), TextBlock(text="b")]),
        ChatMessage(role=MessageRole.CHATBOT, content="c"),
        ChatMessage(
            role=MessageRole.ASSISTANT,
            content="",
            additional_kwargs={
                "tool_calls": [{"id": "x", "type": "function", "function": {"name": "add", "arguments": '{"a": 1}'}}]
            },
        ),
        ChatMessage(role=MessageRole.TOOL, content="42", additional_kwargs={"tool_call_id": "x"}),
        ChatMessage(role=MessageRole.MODEL, content=None),
    ]
    assert messages_from_llamaindex(msgs, system_prompt="ignored: a system message is already first") == [
        {"role": "system", "content": "rules"},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "c"},
        {"role": "assistant", "content": "", "tool_calls": [{"id": "x", "name": "add", "arguments": {"a": 1}}]},
        {"role": "tool", "content": "42", "tool_call_id": "x"},
        {"role": "assistant", "content": ""},
    ]
    assert messages_from_llamaindex(USER_HI, "sys")[0] == {"role": "system", "content": "sys"}
    image = ChatMessage(role=MessageRole.USER, blocks=[ImageBlock(url="http://example.invalid/cat.png")])
    with pytest.raises(ValueError, match="text-only"):
        fake_llm().chat([image])


def test_raw_completion_mode_uses_llamaindex_formatting(monkeypatch):
    llm = fake_llm(chat_template=False, completion_to_prompt=lambda p: f"q: {p}\na:")
    seen = []
    original = llm.decoder.stream
    monkeypatch.setattr(
        llm.decoder, "stream", lambda prompt, **kw: seen.append((prompt, kw["chat"])) or original(prompt, **kw)
    )
    llm.complete("why")
    llm.complete("why", formatted=True)
    llm.chat(USER_HI)
    assert seen[0] == ("q: why\na:", False)
    assert seen[1] == ("why", False)
    assert seen[2][1] is False and seen[2][0].startswith("user: hi there")


def test_plain_mode_decodes_without_search():
    plain = fake_llm(plain=True)
    resp = plain.complete("hello", seed=2)
    assert resp.text == plain.decoder.vanilla("hello", seed=2, max_length=CONTEXT).text
    assert "searches" not in resp.additional_kwargs["rain_stats"]
    joined, chunks = deltas_and_last(plain.stream_complete("hello", seed=2))
    assert joined == resp.text and chunks[-1].additional_kwargs


async def test_async_variants_match_sync_and_leave_the_loop_free():
    def slow(prompt, response):
        time.sleep(0.003)  # an evaluator doing real work
        return 0.5

    llm = fake_llm(evaluator=slow)
    ticks = 0
    running = True

    async def ticker():
        nonlocal ticks
        while running:
            ticks += 1
            await asyncio.sleep(0.001)

    task = asyncio.create_task(ticker())
    try:
        reply = await llm.acomplete("hello", seed=4)
        during_complete = ticks
        chunks = [c async for c in await llm.astream_chat([ChatMessage(role="user", content="hello")], seed=4)]
    finally:
        running = False
        await task
    assert reply.text == llm.complete("hello", seed=4).text
    assert during_complete >= 10, "acomplete blocked the event loop"
    assert "".join(c.delta for c in chunks) == reply.text == chunks[-1].message.content
    assert (await llm.achat(USER_HI, seed=4)).message.content == llm.chat(USER_HI, seed=4).message.content
    streamed = [c async for c in await llm.astream_complete("hello", seed=4)]
    assert streamed[-1].text == reply.text and streamed[-1].additional_kwargs["rain_stats"]


# --- cancellation ----------------------------------------------------------------------------------
LONG = "this answer is long on purpose, " * 16
HEAVY = dict(max_searches=40, extra_searches=40, value_threshold=1.0)  # 40 searches per commit, about 4 s
QUICK = dict(max_searches=1, extra_searches=0)


def slow_llm() -> RainLlamaIndexLLM:
    lm = ScriptedLM(lambda head: LONG if head.rstrip().endswith("long") else "ok.", vocab=PRINTABLE, delay=0.002)
    return RainLlamaIndexLLM(RainDecoder(lm, lambda p, r: 1.0, encoder=None, **dict(SMALL, max_new_tokens=1000)))


async def wait_for_work(lm: Any, n: int) -> None:
    start, t0 = lm.stats.forward_calls, time.perf_counter()
    while lm.stats.forward_calls < start + n:
        assert time.perf_counter() - t0 < 30, "the decode did not start"
        await asyncio.sleep(0.01)


async def settled(lm: Any) -> int:
    count = -1
    while count != lm.stats.forward_calls:
        count = lm.stats.forward_calls
        await asyncio.sleep(0.3)
    return count


@pytest.mark.parametrize("how", ["acomplete", "achat", "astream_chat consumer", "astream_complete consumer"])
async def test_cancelling_the_caller_stops_the_decode_within_one_search(how):
    llm = slow_llm()
    lm = llm.decoder.lm
    t0 = time.perf_counter()
    assert (await llm.acomplete("short", **QUICK)).text == "ok."
    quick_alone = time.perf_counter() - t0

    async def run() -> Any:
        if how == "acomplete":
            return await llm.acomplete("long", **HEAVY)
        if how == "achat":
            return await llm.achat([ChatMessage(role="user", content="long")], **HEAVY)
        if how == "astream_chat consumer":
            return [c async for c in await llm.astream_chat([ChatMessage(role="user", content="long")], **HEAVY)]
        return [c async for c in await llm.astream_complete("long", **HEAVY)]

    task = asyncio.create_task(run())
    await wait_for_work(lm, 60)  # a few searches into a 4-second commit
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    t0 = time.perf_counter()
    assert (await llm.acomplete("short", **QUICK)).text == "ok."
    assert time.perf_counter() - t0 < quick_alone + 0.8
    before = await settled(lm)
    await asyncio.sleep(0.3)
    assert lm.stats.forward_calls == before  # nothing decodes in the background


@pytest.mark.parametrize("abandon", ["aclose", "garbage"])
async def test_abandoned_stream_stops(abandon):
    llm = slow_llm()
    lm = llm.decoder.lm
    stream = await llm.astream_complete("long", max_searches=2, extra_searches=0)
    first = await stream.__anext__()
    assert LONG.startswith(first.text)
    if abandon == "aclose":
        await stream.aclose()
    else:
        del stream
        gc.collect()
        await asyncio.sleep(0.05)
    count = await settled(lm)
    await asyncio.sleep(0.3)
    assert lm.stats.forward_calls == count
    assert (await llm.acomplete("short", **QUICK)).text == "ok."
    full = slow_llm()
    full.decoder.lm.delay = 0.0
    full.complete("long", max_searches=2, extra_searches=0)
    assert count < full.decoder.lm.stats.forward_calls / 2  # the long answer was cut short


async def test_concurrent_async_calls_get_their_own_answers():
    lm = ScriptedLM(
        lambda head: f"answer to {head.rsplit('user: ', 1)[-1].split(chr(10))[0]}.", vocab=PRINTABLE, delay=0.0005
    )
    llm = RainLlamaIndexLLM(RainDecoder(lm, lambda p, r: 1.0, encoder=None, **dict(SMALL, max_new_tokens=100)))
    words = ["apple", "pear", "plum", "fig", "kiwi", "lime", "date", "sloe"]
    tasks = [asyncio.create_task(llm.acomplete(w)) for w in words]
    await asyncio.sleep(0.05)
    for i in (2, 5):
        tasks[i].cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for i, (word, result) in enumerate(zip(words, results)):
        if i in (2, 5):
            assert isinstance(result, asyncio.CancelledError)
        else:
            assert result.text == f"answer to {word}."


# --- tools -----------------------------------------------------------------------------------------
def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return f"It is sunny in {city}."


WEATHER_CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
ANSWER = "The tool says it is sunny in Paris."


def tool_script(head: str) -> str:
    return ANSWER if "\ntool: " in head else WEATHER_CALL


def tool_llm(script: Any = tool_script, **lm_kwargs: Any) -> RainLlamaIndexLLM:
    lm = ScriptedLM(script, vocab=PRINTABLE, **lm_kwargs)
    return RainLlamaIndexLLM(RainDecoder(lm, lambda p, r: 1.0, encoder=None, **dict(SMALL, max_new_tokens=200)))


WEATHER = FunctionTool.from_defaults(get_weather)


@pytest.mark.parametrize("tools_in_template", [True, False])
def test_chat_with_tools_parses_calls(tools_in_template):
    llm = tool_llm(tools_in_template=tools_in_template)
    response = llm.chat_with_tools([WEATHER], user_msg="Weather in Paris?")
    calls = llm.get_tool_calls_from_response(response)
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("get_weather", {"city": "Paris"})]
    assert calls[0].tool_id.startswith("call_") and response.message.content == ""
    prompt = llm.decoder.lm.prompts[-1]
    if tools_in_template:
        assert prompt.startswith('tools: ["get_weather"]')
    else:
        assert "You can call these tools" in prompt and '"city"' in prompt
    text = tool_llm(lambda head: "No tool needed.").chat_with_tools([WEATHER], user_msg="hi")
    assert text.message.content == "No tool needed."
    assert tool_llm(lambda head: "x.").get_tool_calls_from_response(text, error_on_no_tool_call=False) == []
    with pytest.raises(ValueError, match="0 tool calls"):
        llm.get_tool_calls_from_response(text)
    llm.chat_with_tools([WEATHER], user_msg="hi", tool_required=True)
    assert "You must call one of the tools." in llm.decoder.lm.prompts[-1]


def test_streamed_tool_calls_hold_the_call_syntax_back():
    llm = tool_llm(lambda head: f"Let me check. {WEATHER_CALL}")
    chunks = list(llm.stream_chat_with_tools([WEATHER], user_msg="Weather in Paris?"))
    assert not any("<" in c.delta or "{" in c.delta for c in chunks)
    assert chunks[-1].message.content == "Let me check."
    assert [c.tool_name for c in llm.get_tool_calls_from_response(chunks[-1])] == ["get_weather"]
    assert all(not llm.get_tool_calls_from_response(c, error_on_no_tool_call=False) for c in chunks[:-1])


class OwnParserLM(ScriptedLM):
    """An engine that parses its model's own reply format (``ParsesResponses``)."""

    def parse_response(self, text: str, *, prefix: str = "", tools: Any = None) -> dict[str, Any] | None:
        if not text.startswith("CALL "):
            return None
        return {
            "content": "",
            "tool_calls": [
                {
                    "type": "function",
                    "function": {"name": text.split()[1], "arguments": {"city": text.split("=", 1)[1]}},
                }
            ],
        }


def own_parser_llm(script: str) -> RainLlamaIndexLLM:
    lm = OwnParserLM(script, vocab=PRINTABLE)
    return RainLlamaIndexLLM(RainDecoder(lm, lambda p, r: 1.0, encoder=None, **dict(SMALL, max_new_tokens=200)))


def test_tool_calls_use_the_models_own_parser_first():
    llm = own_parser_llm("CALL get_weather city=Lyon")
    calls = llm.get_tool_calls_from_response(llm.chat_with_tools([WEATHER], user_msg="Weather in Lyon?"))
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("get_weather", {"city": "Lyon"})]
    fallback = own_parser_llm(WEATHER_CALL)  # a reply its parser does not read: the shared parser does
    calls = fallback.get_tool_calls_from_response(fallback.chat_with_tools([WEATHER], user_msg="?"))
    assert [(c.tool_name, c.tool_kwargs) for c in calls] == [("get_weather", {"city": "Paris"})]


@pytest.mark.parametrize("streaming", [True, False])
async def test_function_agent_calls_a_tool_and_answers(streaming):
    llm = tool_llm()
    agent = FunctionAgent(tools=[WEATHER], llm=llm, system_prompt="You answer weather questions.", streaming=streaming)
    response = await agent.run(user_msg="What is the weather in Paris?")
    assert str(response) == ANSWER
    assert [(c.tool_name, c.tool_kwargs) for c in response.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert response.tool_calls[0].tool_output.content == "It is sunny in Paris."
    last_prompt = llm.decoder.lm.prompts[-1]
    assert (
        "tool: It is sunny in Paris." in last_prompt
        and WEATHER_CALL.replace("<tool_call>", "<tool_call>\n").replace("}}</", "}}\n</") in last_prompt
    )  # the call was replayed to the model as text


# --- instrumentation -------------------------------------------------------------------------------
class Collector(BaseEventHandler):
    events: list = []

    @classmethod
    def class_name(cls) -> str:
        return "Collector"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def collector():
    handler = Collector(events=[])
    root = get_dispatcher()
    root.add_event_handler(handler)
    yield handler
    root.event_handlers.remove(handler)


def rain_events(collector: Collector) -> list:
    return [e for e in collector.events if isinstance(e, (RainSearchStartEvent, RainCommitEvent, RainSearchEndEvent))]


@pytest.mark.parametrize("path", ["complete", "stream_chat", "acomplete", "astream_chat"])
def test_instrumentation_events_per_decode(collector, path):
    llm = fake_llm()
    if path == "complete":
        resp = llm.complete("hello", seed=7)
    elif path == "stream_chat":
        resp = list(llm.stream_chat(USER_HI, seed=7))[-1]
    elif path == "acomplete":
        resp = asyncio.run(llm.acomplete("hello", seed=7))
    else:

        async def go():
            return [c async for c in await llm.astream_chat(USER_HI, seed=7)][-1]

        resp = asyncio.run(go())
    events = rain_events(collector)
    assert isinstance(events[0], RainSearchStartEvent) and isinstance(events[-1], RainSearchEndEvent)
    commits = [e for e in events if isinstance(e, RainCommitEvent)]
    assert len(commits) == resp.additional_kwargs["rain_stats"]["commits"] == len(events) - 2
    assert [c.commit["index"] for c in commits] == list(range(len(commits)))
    assert {"tokens", "text", "searches", "visits", "value", "seconds"} <= set(commits[0].commit)
    assert events[0].model_name == "char-lm" and events[0].config["max_searches"] == SMALL["max_searches"]
    end = events[-1]
    assert end.finish_reason == resp.additional_kwargs["finish_reason"]
    assert end.completion_tokens == resp.additional_kwargs["completion_tokens"]
    # the events belong to the LLM call's span, also when the decode runs in a worker thread
    llm_spans = {e.span_id for e in collector.events if type(e).__name__.startswith(("LLMCompletion", "LLMChat"))}
    assert {e.span_id for e in events} <= llm_spans and None not in llm_spans
