"""Tools with ``ChatRain``: bound tools reach the prompt (in the template where it renders them, in the
system message where it cannot), tool calls are parsed from the reply (with the model's own parser
first where its engine has one), streamed replies never show call syntax as content, and
``tool_choice`` is an instruction to the model."""

from __future__ import annotations

from typing import Any

import pytest
from fakes import PRINTABLE, ScriptedLM
from langchain_core.messages import HumanMessage, ToolMessage
from langchain_core.tools import tool
from langchain_fakes import chat_for, decoder_for, joined

from rain_integrations.langchain import ChatRain, TemplateSupport, messages_from_langchain, parse_tool_calls

WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


@tool
def get_weather(city: str) -> str:
    """Get the weather in a city."""
    return f"It is sunny in {city}."


@pytest.fixture
def hello() -> ChatRain:
    return chat_for("Hello.")


def test_parse_tool_calls_reads_every_call_format():
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


def test_unusable_calls_are_invalid_tool_calls_and_other_json_is_text():
    names = ["get_weather", "add"]
    _, calls, bad = parse_tool_calls('<tool_call>{"name": "add", "arguments": {"a": </tool_call>', names)
    assert not calls and bad[0]["error"].startswith("invalid JSON") and bad[0]["type"] == "invalid_tool_call"
    _, calls, bad = parse_tool_calls('<tool_call>{"name": "launch", "arguments": {}}</tool_call>', names)
    assert not calls and "unknown tool" in bad[0]["error"]
    text = '{"name": "Ann", "arguments": "none"}'
    assert parse_tool_calls(text, names) == (text, [], [])  # JSON naming no tool is an answer
    assert parse_tool_calls("plain words", names) == ("plain words", [], [])


@pytest.mark.parametrize("tools_in_template", [True, False])
def test_bound_tools_reach_the_prompt_and_calls_are_parsed(tools_in_template):
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


def test_a_stream_holds_call_syntax_back():
    model = chat_for(f"Let me check. {WEATHER_CALL}").bind_tools([get_weather])
    chunks = list(model.stream("weather in paris?"))
    assert not any("<" in c.content or "{" in c.content for c in chunks)
    full = joined(chunks)
    assert full.content.strip() == "Let me check."
    assert [(c["name"], c["args"]) for c in full.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert any(b["type"] == "tool_call" for b in full.content_blocks)


async def test_async_paths_parse_calls_too():
    model = chat_for('{"name": "get_weather", "arguments": {"city": "Paris"}}').bind_tools(
        [get_weather], tool_choice="any"
    )
    msg = await model.ainvoke("weather?")
    assert msg.tool_calls[0]["args"] == {"city": "Paris"}
    full = joined([c async for c in model.astream("weather?")])
    assert full.tool_calls[0]["args"] == {"city": "Paris"} and full.content == ""


def test_a_call_without_arguments_and_an_agent_round_trip():
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
    assert joined(list(model.stream(f"Create a customer named {name}"))).tool_calls[0]["args"] == {
        "customer_name": name
    }
    rendered, _ = messages_from_langchain([msg], support=TemplateSupport(tool_calls=False))
    assert name in rendered[0]["content"]  # written as characters, not \\u escapes


def test_tool_choice_is_an_instruction(hello):
    hello.bind_tools([get_weather], tool_choice="any").invoke("hi")
    assert "You must call one of the tools." in hello.decoder.lm.prompts[-1]
    hello.bind_tools([get_weather], tool_choice="get_weather").invoke("hi")
    assert "You must call the tool get_weather." in hello.decoder.lm.prompts[-1]
    msg = hello.bind_tools([get_weather], tool_choice="none").invoke("hi")
    assert "tools:" not in hello.decoder.lm.prompts[-1] and msg.content == "Hello."
    with pytest.raises(ValueError, match="names no bound tool"):
        hello.bind_tools([get_weather], tool_choice="get_time")


def test_a_text_reply_with_tools_bound_stays_text():
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


def test_the_models_own_parser_reads_calls_first():
    lm = OwnParserLM("CALL get_weather city=Lyon")
    msg = ChatRain(decoder=decoder_for(lm)).bind_tools([get_weather]).invoke("weather in lyon?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Lyon"})]
    text, prefix = lm.parsed[-1]
    assert text == "CALL get_weather city=Lyon" and prefix == lm.prompts[-1]  # the rendered prompt it continues


@pytest.mark.parametrize("answer", [None, "raise"])
def test_a_parser_with_no_result_leaves_the_shared_parser_to_read_the_reply(answer):
    fallback = OwnParserLM(WEATHER_CALL, answer=answer)
    msg = ChatRain(decoder=decoder_for(fallback)).bind_tools([get_weather]).invoke("weather?")
    assert [(c["name"], c["args"]) for c in msg.tool_calls] == [("get_weather", {"city": "Paris"})]
    assert fallback.parsed


def test_without_bound_tools_the_reply_is_text_and_no_parser_runs():
    plain = OwnParserLM("CALL get_weather city=Lyon")
    assert ChatRain(decoder=decoder_for(plain)).invoke("hi").content == "CALL get_weather city=Lyon"
    assert plain.parsed == []
