"""``ChatRain.with_structured_output``: the schema goes into the prompt (or is bound as a tool the
model must call), the reply is parsed and validated into the schema's type, and a reply that does not
fit raises ``OutputParserException`` with the reply attached, never a silent None."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.exceptions import OutputParserException
from langchain_fakes import chat_for
from pydantic import BaseModel, Field
from typing_extensions import TypedDict


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
def test_json_schema_puts_the_schema_in_the_prompt_and_validates_the_reply(schema):
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
def test_function_calling_binds_the_schema_as_a_tool_the_model_must_call(schema):
    title = "PersonDict" if schema is PersonDict else "Person"
    chat = chat_for(f'<tool_call>{{"name": "{title}", "arguments": {{"name": "Ann", "age": 31}}}}</tool_call>')
    structured = chat.with_structured_output(schema, method="function_calling")
    assert structured.invoke("Ann is 31.") == expected_person(schema)
    assert f"You must call the tool {title}." in chat.decoder.lm.prompts[-1]
    assert list(structured.stream("Ann is 31."))[-1] == expected_person(schema)


def test_json_mode_asks_for_any_json_object():
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
async def test_a_reply_that_does_not_parse_raises_with_the_reply_attached(schema, method, reply, why):
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


def test_the_arguments_are_checked():
    chat = chat_for("x")
    with pytest.raises(ValueError, match="method must be one of"):
        chat.with_structured_output(Person, method="regex")
    with pytest.raises(ValueError, match="needs a schema"):
        chat.with_structured_output(None)
