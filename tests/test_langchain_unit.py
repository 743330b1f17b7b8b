"""LangChain ``ChatRain`` and ``RainLLM`` on fake models: fast, deterministic, no weights.

The fake is ``fakes.ScriptedLM`` over all printable ASCII (``vocab=PRINTABLE``), so it can write
JSON tool calls and structured output: tool calling and structured output depend on model quality,
so this is where they are tested; the real 135M model runs the standard suites in
``test_langchain_integration.py``. Cancellation and concurrency: ``test_langchain_async.py``;
guards and agent middleware: ``test_langchain_guards.py``.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any
from uuid import UUID

import pytest
from conftest import SMALL
from fakes import PRINTABLE, CharLM, ScriptedLM
from langchain_core.callbacks import AsyncCallbackHandler, BaseCallbackHandler
from langchain_core.exceptions import OutputParserException
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, PromptTemplate
from langchain_core.tools import tool
from langchain_tests.unit_tests import ChatModelUnitTests
from pydantic import BaseModel, Field, ValidationError
from typing_extensions import TypedDict

from rain_core import JudgeEvaluator, RainConfig, RainDecoder, SelfEvaluator
from rain_integrations.langchain import (
    MIN_TEMPERATURE,
    RAIN_COMMIT_EVENT,
    ChatRain,
    RainLLM,
    TemplateSupport,
    messages_from_langchain,
    parse_tool_calls,
    template_support,
    to_rain_messages,
)

FAKE = dict(SMALL, max_new_tokens=200)


def always_good(prompt: str, response: str) -> float:
    return 1.0


def scripted(script: Any, *, extra_chars: str = "", **kwargs: Any) -> ScriptedLM:
    """A scripted fake over printable ASCII (plus ``extra_chars``)."""
    return ScriptedLM(script, vocab=PRINTABLE + extra_chars, **kwargs)


def decoder_for(lm: Any, evaluator: Any = always_good, **overrides: Any) -> RainDecoder:
    return RainDecoder(lm, evaluator, encoder=None, **{**FAKE, **overrides})


LM_OPTIONS = ("tools_in_template", "delay", "marker", "extra_chars", "name")


def chat_for(script: Any, **kwargs: Any) -> ChatRain:
    lm_kwargs = {k: kwargs.pop(k) for k in LM_OPTIONS if k in kwargs}
    return ChatRain(decoder=decoder_for(scripted(script, **lm_kwargs)), **kwargs)


def last_user(head: str) -> str:
    return head.rsplit("user: ", 1)[-1].split("\n", 1)[0].strip()


WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@tool
def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return f"It is sunny in {city}."


class TokenRecorder(BaseCallbackHandler):
    def __init__(self) -> None:
        self.tokens: list[str] = []
        self.starts = 0
        self.commits: list[dict[str, Any]] = []
        self.commit_runs: set[UUID] = set()
        self.llm_runs: set[UUID] = set()

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_start(self, serialized: Any, prompts: list[str], *, run_id: UUID, **kwargs: Any) -> None:
        self.starts += 1
        self.llm_runs.add(run_id)

    def on_chat_model_start(self, serialized: Any, messages: Any, *, run_id: UUID, **kwargs: Any) -> None:
        self.starts += 1
        self.llm_runs.add(run_id)

    def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == RAIN_COMMIT_EVENT:
            self.commits.append(data)
            self.commit_runs.add(run_id)


class AsyncRecorder(AsyncCallbackHandler):
    def __init__(self) -> None:
        self.commits: list[dict[str, Any]] = []

    async def on_custom_event(self, name: str, data: Any, *, run_id: UUID, **kwargs: Any) -> None:
        if name == RAIN_COMMIT_EVENT:
            self.commits.append(data)


# --- the standard unit suite -----------------------------------------------------------------------
class TestChatRainStandardUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatRain]:
        return ChatRain

    @property
    def chat_model_params(self) -> dict:
        return {"decoder": decoder_for(scripted("hello there."))}

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


def test_standard_params_are_forwarded_to_rain():
    chat = chat_for("hello.", max_tokens=7, temperature=0, stop=["x"], timeout=30, rain_options={"max_searches": 3})
    call = chat._call(None, {})
    assert call.options == {
        "max_searches": 3,
        "max_new_tokens": 7,
        "temperature": MIN_TEMPERATURE,
        "stop": ["x"],
        "max_seconds": 30,
    }
    call = chat._call(
        ["yy"], {"max_tokens": 5, "temperature": 0.5, "seed": 3, "timeout": 2, "rain_config": RainConfig(top_k=4)}
    )
    opts = call.options
    assert opts["max_new_tokens"] == 5 and opts["temperature"] == 0.5 and opts["stop"] == ["yy"]
    assert opts["seed"] == 3 and opts["config"].top_k == 4 and opts["max_seconds"] == 2
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


# --- constructors ----------------------------------------------------------------------------------
def test_from_engine_splits_fields_from_rain_options():
    lm = scripted("hi.")
    chat = ChatRain.from_engine(lm, evaluator=always_good, encoder=None, max_tokens=9, max_searches=3, seed=5)
    assert chat.decoder.lm is lm and chat.max_tokens == 9
    assert chat.decoder.config.max_searches == 3 and chat.decoder.config.seed == 5
    assert chat.invoke("x").content == "hi."
    with pytest.raises(TypeError, match="ChatRain fields or RainConfig fields"):
        ChatRain.from_engine(lm, encoder=None, max_serches=3)
    llm = RainLLM.from_engine(lm, evaluator=always_good, encoder=None, stop=["!"])
    assert llm.stop == ["!"] and llm.decoder.lm is lm


def test_from_engine_principle_and_judge():
    lm, judge = scripted("hi."), CharLM(name="judge-lm")
    own = ChatRain.from_engine(lm, encoder=None)
    assert isinstance(own.decoder.evaluator, SelfEvaluator) and own.decoder.evaluator.lm is lm
    truthful = ChatRain.from_engine(lm, principle="truthful", encoder=None, scoring="continuous")
    assert truthful.decoder.evaluator.principle.name == "truthful"
    assert truthful.decoder.evaluator.scoring.value == "continuous"
    judged = ChatRain.from_engine(lm, judge=judge, encoder=None)
    assert type(judged.decoder.evaluator) is JudgeEvaluator and judged.decoder.evaluator.lm is judge
    with pytest.raises(TypeError, match="either judge"):
        ChatRain.from_engine(lm, judge=judge, evaluator=always_good)


def test_from_model_id_passes_loading_options_through(monkeypatch):
    """``from_model_id`` hands its loading options to ``load_model`` untouched (device_map, dtype,
    quantization, model kwargs), for the judge too; the real loader runs in the integration tests."""
    import rain_integrations._common as loading  # the adapters' one seam to rain_core.engines.loading

    loads: list[tuple[str, dict]] = []

    def fake_load(name: str, **options: Any) -> ScriptedLM:
        loads.append((name, options))
        return scripted("loaded.", name=name)

    monkeypatch.setattr(loading, "load_model", fake_load)
    quant = object()
    chat = ChatRain.from_model_id(
        "org/model-7b",
        judge="org/judge-70b",
        device_map="auto",
        dtype="bfloat16",
        quantization_config=quant,
        model_kwargs={"attn_implementation": "sdpa"},
        encoder=None,
        max_tokens=5,
        max_searches=2,
    )
    expected = {"device_map": "auto", "dtype": "bfloat16", "quantization_config": quant, "attn_implementation": "sdpa"}
    assert loads == [("org/model-7b", expected), ("org/judge-70b", expected)]
    assert chat.model_name == "org/model-7b" and chat.max_tokens == 5 and chat.decoder.config.max_searches == 2
    assert chat.decoder.evaluator.lm.name == "org/judge-70b"
    loads.clear()
    RainLLM.from_model_id("org/model-7b", judge="org/model-7b", device="cpu", encoder=None)
    assert loads == [("org/model-7b", {"device": "cpu"})]  # the same id judges with the loaded copy
    loads.clear()
    ChatRain.from_model_id("org/a", judge="org/b", device="cuda:0", judge_kwargs={"device": "cuda:1"}, encoder=None)
    assert loads == [("org/a", {"device": "cuda:0"}), ("org/b", {"device": "cuda:1"})]


# --- invoke, metadata, options ----------------------------------------------------------------------
def test_invoke_returns_text_usage_and_rain_stats():
    chat = chat_for("hello there.")
    msg = chat.invoke("hi")
    assert isinstance(msg, AIMessage)
    assert msg.content == "hello there."
    assert msg.usage_metadata["output_tokens"] == len("hello there.") + 1  # + EOS
    assert msg.usage_metadata["input_tokens"] == len(chat.decoder.lm.prompts[-1])
    assert (
        msg.usage_metadata["total_tokens"] == msg.usage_metadata["input_tokens"] + msg.usage_metadata["output_tokens"]
    )
    meta = msg.response_metadata
    assert meta["model_name"] == "scripted-lm" and meta["finish_reason"] == "eos"
    assert meta["rain"]["searches"] >= meta["rain"]["commits"] > 0
    assert "evaluations" in meta["rain"] and "commit_log" not in meta["rain"] and "rain_trace" not in meta


def test_generation_info_carries_rain_stats():
    chat = chat_for("ok.")
    result = chat.generate([[HumanMessage("hi")]])
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == "eos" and info["rain"]["commits"] > 0
    assert result.llm_output["model_name"] == "scripted-lm"


def test_per_call_rain_overrides_change_the_search():
    chat = chat_for("hello there.")
    wide = chat.invoke("hi").response_metadata["rain"]
    assert wide["searches"] > wide["commits"]  # SMALL: several searches per commit
    one = dict(max_searches=1, extra_searches=0, min_visits=0)
    narrow = chat.invoke("hi", **one).response_metadata["rain"]
    assert narrow["searches"] == narrow["commits"]  # one search per commit
    bound = chat.bind(**one).invoke("hi").response_metadata["rain"]
    assert (bound["searches"], bound["commits"]) == (narrow["searches"], narrow["commits"])
    with pytest.raises(TypeError, match="unknown RAIN option"):
        chat.invoke("hi", max_serches=1)
    with pytest.raises(TypeError, match="unknown RAIN option"):
        chat.stream("hi", max_serches=1).__next__()
    with pytest.raises(ValueError, match="decodes with 'scripted-lm'"):
        chat.invoke("hi", model="gpt-4")


def test_max_tokens_and_temperature_zero():
    chat = chat_for("hello there.", temperature=0)
    msg = chat.invoke("hi", max_tokens=4)
    assert msg.content == "hell" and msg.response_metadata["finish_reason"] == "length"
    assert msg.usage_metadata["output_tokens"] == 4


@pytest.mark.parametrize("stop", [["t"], ["lo th"], ["o there."], ["there.", "zzz"]])
def test_stop_sequences_of_any_length(stop):
    chat = chat_for("hello there.")
    expected = "hello there."
    for s in stop:
        if s in expected:
            expected = expected[: expected.index(s)]
    msg = chat.invoke("hi", stop=stop)
    assert msg.content == expected
    chunks = [c.content for c in chat.stream("hi", stop=stop)]
    assert "".join(chunks) == expected
    assert ChatRain(decoder=chat.decoder, stop=stop).invoke("hi").content == expected


def test_trace_on_request():
    chat = chat_for("hello there.", return_trace=True)
    msg = chat.invoke("hi")
    trace = msg.response_metadata["rain_trace"]
    assert trace["schema"] == "rain.trace" and trace["version"] == 2
    assert trace["text"] == msg.content and trace["finish_reason"] == "eos"
    assert len(trace["commits"]) == msg.response_metadata["rain"]["commits"]
    assert "".join(c["text"] for c in trace["commits"]) == "hello there."
    assert all("tree" not in c for c in trace["commits"])
    with_trees = chat.invoke("hi", keep_trees=True).response_metadata["rain_trace"]
    tree = with_trees["commits"][0]["tree"]
    assert tree["parent"][0] == -1 and len(tree["visits"]) == len(tree["parent"]) > 1
    last = list(chat.stream("hi"))[-1]
    assert last.response_metadata["rain_trace"]["text"] == "hello there."
    assert "rain_trace" not in chat_for("hi.").invoke("x").response_metadata


# --- callbacks: one rain_commit event per committed token set --------------------------------------
def commits_seen(msg: AIMessage, recorder: Any) -> list[dict[str, Any]]:
    """The commits a caller received: as ``rain_commit`` events where LangChain gives the model its run
    manager, else (its streaming paths) on the chunks, merged into the message."""
    assert not (recorder.commits and msg.response_metadata.get("rain_commits")), "reported twice"
    return recorder.commits or msg.response_metadata.get("rain_commits", [])


def test_commit_events_carry_each_commits_statistics():
    chat = chat_for("hello there, friend.")
    rec = TokenRecorder()
    msg = chat.invoke("hi", config={"callbacks": [rec]})
    commits = msg.response_metadata["rain"]["commits"]
    assert len(rec.commits) == commits > 3
    assert [c["index"] for c in rec.commits] == list(range(commits))
    assert "".join(c["text"] for c in rec.commits) == "hello there, friend."
    first = rec.commits[0]
    assert {"tokens", "searches", "visits", "real_visits", "value", "early_stop", "seconds"} <= set(first)
    assert sum(c["searches"] for c in rec.commits) == msg.response_metadata["rain"]["searches"]
    assert rec.commit_runs == rec.llm_runs and len(rec.llm_runs) == 1  # attached to the model's own run
    # stream(): LangChain reports the tokens itself, so the commits ride on the chunks
    streamed = TokenRecorder()
    chunks = list(chat.stream("hi", config={"callbacks": [streamed]}))
    assert streamed.commits == []
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert [c["text"] for c in full.response_metadata["rain_commits"]] == [c["text"] for c in rec.commits]
    assert all(c.response_metadata.get("rain_commits") for c in chunks[:-1] if c.content)


async def test_commit_events_on_async_paths_and_in_astream_events():
    chat = chat_for("hello there.")
    rec = AsyncRecorder()
    msg = await chat.ainvoke("hi", config={"callbacks": [rec]})
    assert len(rec.commits) == msg.response_metadata["rain"]["commits"] > 0
    chunks = [c async for c in chat.astream("hi")]
    commits = [c for chunk in chunks for c in chunk.response_metadata.get("rain_commits", [])]
    assert [c["text"] for c in commits] == [c["text"] for c in rec.commits]
    events = [e async for e in chat.astream_events("hi", version="v2")]
    streamed = [
        c
        for e in events
        if e["event"] == "on_chat_model_stream"
        for c in e["data"]["chunk"].response_metadata.get("rain_commits", [])
    ]
    assert [c["text"] for c in streamed] == [c["text"] for c in rec.commits]
    streaming = ChatRain(decoder=chat.decoder, streaming=True)  # ainvoke through _astream
    rec3 = AsyncRecorder()
    msg = await streaming.ainvoke("hi", config={"callbacks": [rec3]})
    assert [c["text"] for c in commits_seen(msg, rec3)] == [c["text"] for c in rec.commits]


def test_rain_llm_commit_events():
    llm = completion_llm()
    rec = TokenRecorder()
    out = llm.generate(["Q: red\nA:"], callbacks=[rec])
    assert len(rec.commits) == out.generations[0][0].generation_info["rain"]["commits"] > 0


# --- messages in --------------------------------------------------------------------------------
def test_every_message_kind_reaches_the_template():
    chat = chat_for(lambda head: "seen.")
    history = [
        SystemMessage("be brief"),
        HumanMessage("weather in paris?"),
        AIMessage("", tool_calls=[{"name": "get_weather", "args": {"city": "Paris"}, "id": "c1"}]),
        ToolMessage("sunny", tool_call_id="c1", name="get_weather"),
        AIMessage("It is sunny."),
        ChatMessage(role="human", content="thanks"),
    ]
    assert chat.invoke(history).content == "seen."
    assert chat.decoder.lm.prompts[-1] == (
        "system: be brief\nuser: weather in paris?\n"
        f"assistant: {WEATHER_CALL}\n"
        "tool: sunny\nassistant: It is sunny.\nuser: thanks\nassistant:"
    )


def test_messages_from_langchain_native_and_fallback_rendering():
    msgs = [
        HumanMessage([{"type": "text", "text": "add"}, {"type": "text", "text": "1 and 2"}]),
        AIMessage(
            [{"type": "text", "text": "sure"}, {"type": "tool_use", "id": "c1", "name": "add", "input": {}}],
            tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}],
        ),
        ToolMessage("missing b", tool_call_id="c1", name="add", status="error"),
    ]
    native, kwargs = messages_from_langchain(msgs)
    assert kwargs == {}
    assert native == [
        {"role": "user", "content": "add\n1 and 2"},
        {
            "role": "assistant",
            "content": "sure",
            "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}
            ],
        },
        {"role": "tool", "content": "(tool error) missing b", "tool_call_id": "c1", "name": "add"},
    ]
    plain, _ = messages_from_langchain(msgs, support=TemplateSupport(tools=False, tool_calls=False, tool_role=False))
    assert plain[1] == {
        "role": "assistant",
        "content": 'sure\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
    }
    assert plain[2] == {"role": "user", "content": "Result of tool add:\n(tool error) missing b"}
    with pytest.raises(ValueError, match="text-only"):
        messages_from_langchain([HumanMessage([{"type": "image_url", "image_url": {"url": "http://x"}}])])
    assert to_rain_messages is messages_from_langchain  # the old name still works


def test_template_support_is_probed():
    assert template_support(scripted("a")) == TemplateSupport(tools=True, tool_calls=False, tool_role=True)
    assert template_support(scripted("a", tools_in_template=False)).tools is False
    assert chat_for("a").decoder.template_support == TemplateSupport(tools=True, tool_calls=False, tool_role=True)


# --- streaming, callbacks, async ------------------------------------------------------------------
def test_stream_yields_committed_token_sets_then_a_last_chunk():
    chat = chat_for("hello there, friend.")
    chunks = list(chat.stream("hi"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert len(chunks) > 3  # one per committed token set, not one blob
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == "hello there, friend." == chat.invoke("hi").content
    assert chunks[-1].chunk_position == "last"
    assert [c for c in chunks if c.usage_metadata] == [chunks[-1]]
    assert full.usage_metadata["output_tokens"] == len("hello there, friend.") + 1
    assert full.response_metadata["rain"]["commits"] > 0 and full.response_metadata["model_name"] == "scripted-lm"


def test_streaming_callbacks_receive_each_token_set():
    chat = chat_for("hello there, friend.")
    rec = TokenRecorder()
    pieces = [c.content for c in chat.stream("hi", config={"callbacks": [rec]})]
    assert rec.tokens == pieces and "".join(rec.tokens) == "hello there, friend."
    # streaming=True sends invoke through the same path
    rec2 = TokenRecorder()
    msg = ChatRain(decoder=chat.decoder, streaming=True).invoke("hi", config={"callbacks": [rec2]})
    assert len([t for t in rec2.tokens if t]) > 3 and "".join(rec2.tokens) == msg.content
    assert len(commits_seen(msg, rec2)) == msg.response_metadata["rain"]["commits"]


async def test_astream_and_ainvoke_match_sync():
    chat = chat_for("hello there.")
    chunks = [c async for c in chat.astream("hi")]
    assert "".join(c.content for c in chunks) == "hello there."
    assert chunks[-1].chunk_position == "last" and chunks[-1].usage_metadata
    assert (await chat.ainvoke("hi")).content == "hello there."
    assert [m.content for m in await chat.abatch(["a", "b"])] == ["hello there.", "hello there."]


@pytest.mark.parametrize("mode", ["ainvoke", "astream"])
async def test_async_decoding_does_not_block_the_event_loop(mode):
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


def test_lcel_chain_prompt_chat_parser():
    chat = chat_for(lambda head: f"a poem about {last_user(head).split()[-1]}")
    prompt = ChatPromptTemplate.from_messages([("system", "You write short poems."), ("human", "Write about {topic}")])
    chain = prompt | chat | StrOutputParser()
    assert chain.invoke({"topic": "rain"}) == "a poem about rain"
    assert "system: You write short poems.\nuser: Write about rain" in chat.decoder.lm.prompts[-1]
    assert "".join(chain.stream({"topic": "snow"})) == "a poem about snow"
    assert chain.batch([{"topic": "sun"}, {"topic": "fog"}]) == ["a poem about sun", "a poem about fog"]


# --- tools --------------------------------------------------------------------------------------
def test_parse_tool_calls_formats():
    names = ["get_weather", "add"]
    content, calls, bad = parse_tool_calls(f"Let me check.\n{WEATHER_CALL}", names)
    assert content == "Let me check." and not bad
    assert [(c["name"], c["args"], c["type"]) for c in calls] == [("get_weather", {"city": "Paris"}, "tool_call")]
    assert calls[0]["id"].startswith("call_")
    two = (
        '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call>'
        '<tool_call>{"name": "add", "parameters": "{\\"a\\": 2}"}'
    )
    _, calls, _ = parse_tool_calls(two, names)  # second block unclosed, string arguments
    assert [c["args"] for c in calls] == [{"a": 1}, {"a": 2}]
    content, calls, _ = parse_tool_calls('```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```', names)
    assert content == "" and calls[0]["args"] == {"a": 1, "b": 2}
    _, calls, _ = parse_tool_calls('[{"type": "function", "function": {"name": "add", "arguments": {}}}]', names)
    assert calls[0]["name"] == "add"
    _, calls, bad = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": </tool_call>', names)
    assert not calls and bad[0]["error"].startswith("invalid JSON") and bad[0]["type"] == "invalid_tool_call"
    _, calls, bad = parse_tool_calls('<tool_call>{"name": "launch", "arguments": {}}</tool_call>', names)
    assert not calls and "unknown tool" in bad[0]["error"]
    text = '{"name": "Ann", "arguments": "none"}'
    assert parse_tool_calls(text, names) == (text, [], [])  # JSON naming no tool is an answer
    assert parse_tool_calls("plain words", names) == ("plain words", [], [])


@pytest.mark.parametrize("tools_in_template", [True, False])
def test_bind_tools_invoke_renders_tools_and_parses_calls(tools_in_template):
    chat = chat_for(WEATHER_CALL, tools_in_template=tools_in_template)
    msg = chat.bind_tools([get_weather]).invoke("weather in paris?")
    assert msg.content == ""
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert any(b["type"] == "tool_call" for b in msg.content_blocks)
    prompt = chat.decoder.lm.prompts[-1]
    if tools_in_template:
        assert prompt.startswith('tools: ["get_weather"]')
        assert "You can call these tools" not in prompt
    else:  # a template without tool support (SmolLM2's) gets the schemas in the system message
        assert prompt.startswith("system: You can call these tools:")
        assert '"name": "get_weather"' in prompt and '"city"' in prompt and "<tool_call>" in prompt


def test_bind_tools_stream_holds_call_syntax_back():
    chat = chat_for(f"Let me check. {WEATHER_CALL}")
    model = chat.bind_tools([get_weather])
    chunks = list(model.stream("weather in paris?"))
    assert not any("<" in c.content or "{" in c.content for c in chunks)
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content.strip() == "Let me check."
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert any(b["type"] == "tool_call" for b in full.content_blocks)


async def test_bind_tools_async_paths():
    chat = chat_for('{"name": "get_weather", "arguments": {"city": "Paris"}}')
    model = chat.bind_tools([get_weather], tool_choice="any")
    msg = await model.ainvoke("weather?")
    assert msg.tool_calls[0]["args"] == {"city": "Paris"}
    full = None
    async for c in model.astream("weather?"):
        full = c if full is None else full + c
    assert full.tool_calls[0]["args"] == {"city": "Paris"} and full.content == ""


def test_tool_call_without_arguments_and_agent_round_trip():
    @tool
    def magic_number() -> int:
        """Return the magic number."""
        return 5

    chat = chat_for(lambda head: "It is 5." if "\ntool: 5" in head else '{"name": "magic_number", "arguments": {}}')
    model = chat.bind_tools([magic_number])
    question = HumanMessage("What is the magic number?")
    call = model.invoke([question])
    assert [(c["name"], c["args"]) for c in call.tool_calls] == [("magic_number", {})]
    result = magic_number.invoke(call.tool_calls[0])
    assert isinstance(result, ToolMessage) and result.tool_call_id == call.tool_calls[0]["id"]
    answer = model.invoke([question, call, result])
    assert answer.content == "It is 5." and answer.tool_calls == []
    assert (
        '<tool_call>\n{"name": "magic_number", "arguments": {}}\n</tool_call>\ntool: 5' in chat.decoder.lm.prompts[-1]
    )


@pytest.mark.parametrize("tools_in_template", [True, False])
def test_unicode_tool_arguments_survive(tools_in_template):
    name = "\u4f60\u597d\u554a\u96c6\u56e2"  # 你好啊集团

    @tool
    def add_customer(customer_name: str) -> str:
        """Create a customer."""
        return "ok"

    call = f'<tool_call>{{"name": "add_customer", "arguments": {{"customer_name": "{name}"}}}}</tool_call>'
    chat = chat_for(call, extra_chars=name, tools_in_template=tools_in_template)
    model = chat.bind_tools([add_customer], tool_choice="any")
    msg = model.invoke(f"Create a customer named {name}")
    assert msg.tool_calls[0]["args"] == {"customer_name": name}
    full = None
    for c in model.stream(f"Create a customer named {name}"):
        full = c if full is None else full + c
    assert full.tool_calls[0]["args"] == {"customer_name": name}
    rendered, _ = messages_from_langchain([msg], support=TemplateSupport(tool_calls=False))
    assert name in rendered[0]["content"]  # written as characters, not \\u escapes


def test_tool_choice_is_an_instruction():
    chat = chat_for("Hello.")
    chat.bind_tools([get_weather], tool_choice="any").invoke("hi")
    assert "You must call one of the tools." in chat.decoder.lm.prompts[-1]
    chat.bind_tools([get_weather], tool_choice="get_weather").invoke("hi")
    assert "You must call the tool get_weather." in chat.decoder.lm.prompts[-1]
    msg = chat.bind_tools([get_weather], tool_choice="none").invoke("hi")
    assert "tools:" not in chat.decoder.lm.prompts[-1] and msg.content == "Hello."
    with pytest.raises(ValueError, match="names no bound tool"):
        chat.bind_tools([get_weather], tool_choice="get_time")


def test_text_reply_with_tools_bound_stays_text():
    chat = chat_for("It is sunny.")
    msg = chat.bind_tools([get_weather]).invoke("weather?")
    assert msg.content == "It is sunny." and msg.tool_calls == []
    assert "".join(c.content for c in chat.bind_tools([get_weather]).stream("weather?")) == "It is sunny."


class OwnParserLM(ScriptedLM):
    """A model whose engine parses its own reply format (``ParsesResponses``): ``CALL name key=value``."""

    def __init__(self, script: Any, *, answer: str | None = "parsed", **kwargs: Any) -> None:
        super().__init__(script, vocab=PRINTABLE, **kwargs)
        self.answer = answer
        self.parsed: list[tuple[str, str]] = []

    def parse_response(self, text: str, *, prefix: str = "", tools: Any = None) -> dict[str, Any] | None:
        self.parsed.append((text, prefix))
        if self.answer == "raise":
            raise ValueError("cannot parse this")
        if self.answer is None or not text.startswith("CALL "):
            return None
        name, arg = text[5:].split(" ", 1)
        key, value = arg.split("=", 1)
        return {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"type": "function", "function": {"name": name, "arguments": {key: value}}}],
        }


def test_tool_calls_parsed_by_the_models_own_parser_first():
    lm = OwnParserLM("CALL get_weather city=Lyon")
    msg = ChatRain(decoder=decoder_for(lm)).bind_tools([get_weather]).invoke("weather in lyon?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Lyon"})]
    text, prefix = lm.parsed[-1]
    assert text == "CALL get_weather city=Lyon" and prefix == lm.prompts[-1]  # the rendered prompt it continues
    # a parser that has no result, or fails, leaves the shared parser to read the reply
    for answer in (None, "raise"):
        fallback = OwnParserLM(WEATHER_CALL, answer=answer)
        msg = ChatRain(decoder=decoder_for(fallback)).bind_tools([get_weather]).invoke("weather?")
        assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
        assert fallback.parsed
    plain = OwnParserLM("CALL get_weather city=Lyon")
    assert ChatRain(decoder=decoder_for(plain)).invoke("hi").content == "CALL get_weather city=Lyon"
    assert plain.parsed == []  # no tools bound: the reply is text


# --- structured output --------------------------------------------------------------------------
class Person(BaseModel):
    """A person."""

    name: str = Field(description="their name")
    age: int = Field(description="their age")


class PersonDict(TypedDict):
    """A person."""

    name: str
    age: int


SCHEMAS = pytest.mark.parametrize(
    "schema", [Person, PersonDict, Person.model_json_schema()], ids=["pydantic", "typeddict", "json"]
)


def expected_person(schema: Any) -> Any:
    return Person(name="Ann", age=31) if schema is Person else {"name": "Ann", "age": 31}


@SCHEMAS
def test_structured_output_json_schema(schema):
    chat = chat_for('```json\n{"name": "Ann", "age": 31}\n```')
    structured = chat.with_structured_output(schema)  # method="json_schema" by default
    out = structured.invoke("Ann is 31.")
    assert out == expected_person(schema)
    prompt = chat.decoder.lm.prompts[-1]
    assert "Reply with only a JSON object" in prompt and '"age"' in prompt and '"integer"' in prompt
    assert list(structured.stream("Ann is 31."))[-1] == out
    raw = chat.with_structured_output(schema, include_raw=True).invoke("Ann is 31.")
    assert raw["parsed"] == out and raw["parsing_error"] is None
    assert raw["raw"].response_metadata["rain"]["commits"] > 0


@SCHEMAS
def test_structured_output_function_calling(schema):
    title = "PersonDict" if schema is PersonDict else "Person"
    chat = chat_for(f'<tool_call>{{"name": "{title}", "arguments": {{"name": "Ann", "age": 31}}}}</tool_call>')
    structured = chat.with_structured_output(schema, method="function_calling")
    assert structured.invoke("Ann is 31.") == expected_person(schema)
    assert f"You must call the tool {title}." in chat.decoder.lm.prompts[-1]
    assert list(structured.stream("Ann is 31."))[-1] == expected_person(schema)


def test_structured_output_json_mode():
    chat = chat_for('{"name": "Ann", "age": 31} is the answer.')
    assert chat.with_structured_output(method="json_mode").invoke("Ann?") == {"name": "Ann", "age": 31}
    assert "Reply with only a JSON object, no other text." in chat.decoder.lm.prompts[-1]
    assert chat.with_structured_output(Person, method="json_mode").invoke("Ann?") == Person(name="Ann", age=31)


JSON_SCHEMA = Person.model_json_schema()


@pytest.mark.parametrize(
    "schema, method, reply, why",
    [
        (Person, "json_schema", "Ann is thirty-one.", "not JSON"),
        (JSON_SCHEMA, "json_schema", "Ann is thirty-one.", "not JSON"),
        (Person, "json_schema", '{"name": "Ann", "age": "old"}', "does not match the schema"),
        (Person, "json_schema", '{"name": "Ann"}', "does not match the schema"),
        (JSON_SCHEMA, "json_schema", '{"name": "Ann"}', "does not match the schema"),  # required keys checked
        (JSON_SCHEMA, "json_schema", '["Ann", 31]', "does not match the schema"),
        (Person, "function_calling", "Ann is thirty-one.", "did not call the output tool"),
        (JSON_SCHEMA, "function_calling", "Ann is thirty-one.", "did not call the output tool"),
    ],
)
async def test_structured_output_that_does_not_parse_raises(schema, method, reply, why):
    chat = chat_for(reply)
    structured = chat.with_structured_output(schema, method=method)
    with pytest.raises(OutputParserException, match=why) as info:
        structured.invoke("Ann?")
    assert info.value.llm_output == reply  # the reply is attached, never a silent None
    with pytest.raises(OutputParserException, match=why):
        await structured.ainvoke("Ann?")
    raw = chat.with_structured_output(schema, method=method, include_raw=True).invoke("Ann?")
    assert raw["parsed"] is None and isinstance(raw["parsing_error"], OutputParserException)
    assert raw["raw"].content == reply


def test_structured_output_arguments_are_checked():
    chat = chat_for("x")
    with pytest.raises(ValueError, match="method must be one of"):
        chat.with_structured_output(Person, method="regex")
    with pytest.raises(ValueError, match="needs a schema"):
        chat.with_structured_output(None)


# --- RainLLM ------------------------------------------------------------------------------------
def completion_llm(**kwargs: Any) -> RainLLM:
    lm = scripted(lambda head: f" {head.strip().split()[-1]} done.", marker="A:")
    return RainLLM(decoder=decoder_for(lm), **kwargs)


def test_rain_llm_batches_through_one_generate_call(monkeypatch):
    llm = completion_llm()
    rec = TokenRecorder()
    prompts = ["Q: red\nA:", "Q: blue\nA:", "Q: green\nA:"]
    calls = []
    original = RainLLM._generate

    def spy(self, prompts, stop=None, run_manager=None, **kwargs):
        calls.append(list(prompts))
        return original(self, prompts, stop, run_manager, **kwargs)

    monkeypatch.setattr(RainLLM, "_generate", spy)
    result = llm.generate(prompts, callbacks=[rec])
    assert calls == [prompts]  # all prompts in one _generate call
    assert [g[0].text for g in result.generations] == [" red done.", " blue done.", " green done."]
    assert "".join(rec.tokens) == " red done. blue done. green done."
    assert len(rec.tokens) > 6  # streamed per committed token set
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == "eos" and info["rain"]["commits"] > 0
    assert result.llm_output["token_usage"]["completion_tokens"] == sum(
        len(t) + 1 for t in (" red done.", " blue done.", " green done.")
    )
    assert llm.batch(prompts) == [" red done.", " blue done.", " green done."]


def test_rain_llm_stream_stop_and_async():
    llm = completion_llm(stop=["done"])
    assert llm.invoke("Q: red\nA:") == " red "
    pieces = list(llm.stream("Q: blue\nA:"))
    assert "".join(pieces) == " blue " and len(pieces) > 1
    assert llm.invoke("Q: red\nA:", stop=["d d"]) == " re"
    assert completion_llm().invoke("Q: red\nA:", max_tokens=3) == " re"


async def test_rain_llm_async():
    llm = completion_llm()
    assert await llm.ainvoke("Q: red\nA:") == " red done."
    assert "".join([p async for p in llm.astream("Q: red\nA:")]) == " red done."
    rec = TokenRecorder()
    out = await llm.agenerate(["Q: red\nA:", "Q: tan\nA:"], callbacks=[rec])
    assert "".join(rec.tokens) == " red done. tan done."
    assert [g[0].text for g in out.generations] == [" red done.", " tan done."]
    assert len(rec.commits) == sum(g[0].generation_info["rain"]["commits"] for g in out.generations)


def test_rain_llm_in_a_chain_renders_no_chat_template():
    llm = completion_llm(return_trace=True)
    chain = PromptTemplate.from_template("Q: {colour}\nA:") | llm | StrOutputParser()
    assert chain.invoke({"colour": "teal"}) == " teal done."
    assert llm.decoder.lm.prompts == []  # raw completion: the chat template was never used
    info = llm.generate(["Q: teal\nA:"]).generations[0][0].generation_info
    assert info["rain_trace"]["text"] == " teal done." and info["usage"]["completion_tokens"] > 0
