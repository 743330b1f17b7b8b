"""The FastAPI app: ``POST /v1/chat/completions``, ``POST /v1/completions``, ``GET /v1/models``,
``GET /health`` and ``GET /metrics``.

Each request is read and checked whole before it waits for a turn (its key, its size, its JSON,
its fields, its model, its settings, its prompt's length), so a bad request costs no decode and
gets its 4xx at once. From the moment its body is read until its answer is sent, a client that
disconnects stops the request's decodes before their next model call: while it waits for a turn or
decodes a JSON answer (a task that listens for the disconnect, as vLLM's ``with_cancellation``
does), and while it streams (the streaming response listens for it)."""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Receive, Scope, Send

from .completions import Plan, answer_events, answer_json, open_streams, plan_request
from .errors import APIError, from_exception, from_validation
from .metrics import CONTENT_TYPE_LATEST, Metrics
from .queue import Admission, Ticket
from .runtime import Parts, Runtime
from .schemas import ChatRequest, CompletionRequest
from .settings import Limits

__all__ = ["ServeOptions", "Server", "create_app"]

logger = logging.getLogger("rain.serve")


@dataclass(frozen=True)
class ServeOptions:
    """The server's own options (``rain serve --help`` describes each)."""

    api_key: str | None = None
    max_concurrent: int = 1
    max_queue: int = 8
    max_body_bytes: int = 4 * 1024 * 1024
    limits: Limits = Limits()
    log_prompts: bool = False


class Server:
    """The state of one server: its parts, its queue, its metrics, whether it is draining."""

    def __init__(self, parts: Parts, options: ServeOptions) -> None:
        self.options = options
        self.metrics = Metrics()
        self.runtime = Runtime(parts, self.metrics)
        self.limits = options.limits.resolved(parts.config)
        self.admission = Admission(options.max_concurrent, options.max_queue)
        self.draining = False
        self.active = 0  # requests being answered (waiting, decoding or streaming)
        self._key = options.api_key.encode() if options.api_key else None

    def idle(self) -> bool:
        """No request being answered and no decode still running."""
        return self.active == 0 and self.metrics.decoding == 0

    def drain(self) -> None:
        """From now on new requests get 503; those in flight finish."""
        self.draining = True
        self.metrics.draining.set(1)

    def check_key(self, request: Request) -> None:
        if self._key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not given:
            raise APIError(
                401, "this server needs an API key: send the header Authorization: Bearer <key>", code="missing_api_key"
            )
        if not hmac.compare_digest(given.strip().encode(), self._key):
            raise APIError(401, "the API key is not valid for this server", code="invalid_api_key")

    def served(self) -> list[str]:
        names = list(self.runtime.parts.served_names)
        main = names[0]
        return names + [f"rain-{preset}/{main}" for preset in ("official", "fast")]


def _error_response(error: APIError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _body(request: Request, limit: int) -> Any:
    """The request's JSON body: 413 past ``limit`` bytes (before reading it all), 400 when it is not
    a JSON object."""
    length = request.headers.get("content-length", "")
    too_big = APIError(
        413,
        f"the request body is larger than this server accepts ({limit} bytes, rain serve --max-body-bytes); "
        "shorten the prompt",
        code="request_too_large",
    )
    if length.isdigit() and int(length) > limit:
        raise too_big
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks))
    except UnicodeDecodeError:
        raise APIError(400, "the request body is not UTF-8 text", code="invalid_json") from None
    except json.JSONDecodeError as exc:
        raise APIError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    return data


async def _until_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


async def _unless_disconnected(request: Request, work: Awaitable[Response]) -> Response | None:
    """``work``'s response, or None when the client disconnects first (then ``work`` is cancelled).
    The body must have been read: this consumes the request's messages."""
    task = asyncio.ensure_future(work)
    listener = asyncio.ensure_future(_until_disconnect(request))
    try:
        await asyncio.wait([task, listener], return_when=asyncio.FIRST_COMPLETED)
    finally:
        listener.cancel()
        if not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if task.cancelled():
        return None
    return task.result()


class _Events(StreamingResponse):
    """Server-sent events whose closing callbacks run once however the response ends: finished,
    failed, the client gone, or never started."""

    def __init__(self, content: AsyncIterator[str], close: Callable[[], None]) -> None:
        super().__init__(
            content, media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        )
        self._content = content
        self._on_close = [close]

    def also_on_close(self, fn: Callable[[], None]) -> None:
        self._on_close.append(fn)

    def close(self) -> None:
        callbacks, self._on_close = self._on_close, []
        for fn in callbacks:
            fn()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.close()
            aclose = getattr(self._content, "aclose", None)
            if aclose is not None:  # an answer left at a chunk: its decodes' iterators close now
                with anyio.CancelScope(shield=True):
                    await aclose()


