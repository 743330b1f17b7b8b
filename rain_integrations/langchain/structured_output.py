"""Structured output for a chat model (``ChatRain.with_structured_output``): the schema goes into the
prompt (or is bound as a tool), the reply is parsed and validated, and a reply that does not fit
raises ``OutputParserException`` instead of returning None."""

from __future__ import annotations

import json
from collections.abc import Mapping
from operator import itemgetter
from typing import Any

from langchain_core.exceptions import OutputParserException
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.output_parsers import BaseOutputParser
from langchain_core.outputs import ChatGeneration, Generation
from langchain_core.runnables import Runnable, RunnableMap, RunnablePassthrough
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import BaseModel, TypeAdapter, ValidationError

from .messages import text_of

__all__ = ["StructuredOutputParser", "json_instruction", "structured_output"]

METHODS = ("json_schema", "function_calling", "json_mode")


def _is_pydantic(schema: Any) -> bool:
    return isinstance(schema, type) and issubclass(schema, BaseModel)


def _is_typed_dict(schema: Any) -> bool:
    return isinstance(schema, type) and issubclass(schema, dict) and hasattr(schema, "__annotations__")


def _json_schema(schema: Any) -> tuple[str, dict[str, Any]]:
    """(name, JSON schema) of a pydantic class, TypedDict, JSON schema or OpenAI tool schema."""
    if _is_pydantic(schema):
        return schema.__name__, schema.model_json_schema()
    if isinstance(schema, Mapping) and "properties" in schema and "function" not in schema:
        return str(schema.get("title") or "output"), dict(schema)
    function = convert_to_openai_tool(schema)["function"]
    return str(function["name"]), dict(function.get("parameters") or {})


def json_instruction(response_format: Mapping[str, Any]) -> str:
    """The system text that asks for JSON (``response_format`` as OpenAI's: ``{"type": "json_object"}``
    or ``{"type": "json_schema", "json_schema": {"name", "schema"}}``)."""
    spec = response_format.get("json_schema") or {}
    schema = spec.get("schema")
    if schema:
        return "Reply with only a JSON object, no other text, that follows this JSON schema:\n" + json.dumps(
            schema, ensure_ascii=False
        )
    return "Reply with only a JSON object, no other text."


def _first_json(text: str) -> Any:
    """The first JSON value in ``text`` (code fences and text around it allowed)."""
    decoder = json.JSONDecoder()
    for i, ch in enumerate(text):
        if ch in "{[":
            try:
                return decoder.raw_decode(text[i:])[0]
            except json.JSONDecodeError:
                continue
    raise ValueError("the reply contains no JSON object")


class StructuredOutputParser(BaseOutputParser[Any]):
    """Parse a chat reply into ``schema``: from its JSON text (``json_schema``/``json_mode``) or from
    its first tool call (``function_calling``). Failures raise ``OutputParserException`` with the
    reply attached (``llm_output``)."""

    target: Any = None
    method: str = "json_schema"

    @property
    def _type(self) -> str:
        return "rain_structured_output"

    def _validate(self, data: Any, reply: str) -> Any:
        try:
            if self.target is None:
                if not isinstance(data, dict):
                    raise ValueError(f"expected a JSON object, got {type(data).__name__}")
                return data
            if _is_pydantic(self.target):
                return self.target.model_validate(data)
            if _is_typed_dict(self.target):
                return TypeAdapter(self.target).validate_python(data)
            if not isinstance(data, dict):
                raise ValueError(f"expected a JSON object, got {type(data).__name__}")
            missing = [k for k in _json_schema(self.target)[1].get("required", []) if k not in data]
            if missing:
                raise ValueError(f"required keys missing: {missing}")
            return data
        except (ValidationError, ValueError) as exc:
            raise OutputParserException(f"the reply does not match the schema: {exc}", llm_output=reply) from exc

    def parse_result(self, result: list[Generation], *, partial: bool = False) -> Any:
        generation = result[0]
        message = generation.message if isinstance(generation, ChatGeneration) else None
        reply = text_of(message.content, "ai") if isinstance(message, BaseMessage) else generation.text
        if self.method == "function_calling":
            calls = message.tool_calls if isinstance(message, AIMessage) else []
            if not calls:
                raise OutputParserException(
                    f"the model did not call the output tool; it replied: {reply!r}", llm_output=reply
                )
            return self._validate(calls[0]["args"], reply)
        try:
            data = _first_json(reply)
        except ValueError as exc:
            raise OutputParserException(
                f"the reply is not JSON ({exc}); it replied: {reply!r}", llm_output=reply
            ) from exc
        return self._validate(data, reply)

    def parse(self, text: str) -> Any:
        return self.parse_result([Generation(text=text)])


def structured_output(model: BaseChatModel, schema: Any, *, method: str, include_raw: bool) -> Runnable:
    """The runnable behind ``ChatRain.with_structured_output``: ``model`` with the schema bound (as
    a response format, or as a tool it must call), then the parser."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if schema is None and method != "json_mode":
        raise ValueError(f'method {method!r} needs a schema; use method="json_mode" for any JSON object')
    parser = StructuredOutputParser(target=schema, method=method)
    if method == "function_calling":
        name = _json_schema(schema)[0]
        bound: Runnable = model.bind_tools(
            [schema], tool_choice=name, ls_structured_output_format={"kwargs": {"method": method}, "schema": schema}
        )
    else:
        fmt: dict[str, Any] = {"type": "json_object"}
        if schema is not None:
            name, json_schema = _json_schema(schema)
            fmt = {"type": "json_schema", "json_schema": {"name": name, "schema": json_schema}}
        bound = model.bind(
            response_format=fmt, ls_structured_output_format={"kwargs": {"method": method}, "schema": schema}
        )
    if not include_raw:
        return bound | parser
    parsed = RunnablePassthrough.assign(parsed=itemgetter("raw") | parser, parsing_error=lambda _: None)
    failed = RunnablePassthrough.assign(parsed=lambda _: None)
    return RunnableMap(raw=bound) | parsed.with_fallbacks([failed], exception_key="parsing_error")
