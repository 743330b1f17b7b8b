"""Errors as OpenAI clients expect them: ``{"error": {"message", "type", "param", "code"}}`` with the
HTTP status a client acts on (400 a bad field, named in ``param``; 401 the key; 404 an unknown model;
413 a prompt or body too large; 429 a full queue, with ``Retry-After``; 503 the engine unreachable or
the server shutting down; 500 only for a bug in rain serve)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from ..protocols import ContextTooLongError, EngineError, EvaluatorError

__all__ = ["APIError", "error_body", "from_exception", "from_validation", "sse_error"]

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
    500: "server_error",
    503: "service_unavailable_error",
}


@dataclass
class APIError(Exception):
    """An answer with an error status: ``message`` says what was wrong and what to do, ``param``
    names the request field (``messages[0].role``, ``rain.max_searches``) when one is at fault."""

    status: int
    message: str
    param: str | None = None
    code: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__init__(self.message)

    @property
    def type(self) -> str:
        return _TYPES.get(self.status, "invalid_request_error" if self.status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def field_path(loc: tuple[Any, ...], prefix: str = "") -> str:
    """A pydantic location as a client's field path: ``("messages", 0, "role")`` -> ``messages[0].role``."""
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _LABEL.match(str(part)):
            continue  # pydantic's labels of a union's branches and of validators are not fields
        else:
            out += f".{part}" if out else str(part)
    return out


_LABEL = re.compile(r"^(function-.*|str|int|float|bool|dict|list|none|.*\[.*\]|[A-Z]\w*)$")


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def from_validation(exc: ValidationError, prefix: str = "") -> APIError:
    """A pydantic error (the request's schema, or ``RainConfig``'s own rules) as a 400 naming the
    first field at fault and what it must be."""
    errors = exc.errors()
    paths = [field_path(tuple(e["loc"]), prefix) for e in errors]
    # a union's branches each report; the deepest says most (a list's bad item, not "not a string")
    depth = [p.count(".") + p.count("[") for p in paths]
    pick = depth.index(max(depth))
    first, where = errors[pick], paths[pick]
    others = {p for p in paths if not where.startswith(p)}
    msg = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "missing":
        text = f"{where} is required"
    elif first["type"] == "extra_forbidden":
        text = f"{where} is not a field this server knows"
    else:
        got = "" if isinstance(first.get("input"), (dict, list)) else f" (got {_shown(first.get('input'))})"
        text = f"{where}: {msg}{got}" if where else f"{msg}{got}"
    more = (
        f" (and {len(others)} more field{'s' if len(others) > 1 else ''}: {', '.join(sorted(others)[:3])})"
        if others
        else ""
    )
    return APIError(400, text + more, param=where or None, code="invalid_value")


def from_exception(exc: BaseException) -> APIError:
    """What a decode's failure means to the client: a prompt that does not fit (413), an engine or
    a remote evaluator that cannot answer (503, with its own message), a bad input the decoder
    caught (400), anything else a bug (500)."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, ContextTooLongError):
        return APIError(413, str(exc), param="messages", code="context_length_exceeded")
    if isinstance(exc, EngineError):
        return APIError(503, f"the model's engine cannot answer: {exc}", code="engine_unavailable")
    if isinstance(exc, EvaluatorError):
        cause: BaseException | None = exc.__cause__
        while cause is not None and not isinstance(cause, EngineError):
            cause = cause.__cause__
        if cause is not None:
            return APIError(503, f"the evaluator's engine cannot answer: {cause}", code="engine_unavailable")
        return APIError(500, f"the evaluator failed: {exc}", code="evaluator_error")
    if isinstance(exc, ValidationError):
        return from_validation(exc)
    if isinstance(exc, (ValueError, TypeError)):
        return APIError(400, " ".join(str(exc).split()), code="invalid_value")
    return APIError(
        500, f"internal error in rain serve ({type(exc).__name__}: {exc}); its log has the traceback", code="bug"
    )


def sse_error(error: APIError) -> str:
    """An error inside a stream that already answered 200: one ``data:`` event carrying the error
    body, as vLLM sends it (the ``[DONE]`` event follows)."""
    body = error.body()
    body["error"]["status"] = error.status
    return f"data: {json.dumps(body)}\n\n"
