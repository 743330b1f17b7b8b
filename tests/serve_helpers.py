"""Helpers of the ``rain serve`` tests: a real uvicorn server in a thread of the test process over a
fake model (the fast tests), reading ``/metrics``, and reading a server-sent event stream."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn

from rain_core.serve.app import ServeOptions, create_app
from rain_core.serve.launch import free_port
from rain_core.serve.runtime import Parts


class ThreadServer:
    """``create_app(parts, options)`` served by uvicorn on a free loopback port, in a thread."""

    def __init__(self, parts: Parts, options: ServeOptions | None = None) -> None:
        self.app = create_app(parts, options)
        self.state = self.app.state.server
        self.port = free_port()
        config = uvicorn.Config(self.app, host="127.0.0.1", port=self.port, lifespan="off", log_level="warning")
        from rain_core.serve.cli import _DrainingServer

        self.server = _DrainingServer(config, self.state, 30.0)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the test server did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)


def metrics(url: str, key: str | None = None) -> dict[str, float]:
    """``/metrics`` as {sample name with labels: value}."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    text = httpx.get(f"{url}/metrics", headers=headers, timeout=10).text
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def wait_for(test: Any, timeout: float, every: float = 0.05) -> float:
    """Seconds until ``test()`` is true (an AssertionError after ``timeout``)."""
    t0 = time.monotonic()
    while not test():
        assert time.monotonic() - t0 < timeout, f"not true within {timeout} s"
        time.sleep(every)
    return time.monotonic() - t0


def events(response: httpx.Response) -> Iterator[Any]:
    """The ``data:`` events of a streamed answer: parsed JSON, and the string ``[DONE]``."""
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            yield data if data == "[DONE]" else json.loads(data)
