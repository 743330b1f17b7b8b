"""``rain serve``: RAIN behind an OpenAI-compatible HTTP endpoint (FastAPI and uvicorn, the ``serve``
extra), so any OpenAI client, LangChain's ``ChatOpenAI`` or LlamaIndex's ``OpenAILike`` decodes with
RAIN by changing its ``base_url`` (docs/serve.md).

- ``app``: the endpoints (``create_app(parts, options)``), the checks before a decode, disconnects;
- ``completions``: one request's plan, its JSON answer and its event stream;
- ``runtime``: the loaded parts and how decodes run (a worker thread, or the event loop);
- ``settings``: RAIN's settings per request and the owner's limits; ``queue``: admission (429);
- ``schemas``: request and answer shapes; ``errors``: OpenAI-shaped errors; ``metrics``: Prometheus;
- ``tools``: messages, tools and tool calls; ``cli``: ``rain serve`` / ``python -m rain_core.serve``.

Importing this package imports neither FastAPI nor a model.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "main"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app

        return create_app
    if name == "main":
        from .cli import main

        return main
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
