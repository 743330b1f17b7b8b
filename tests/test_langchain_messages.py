"""LangChain messages in: every kind of message reaches the chat template in its role, and what a
template cannot render (tools, tool calls, tool messages) is written into the text instead."""

from __future__ import annotations

import pytest
from langchain_core.messages import AIMessage, ChatMessage, HumanMessage, SystemMessage, ToolMessage
from langchain_fakes import chat_for, scripted

from rain_integrations.langchain import TemplateSupport, messages_from_langchain, template_support

WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'


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


TOOL_TURN = [
    HumanMessage([{"type": "text", "text": "add"}, {"type": "text", "text": "1 and 2"}]),
    AIMessage(
        [{"type": "text", "text": "sure"}, {"type": "tool_use", "id": "c1", "name": "add", "input": {}}],
        tool_calls=[{"name": "add", "args": {"a": 1, "b": 2}, "id": "c1"}],
    ),
    ToolMessage("missing b", tool_call_id="c1", name="add", status="error"),
]


def test_a_template_that_renders_tools_gets_them_in_their_own_fields():
    native, kwargs = messages_from_langchain(TOOL_TURN)
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


def test_a_template_without_tool_support_gets_them_written_as_text():
    plain, _ = messages_from_langchain(
        TOOL_TURN, support=TemplateSupport(tools=False, tool_calls=False, tool_role=False)
    )
    assert plain[1] == {
        "role": "assistant",
        "content": 'sure\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>',
    }
    assert plain[2] == {"role": "user", "content": "Result of tool add:\n(tool error) missing b"}


def test_content_other_than_text_is_refused():
    with pytest.raises(ValueError, match="text-only"):
        messages_from_langchain([HumanMessage([{"type": "image_url", "image_url": {"url": "http://x"}}])])


def test_what_a_template_renders_is_probed():
    assert template_support(scripted("a")) == TemplateSupport(tools=True, tool_calls=False, tool_role=True)
    assert template_support(scripted("a", tools_in_template=False)).tools is False
    assert chat_for("a").decoder.template_support == TemplateSupport(tools=True, tool_calls=False, tool_role=True)
