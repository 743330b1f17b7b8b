"""LangChain adapters on fake models: fast, deterministic, no weights.

``ScriptLM`` below is a character-level scripted model over all printable ASCII: it can write
JSON tool calls, which ``fakes.ScriptedLM`` (lowercase letters and ``,.!?`` only) cannot. Tool
calling, structured output and agent loops depend on model quality, so this is where they are
tested; the real 135M model runs the standard suites in ``test_langchain_integration.py``.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from typing import Any, Callable, Sequence

import numpy as np
import pytest
from langchain.agents import create_agent
from langchain_core.callbacks import BaseCallbackHandler
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

from conftest import SMALL
from fakes import CharLM, ScriptedLM, words_penalty
from rain_core import RainConfig, RainDecoder
from rain_core.lm import Continuation, EngineStats
from rain_integrations.langchain import (
    MIN_TEMPERATURE,
    ChatRain,
    GuardStrategy,
    RainGuard,
    RainLLM,
    RainToolGuard,
    TemplateSupport,
    parse_tool_calls,
    template_support,
    to_rain_messages,
)

EOS = 0


class ScriptLM:
    """Continues the text after the last ``marker`` with ``script(text before it)``, then EOS.

    Any printable ASCII character can be scripted. ``chat_prompt`` renders ``role: content``
    lines, a ``tools: [...]`` line when given tools (unless ``tools_in_template`` is False, like
    SmolLM2's template), and never renders ``tool_calls`` (so the adapter writes them as text).
    Every rendered generation prompt is kept in ``prompts``. ``delay`` slows each forward pass.
    """

    name = "script-lm"
    context_length = 8192
    eos_token_ids = frozenset({EOS})
    vocab = [EOS, ord("\n")] + list(range(32, 127))

    def __init__(self, script: str | Callable[[str], str], *, marker: str = "\nassistant:",
                 tools_in_template: bool = True, strength: float = 12.0, delay: float = 0.0,
                 extra_chars: str = "") -> None:
        self.script = script if callable(script) else (lambda _head, s=script: s)
        self.marker = marker
        self.tools_in_template = tools_in_template
        self.strength = strength
        self.delay = delay
        self.prompts: list[str] = []
        self.stats = EngineStats()
        self.vocab = self.vocab + [ord(c) for c in dict.fromkeys(extra_chars)]
        self._index = {tok: i for i, tok in enumerate(self.vocab)}

    def encode(self, text: str) -> list[int]:
        return [ord(c) for c in text]

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(chr(t) for t in token_ids if t != EOS)

    def chat_prompt(self, messages, add_generation_prompt: bool = True, **kwargs: Any) -> str:
        lines = []
        if kwargs.get("tools") and self.tools_in_template:
            lines.append("tools: " + json.dumps([t["function"]["name"] for t in kwargs["tools"]]))
        lines += [f"{m['role']}: {m.get('content') or ''}" for m in messages]
        text = "\n".join(lines) + ("\nassistant:" if add_generation_prompt else "\n")
        if add_generation_prompt:
            self.prompts.append(text)
        return text

    def _logprobs(self, ids: Sequence[int], temperature: float = 1.0) -> np.ndarray:
        self.stats.forward_calls += 1
        self.stats.forward_tokens += 1
        if self.delay:
            time.sleep(self.delay)
        head, sep, reply = self.decode(ids).rpartition(self.marker)
        if not sep:
            head, reply = reply, ""
        target = self.script(head)
        logits = np.zeros(len(self.vocab))
        if reply == target:
            logits[0] = self.strength
        elif target.startswith(reply) and ord(target[len(reply)]) in self._index:
            logits[self._index[ord(target[len(reply)])]] = self.strength
        else:
            logits[0] = self.strength / 2
        z = logits / temperature
        z = z - z.max()
        return z - math.log(np.exp(z).sum())

    @staticmethod
    def _draw(lp: np.ndarray, top_k: int, rng: np.random.Generator, greedy: bool) -> int:
        order = np.argsort(-lp, kind="stable")[:top_k]
        if greedy:
            return int(order[0])
        p = np.exp(lp[order] - lp[order].max())
        return int(order[rng.choice(len(order), p=p / p.sum())])

    def top_tokens(self, prefix, k, temperature=1.0, exclude=()):
        lp = self._logprobs(prefix, temperature)
        skip = set(exclude)
        order = [i for i in np.argsort(-lp, kind="stable") if self.vocab[i] not in skip][:k]
        return [Continuation((self.vocab[i],), float(lp[i])) for i in order]

    def sample(self, prefix, n, length, *, top_k, temperature, seed, greedy_first=True):
        out = []
        for row in range(n):
            rng = np.random.default_rng(seed + 7919 * row)
            ids, toks, total = list(prefix), [], 0.0
            for _ in range(length):
                lp = self._logprobs(ids, temperature)
                i = self._draw(lp, top_k, rng, greedy_first and row == 0)
                toks.append(self.vocab[i])
                ids.append(self.vocab[i])
                total += float(lp[i])
                if self.vocab[i] == EOS:
                    break
            out.append(Continuation(tuple(toks), total))
        return out

    def continue_until(self, prefix, stop, max_tokens, *, top_k, temperature, seed, min_tokens=1):
        rng = np.random.default_rng(seed)
        ids, out = list(prefix), []
        while len(out) < max_tokens:
            tok = self.vocab[self._draw(self._logprobs(ids, temperature), top_k, rng, False)]
            out.append(tok)
            ids.append(tok)
            if tok == EOS or (len(out) >= min_tokens and any(s in self.decode(out) for s in stop)):
                break
        return out

    def next_token_logprobs(self, prompts, candidates):
        rows = []
        for p in prompts:
            lp = self._logprobs(p)
            rows.append([float(lp[self._index[c]]) if c in self._index else -1e9 for c in candidates])
        return rows

    def cache_prefix(self, prefix):
        pass

    def release_prefix(self, prefix):
        pass


FAKE = dict(SMALL, max_new_tokens=200)


def always_good(prompt: str, response: str) -> float:
    return 1.0


def decoder_for(lm: Any, evaluator: Any = always_good, **overrides: Any) -> RainDecoder:
    return RainDecoder(lm, evaluator, encoder=None, **{**FAKE, **overrides})


def chat_for(script: Any, **kwargs: Any) -> ChatRain:
    lm_kwargs = {k: kwargs.pop(k) for k in ("tools_in_template", "delay", "marker", "extra_chars") if k in kwargs}
    return ChatRain(decoder=decoder_for(ScriptLM(script, **lm_kwargs)), **kwargs)


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

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        self.tokens.append(token)

    def on_llm_start(self, serialized: Any, prompts: list[str], **kwargs: Any) -> None:
        self.starts += 1

    def on_chat_model_start(self, serialized: Any, messages: Any, **kwargs: Any) -> None:
        self.starts += 1


# --- the standard unit suite -----------------------------------------------------------------------
class TestChatRainStandardUnit(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[ChatRain]:
        return ChatRain

    @property
    def chat_model_params(self) -> dict:
        return {"decoder": decoder_for(ScriptLM("hello there."))}

    @property
    def standard_chat_model_params(self) -> dict:
        # ChatRain decodes in-process: there is no API key, network timeout or retry to configure.
        params = dict(super().standard_chat_model_params)
        for key in ("api_key", "timeout", "max_retries"):
            params.pop(key)
        return params

    @property
    def supports_model_override(self) -> bool:
        return False  # one ChatRain wraps one loaded model


def test_standard_params_are_forwarded_to_rain():
    chat = chat_for("hello.", max_tokens=7, temperature=0, stop=["x"], rain_options={"max_searches": 3})
    opts = chat._options(None, {})
    assert opts == {"max_searches": 3, "max_new_tokens": 7, "temperature": MIN_TEMPERATURE, "stop": ["x"]}
    call = chat._options(["yy"], {"max_tokens": 5, "temperature": 0.5, "seed": 3, "rain_config": RainConfig(top_k=4)})
    assert call["max_new_tokens"] == 5 and call["temperature"] == 0.5 and call["stop"] == ["yy"]
    assert call["seed"] == 3 and call["config"].top_k == 4
    ls = chat._get_ls_params(stop=["yy"])
    assert ls["ls_provider"] == "rain" and ls["ls_model_type"] == "chat"
    assert ls["ls_model_name"] == "script-lm" and ls["ls_max_tokens"] == 7 and ls["ls_stop"] == ["yy"]


def test_fields_are_validated():
    dec = decoder_for(ScriptLM("a"))
    with pytest.raises(ValidationError):
        ChatRain(decoder=dec, not_a_field=1)
    with pytest.raises(TypeError, match="unknown RAIN option"):
        ChatRain(decoder=dec, rain_options={"max_serches": 2})
    with pytest.raises(ValidationError):
        ChatRain(decoder=dec, temperature=-1)
    with pytest.raises(ValidationError):
        RainLLM(decoder=dec, max_tokens=0)


# --- invoke, metadata, options ----------------------------------------------------------------------
def test_invoke_returns_text_usage_and_rain_stats():
    chat = chat_for("hello there.")
    msg = chat.invoke("hi")
    assert isinstance(msg, AIMessage)
    assert msg.content == "hello there."
    assert msg.usage_metadata["output_tokens"] == len("hello there.") + 1  # + EOS
    assert msg.usage_metadata["input_tokens"] == len(chat.decoder.lm.prompts[-1])
    assert msg.usage_metadata["total_tokens"] == msg.usage_metadata["input_tokens"] + msg.usage_metadata["output_tokens"]
    meta = msg.response_metadata
    assert meta["model_name"] == "script-lm" and meta["finish_reason"] == "eos"
    assert meta["rain"]["searches"] >= meta["rain"]["commits"] > 0
    assert "evaluations" in meta["rain"] and "commit_log" not in meta["rain"]


def test_generation_info_carries_rain_stats():
    chat = chat_for("ok.")
    result = chat.generate([[HumanMessage("hi")]])
    info = result.generations[0][0].generation_info
    assert info["finish_reason"] == "eos" and info["rain"]["commits"] > 0
    assert result.llm_output["model_name"] == "script-lm"


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
    with pytest.raises(ValueError, match="decodes with 'script-lm'"):
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


def test_to_rain_messages_native_and_fallback_rendering():
    msgs = [
        HumanMessage([{"type": "text", "text": "add"}, {"type": "text", "text": "1 and 2"}]),
        AIMessage([{"type": "text", "text": "sure"}, {"type": "tool_use", "id": "c1", "name": "add", "input": {}}],
                  tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}]),
        ToolMessage("missing b", tool_call_id="c1", name="add", status="error"),
    ]
    native, kwargs = to_rain_messages(msgs)
    assert kwargs == {}
    assert native == [
        {"role": "user", "content": "add\n1 and 2"},
        {"role": "assistant", "content": "sure", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "add", "arguments": {"a": 1, "b": 2}}}]},
        {"role": "tool", "content": "(tool error) missing b", "tool_call_id": "c1", "name": "add"},
    ]
    plain, _ = to_rain_messages(msgs, support=TemplateSupport(tools=False, tool_calls=False, tool_role=False))
    assert plain[1] == {"role": "assistant", "content":
                        'sure\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>'}
    assert plain[2] == {"role": "user", "content": "Result of tool add:\n(tool error) missing b"}
    with pytest.raises(ValueError, match="text-only"):
        to_rain_messages([HumanMessage([{"type": "image_url", "image_url": {"url": "http://x"}}])])


def test_template_support_is_probed():
    assert template_support(ScriptLM("a")) == TemplateSupport(tools=True, tool_calls=False, tool_role=True)
    assert template_support(ScriptLM("a", tools_in_template=False)).tools is False


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
    assert full.response_metadata["rain"]["commits"] > 0 and full.response_metadata["model_name"] == "script-lm"


def test_streaming_callbacks_receive_each_token_set():
    chat = chat_for("hello there, friend.")
    rec = TokenRecorder()
    pieces = [c.content for c in chat.stream("hi", config={"callbacks": [rec]})]
    assert rec.tokens == pieces and "".join(rec.tokens) == "hello there, friend."
    # streaming=True sends invoke through the same path
    rec2 = TokenRecorder()
    msg = ChatRain(decoder=chat.decoder, streaming=True).invoke("hi", config={"callbacks": [rec2]})
    assert len([t for t in rec2.tokens if t]) > 3 and "".join(rec2.tokens) == msg.content


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
    two = '<tool_call>{"name": "add", "arguments": {"a": 1}}</tool_call><tool_call>{"name": "add", "parameters": "{\\"a\\": 2}"}'
    _, calls, _ = parse_tool_calls(two, names)  # second block unclosed, string arguments
    assert [c["args"] for c in calls] == [{"a": 1}, {"a": 2}]
    content, calls, _ = parse_tool_calls('```json\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n```', names)
    assert content == "" and calls[0]["args"] == {"a": 1, "b": 2}
    _, calls, _ = parse_tool_calls('[{"type": "function", "function": {"name": "add", "arguments": {}}}]', names)
    assert calls[0]["name"] == "add"
    _, calls, bad = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": </tool_call>', names)
    assert not calls and bad[0]["error"].startswith("invalid JSON")
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
    assert '<tool_call>\n{"name": "magic_number", "arguments": {}}\n</tool_call>\ntool: 5' in chat.decoder.lm.prompts[-1]


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
    rendered, _ = to_rain_messages([msg], support=TemplateSupport(tool_calls=False))
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


class Person(BaseModel):
    """A person."""

    name: str = Field(description="their name")
    age: int = Field(description="their age")


class PersonDict(TypedDict):
    """A person."""

    name: str
    age: int


@pytest.mark.parametrize("schema", [Person, PersonDict, Person.model_json_schema()], ids=["pydantic", "typeddict", "json"])
def test_with_structured_output(schema):
    title = "Person" if isinstance(schema, dict) or schema is Person else "PersonDict"
    chat = chat_for(f'<tool_call>{{"name": "{title}", "arguments": {{"name": "Ann", "age": 31}}}}</tool_call>')
    structured = chat.with_structured_output(schema)
    out = structured.invoke("Ann is 31.")
    if schema is Person:
        assert out == Person(name="Ann", age=31)
    else:
        assert out == {"name": "Ann", "age": 31}
    assert "You must call one of the tools." in chat.decoder.lm.prompts[-1]
    streamed = list(structured.stream("Ann is 31."))
    assert streamed[-1] == out
    raw = chat.with_structured_output(schema, include_raw=True).invoke("Ann is 31.")
    assert raw["parsing_error"] is None and raw["raw"].response_metadata["rain"]["commits"] > 0


# --- RainLLM ------------------------------------------------------------------------------------
def completion_llm(**kwargs: Any) -> RainLLM:
    lm = ScriptLM(lambda head: f" {head.strip().split()[-1]} done.", marker="A:")
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
    assert result.llm_output["token_usage"]["completion_tokens"] == sum(len(t) + 1 for t in (" red done.", " blue done.", " green done."))
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
    await llm.agenerate(["Q: red\nA:"], callbacks=[rec])
    assert "".join(rec.tokens) == " red done."


def test_rain_llm_in_a_chain_renders_no_chat_template():
    llm = completion_llm()
    chain = PromptTemplate.from_template("Q: {colour}\nA:") | llm | StrOutputParser()
    assert chain.invoke({"colour": "teal"}) == " teal done."
    assert llm.decoder.lm.prompts == []  # raw completion: the chat template was never used


# --- guards -------------------------------------------------------------------------------------
HARMFUL = "Mix the two cleaners to make poison gas."
HARMLESS = "Rinse surfaces with water after cleaning."
guard_eval = words_penalty("poison")


def rewrite_decoder() -> RainDecoder:
    return RainDecoder(ScriptedLM("the tool gave unsafe instructions, so they are left out."), guard_eval,
                       encoder=None, **dict(SMALL, max_new_tokens=120))


def test_guard_validation():
    with pytest.raises(ValidationError, match="needs a decoder"):
        RainGuard()
    with pytest.raises(ValidationError, match="rewrite"):
        RainGuard(evaluator=guard_eval, strategy="rewrite")
    with pytest.raises(ValidationError):
        RainGuard(evaluator=guard_eval, strategy="delete")
    with pytest.raises(ValidationError):
        RainGuard(evaluator=guard_eval, thresold=0.2)
    assert RainGuard(evaluator=guard_eval, strategy="flag").strategy is GuardStrategy.FLAG


@pytest.mark.parametrize("strategy", ["block", "rewrite", "flag"])
def test_guard_runnable_on_strings_and_messages(strategy):
    guard = RainGuard(decoder=rewrite_decoder(), evaluator=guard_eval, strategy=strategy)
    safe = AIMessage(HARMLESS)
    assert guard.invoke(safe) is safe and guard.invoke(HARMLESS) == HARMLESS
    out = guard.invoke(AIMessage(HARMFUL))
    meta = out.response_metadata["rain_guard"]
    assert meta["verdict"] == "fail" and meta["score"] == -1.0 and meta["strategy"] == strategy
    text = guard.invoke(HARMFUL)
    if strategy == "block":
        assert "withheld by a RAIN guard" in out.content and text == out.content
    elif strategy == "rewrite":
        assert out.content == "the tool gave unsafe instructions, so they are left out." == text
        assert meta["rewrite"]["score"] == 1.0 and meta["rewrite"]["rain"]["commits"] > 0
    else:
        assert out.content == HARMFUL and text == HARMFUL


def test_guard_at_the_end_of_an_lcel_chain():
    chat = chat_for(lambda head: HARMFUL if "clean" in last_user(head) else HARMLESS)
    chain = ChatPromptTemplate.from_messages([("human", "{q}")]) | chat | RainGuard(evaluator=guard_eval)
    blocked = chain.invoke({"q": "how do I clean?"})
    assert blocked.response_metadata["rain_guard"]["verdict"] == "fail" and "poison" not in blocked.content
    assert blocked.response_metadata["rain"]["commits"] > 0  # the model's metadata is kept
    fine = chain.invoke({"q": "hello"})
    assert fine.content == HARMLESS and "rain_guard" not in fine.response_metadata


def agent_model() -> ChatRain:
    """Calls ``lookup`` first; once a tool result is in the conversation, answers ``done.``"""
    def script(head: str) -> str:
        if "\ntool: " in head:
            return "done."
        topic = last_user(head)
        return f'<tool_call>{{"name": "lookup", "arguments": {{"topic": "{topic}"}}}}</tool_call>'
    return chat_for(script, tools_in_template=False)


@tool
def lookup(topic: str) -> str:
    """Look up advice on a topic."""
    return HARMFUL if topic == "cleaning" else HARMLESS


def run_agent(guard: RainToolGuard, topic: str) -> tuple[ToolMessage, list, str]:
    """Run the agent on ``topic``: (its one tool result, all messages, the model's last prompt)."""
    model = agent_model()
    agent = create_agent(model, tools=[lookup], middleware=[guard])
    messages = agent.invoke({"messages": [HumanMessage(topic)]})["messages"]
    tool_msgs = [m for m in messages if isinstance(m, ToolMessage)]
    assert len(tool_msgs) == 1 and messages[-1].content == "done."
    return tool_msgs[0], messages, model.decoder.lm.prompts[-1]


@pytest.mark.parametrize("strategy", ["block", "rewrite", "flag"])
def test_agent_tool_guard_strategies(strategy):
    guard = RainToolGuard(rewrite_decoder(), evaluator=guard_eval, strategy=strategy)
    msg, messages, last_prompt = run_agent(guard, "cleaning")
    assert msg.tool_call_id == messages[1].tool_calls[0]["id"] and msg.name == "lookup"
    meta = msg.response_metadata["rain_guard"]
    assert meta["verdict"] == "fail" and meta["score"] == -1.0 and meta["threshold"] == 0.0
    if strategy == "block":
        assert msg.status == "error" and "withheld by a RAIN guard" in msg.content and "poison" not in msg.content
    elif strategy == "rewrite":
        assert msg.status == "success" and msg.content == "the tool gave unsafe instructions, so they are left out."
    else:
        assert msg.status == "success" and msg.content == HARMFUL
    # the model's next turn read the guarded result, not the raw one
    tool_line = last_prompt.split("\ntool: ", 1)[1].split("\nassistant:", 1)[0]
    assert tool_line == ("(tool error) " + msg.content if strategy == "block" else msg.content)


def test_rewrite_that_still_fails_is_blocked_instead():
    """When no restatement the search finds passes the check (here: an evaluator that fails every
    text), the harmful text is blocked rather than passed on half-rewritten."""
    parrot = RainDecoder(ScriptedLM(HARMFUL), guard_eval, encoder=None, **dict(SMALL, max_new_tokens=120))
    always_failing_rewrite = RainToolGuard(parrot, evaluator=lambda _c, _t: -1.0, strategy="rewrite")
    msg, _, last_prompt = run_agent(always_failing_rewrite, "cleaning")
    meta = msg.response_metadata["rain_guard"]
    assert meta["strategy"] == "rewrite" and meta["fallback"] == "block"
    assert meta["rewrite"]["score"] == -1.0 and meta["rewrite"]["passed"] is False
    assert meta["rewrite"]["rain"]["commits"] > 0  # the rewrite really ran
    assert msg.status == "error" and "withheld by a RAIN guard" in msg.content
    assert "poison" not in msg.content and "poison" not in last_prompt
    guard = RainGuard(decoder=parrot, evaluator=guard_eval, strategy="rewrite")
    rewritten = guard.invoke(AIMessage(HARMFUL))  # the search steers the parrot off "poison": no fallback
    assert "fallback" not in rewritten.response_metadata["rain_guard"]
    assert rewritten.response_metadata["rain_guard"]["rewrite"]["passed"] is True


@pytest.mark.parametrize("strategy", ["block", "rewrite", "flag"])
def test_agent_tool_guard_lets_harmless_results_through(strategy):
    msg, _, _ = run_agent(RainToolGuard(rewrite_decoder(), evaluator=guard_eval, strategy=strategy), "gardening")
    assert msg.content == HARMLESS and msg.status == "success" and "rain_guard" not in msg.response_metadata


def test_agent_tool_guard_sees_the_conversation_and_the_call():
    seen: list[tuple[str, str]] = []

    def spy(prompt: str, response: str) -> float:
        seen.append((prompt, response))
        return guard_eval(prompt, response)

    run_agent(RainToolGuard(evaluator=spy), "cleaning")
    assert seen == [("User: cleaning\nAssistant: [calls tools: lookup]", HARMFUL)]


def test_agent_tool_guard_can_be_limited_to_some_tools():
    msg, _, _ = run_agent(RainToolGuard(evaluator=guard_eval, tools=["other_tool"]), "cleaning")
    assert msg.content == HARMFUL and "rain_guard" not in msg.response_metadata


async def test_agent_tool_guard_async():
    agent = create_agent(agent_model(), tools=[lookup],
                         middleware=[RainToolGuard(rewrite_decoder(), evaluator=guard_eval, strategy="rewrite")])
    messages = (await agent.ainvoke({"messages": [HumanMessage("cleaning")]}))["messages"]
    msg = next(m for m in messages if isinstance(m, ToolMessage))
    assert msg.content == "the tool gave unsafe instructions, so they are left out."
    assert msg.response_metadata["rain_guard"]["verdict"] == "fail"


def test_default_evaluator_comes_from_the_decoder():
    dec = RainDecoder(CharLM(), words_penalty("poison"), encoder=None, **SMALL)
    guard = RainGuard(decoder=dec, strategy="flag")
    assert guard.check(HARMFUL).passed is False and guard.check(HARMLESS).passed is True