def create_app(parts: Parts, options: ServeOptions | None = None) -> FastAPI:
    """The app over loaded ``parts``; its ``Server`` is ``app.state.server``."""
    server = Server(parts, options or ServeOptions())
    app = FastAPI(title="rain serve", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.server = server

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        text = f"{request.method} {request.url.path}: {exc.detail}"
        if exc.status_code == 404:
            text += "; this server answers /v1/chat/completions, /v1/completions, /v1/models, /health and /metrics"
        return _error_response(APIError(exc.status_code, text, code="not_found" if exc.status_code == 404 else None))

    @app.get("/health")
    async def health() -> JSONResponse:
        if server.draining:
            return JSONResponse({"status": "draining"}, status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        try:
            server.check_key(request)
        except APIError as err:
            return _error_response(err)
        created = int(time.time())
        data = [{"id": name, "object": "model", "created": created, "owned_by": "rain"} for name in server.served()]
        return JSONResponse({"object": "list", "data": data})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        try:
            server.check_key(request)
        except APIError as err:
            return _error_response(err)
        server.metrics.queued.set(server.admission.waiting)
        return Response(server.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/v1/chat/completions", response_model=None)
    async def chat_completions(request: Request) -> Response:
        return await _answer(server, request, ChatRequest, "chat")

    @app.post("/v1/completions", response_model=None)
    async def completions(request: Request) -> Response:
        return await _answer(server, request, CompletionRequest, "completions")

    return app


async def _answer(
    server: Server, request: Request, schema: type[ChatRequest] | type[CompletionRequest], endpoint: str
) -> Response:
    t0 = time.monotonic()
    server.active += 1
    status, streaming = 500, False

    def done() -> None:
        server.active -= 1
        server.metrics.answered(endpoint, status, time.monotonic() - t0)

    try:
        response = await _checked(server, request, schema)
        if response is None:
            status = 499  # the client left; nothing is sent
            return Response(status_code=499)
        status = response.status_code
        if isinstance(response, _Events):  # counted when the stream ends
            response.also_on_close(done)
            streaming = True
        return response
    except APIError as err:
        status = err.status
        if err.status >= 500 or err.status == 429:
            logger.warning("%s %d: %s", endpoint, err.status, err.message)
        return _error_response(err)
    finally:
        if not streaming:
            done()


async def _checked(
    server: Server, request: Request, schema: type[ChatRequest] | type[CompletionRequest]
) -> Response | None:
    """Everything before the first decode: checks, the prompt, a turn. None: the client left."""
    server.check_key(request)
    if server.draining:
        raise APIError(
            503, "the server is shutting down; send the request to another one", headers={"Retry-After": "5"}
        )
    data = await _body(request, server.options.max_body_bytes)
    try:
        body = schema.model_validate(data)
    except ValidationError as exc:
        raise from_validation(exc) from None
    plan = plan_request(body, server.runtime, server.limits)
    if server.options.log_prompts:
        logger.info("%s prompt: %s", plan.rid, json.dumps(data.get("messages", data.get("prompt")))[:4000])
    return await _unless_disconnected(request, _decode(server, plan))


async def _decode(server: Server, plan: Plan) -> Response:
    """Open the decodes (the prompt checked: 413 when it does not fit), wait for a turn (429 when
    the queue is full), then answer: the JSON once every decode has ended, or the event stream."""
    try:
        streams = await asyncio.to_thread(open_streams, plan, server.runtime)
    except Exception as exc:
        error = from_exception(exc)
        if error.status == 413:
            error.param = "messages" if plan.chat else "prompt"
        raise error from exc
    ticket = server.admission.enter()
    server.metrics.queued.set(server.admission.waiting)
    handed_over = False
    try:
        await server.admission.wait(ticket)
        server.metrics.queued.set(server.admission.waiting)
        commits = server.runtime.commits(streams, plan.cancel, ticket)
        if plan.stream:
            response = _Events(answer_events(plan, commits), _closer(plan, ticket))
            handed_over = True
            return response
        try:
            body = await answer_json(plan, commits)
        except Exception as exc:
            raise from_exception(exc) from exc
        finally:
            await commits.aclose()
        logger.info("%s: %d answer(s), %d tokens", plan.rid, len(body["choices"]), body["usage"]["completion_tokens"])
        return JSONResponse(body)
    finally:
        if not handed_over:
            plan.cancel.set()
            ticket.drop()
            server.metrics.queued.set(server.admission.waiting)


def _closer(plan: Plan, ticket: Ticket) -> Callable[[], None]:
    def close() -> None:
        plan.cancel.set()  # the decodes stop before their next model call, if still running
        ticket.drop()

    return close
