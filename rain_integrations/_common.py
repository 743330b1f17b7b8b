"""What the LangChain and LlamaIndex adapters share, framework-neutral and written once:

- building a ``RainDecoder`` from a model id or folder, a ready ``LanguageModel`` (a remote engine
  plugs in here) or the embedded default model, with a judge model or an evaluator;
- splitting constructor keywords into adapter fields and ``RainConfig`` fields;
- usage, finish reason, statistics and commit-event payloads of a ``RainResult``;
- checking every constructor option before any weights load (``check_build``, ``check_fields``);
- ``decode_events``: one decode as a stream of commits, text pieces and the final result;
  ``stream_events``: the same for a stream whose last chunk carries the last text with the result;
- ``aiter_in_thread``: the one bridge from a blocking decode to ``async for``. It runs the decode in
  a worker thread and, when the consumer cancels its task or abandons the stream (``aclose``, or
  the stream garbage-collected), sets the decode's ``cancel`` event so that the search stops within
  one search step and the model is free for the next request.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import (
    Any,
    TypeVar,
    Union,
)

from pydantic import BaseModel, ConfigDict, create_model

from rain_core import (
    JudgeEvaluator,
    LanguageModel,
    RainConfig,
    RainDecoder,
    RainResult,
    SelfEvaluator,
    load_principle,
)
from rain_core.decoder import Cancel

logger = logging.getLogger(__name__)

T = TypeVar("T")

MIN_TEMPERATURE = 0.01
"""Frameworks' ``temperature=0`` means "as greedy as possible"; RAIN samples candidates, so 0 becomes
this small positive temperature instead of an error."""


# --- models and decoders ---------------------------------------------------------------------------
def default_lm() -> LanguageModel:
    """The embedded SmolLM2-135M-Instruct, loaded once per process and shared by every adapter."""
    from rain_core.engines.loading import shared_default_model

    return shared_default_model()


def load_lm(model: str | LanguageModel, load_options: Mapping[str, Any]) -> LanguageModel:
    """``model`` itself when it is a ready ``LanguageModel``; else ``load_model(model, ...)``."""
    if isinstance(model, LanguageModel):
        if load_options:
            raise TypeError(
                f"{sorted(load_options)} apply when loading a model by id; "
                f"{getattr(model, 'name', 'this model')} is already loaded"
            )
        return model
    if not isinstance(model, str) or not model.strip():
        raise TypeError(f"a model must be a model id or folder (str) or a LanguageModel, got {type(model).__name__}")
    return load_model(model, **load_options)


def load_model(name_or_path: str, **options: Any) -> LanguageModel:
    """``rain_core.engines.loading.load_model`` (the in-process engine: ``pip install "rain-align[local]"``)."""
    try:
        from rain_core.engines.loading import load_model as load
    except ImportError as exc:
        raise ImportError(
            f"loading {name_or_path!r} in this process needs the in-process engine: "
            "pip install 'rain-align[local]' (or pass a ready LanguageModel to from_engine)"
        ) from exc
    return load(name_or_path, **options)


def build_decoder(
    model: str | LanguageModel | None,
    *,
    judge: str | LanguageModel | None = None,
    evaluator: Any = None,
    principle: Any = "harmless",
    encoder: Any = "default",
    config: RainConfig | None = None,
    device: str | None = None,
    device_map: Any = None,
    dtype: Any = None,
    quantization_config: Any = None,
    model_kwargs: Mapping[str, Any] | None = None,
    judge_kwargs: Mapping[str, Any] | None = None,
    **rain_fields: Any,
) -> RainDecoder:
    """The one decoder builder behind every ``from_model_id``/``from_model_name``/``from_engine``/
    ``from_default`` constructor.

    Every option is checked before any weights load (``check_build``).

    ``model``: ``None`` for the embedded SmolLM2-135M-Instruct (``default_lm``), a model id or folder
    (loaded with ``rain_core.engines.loading.load_model``, which
    passes ``device_map``, ``dtype``, ``quantization_config`` and ``model_kwargs`` through to
    ``from_pretrained`` and never moves a dispatched or quantised model; ``model_kwargs`` are further
    ``load_model`` options such as ``attn_implementation`` or ``trust_remote_code``) or a ready
    ``LanguageModel`` (a local engine or a server). ``judge``: a model id/folder or
    ``LanguageModel`` that judges replies against ``principle`` (a ``JudgeEvaluator``; loaded with
    the same options unless ``judge_kwargs`` are given). ``evaluator``: any ``Evaluator`` or function
    ``fn(prompt, response) -> float`` instead. Neither: the model judges itself (``SelfEvaluator``).
    ``rain_fields``: ``RainConfig`` fields (``max_searches=10``, ...)."""
    cfg = check_build(judge=judge, evaluator=evaluator, principle=principle, config=config, **rain_fields)
    load_options = {
        k: v
        for k, v in {
            "device": device,
            "device_map": device_map,
            "dtype": dtype,
            "quantization_config": quantization_config,
        }.items()
        if v is not None
    }
    load_options.update(model_kwargs or {})
    if model is None:
        if load_options:
            raise TypeError(f"{sorted(load_options)} apply when loading a model by id, not to the embedded model")
        lm = default_lm()
    else:
        lm = load_lm(model, load_options)
    if judge is not None:
        judge_options = dict(judge_kwargs) if judge_kwargs is not None else load_options
        same = judge is model or (isinstance(judge, str) and judge == model and judge_kwargs is None)
        judge_lm = lm if same else load_lm(judge, judge_options if isinstance(judge, str) else {})
        evaluator = JudgeEvaluator(judge_lm, principle, scoring=(cfg or RainConfig()).scoring)
    elif evaluator is None and principle != "harmless":
        evaluator = SelfEvaluator(lm, principle, scoring=(cfg or RainConfig()).scoring)
    return RainDecoder(lm, evaluator, encoder=encoder, config=cfg)


def check_build(
    *, judge: Any = None, evaluator: Any = None, principle: Any = "harmless", config: Any = None, **rain_fields: Any
) -> RainConfig | None:
    """The decoder options of a ``from_*`` constructor checked without loading anything: the judge or
    evaluator choice, the principle the judge applies, and ``config`` merged with ``rain_fields``
    (``RainConfig``'s own validation). Returns that config (``None`` when neither is given)."""
    if judge is not None and evaluator is not None:
        raise TypeError("pass either judge (a model that judges) or evaluator, not both")
    if config is not None and not isinstance(config, RainConfig):
        raise TypeError(f"config must be a RainConfig, got {type(config).__name__}; or pass its fields as keywords")
    if evaluator is None:
        load_principle(principle)  # an unknown name or a missing file fails here
    if config is None and not rain_fields:
        return None
    return (config or RainConfig()).merged(**rain_fields)


def check_fields(owner: type[BaseModel], values: Mapping[str, Any]) -> None:
    """``values`` checked against the types and constraints of ``owner``'s fields of those names,
    without building an ``owner`` (whose decoder may not be loaded yet). The error is pydantic's
    ``ValidationError`` for ``owner``, as building it would raise; unknown names are a ``TypeError``."""
    unknown = sorted(set(values) - set(owner.model_fields))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}: pass {owner.__name__} fields or RainConfig fields")
    if not values:
        return
    fields: dict[str, Any] = {name: (owner.model_fields[name].annotation, owner.model_fields[name]) for name in values}
    check = create_model(  # type: ignore[call-overload]
        owner.__name__, __config__=ConfigDict(arbitrary_types_allowed=True, populate_by_name=True), **fields
    )
    check.model_validate(dict(values))


def split_fields(
    owner: type, fields: Iterable[str], kwargs: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Constructor keywords as (the adapter's own fields, ``RainConfig`` fields); anything else is a
    ``TypeError`` naming both kinds."""
    names = set(fields)
    own = {k: v for k, v in kwargs.items() if k in names}
    rain = {k: v for k, v in kwargs.items() if k not in names}
    unknown = sorted(set(rain) - set(RainConfig.model_fields))
    if unknown:
        raise TypeError(f"unknown option(s) {unknown}: pass {owner.__name__} fields or RainConfig fields")
    return own, rain


def rain_temperature(value: float | None) -> float | None:
    """A framework's temperature as RAIN's: 0 becomes ``MIN_TEMPERATURE``."""
    if value is None:
        return None
    return MIN_TEMPERATURE if value == 0 else value


def join_cancels(*cancels: Cancel) -> Cancel:
    """One ``cancel`` for the decoder that fires when any of ``cancels`` does."""
    given = [c for c in cancels if c is not None]
    if len(given) <= 1:
        return given[0] if given else None
    checks = [c.is_set if isinstance(c, threading.Event) else c for c in given]
    return lambda: any(check() for check in checks)


# --- results out -----------------------------------------------------------------------------------
def stats_of(result: RainResult) -> dict[str, Any]:
    """The search statistics of a result, without the per-commit log."""
    return {k: v for k, v in result.stats.items() if k != "commit_log"}


def usage_of(result: RainResult) -> dict[str, int]:
    return {
        "prompt_tokens": result.prompt_tokens,
        "completion_tokens": result.completion_tokens,
        "total_tokens": result.prompt_tokens + result.completion_tokens,
    }


def commit_payload(entry: Mapping[str, Any], index: int) -> dict[str, Any]:
    """A commit's log entry as a callback or instrumentation event: its index and statistics
    (``tokens``, ``text``, ``searches``, ``visits``, ``real_visits``, ``value``, ``early_stop``,
    ``seconds``, ...); the search tree (``keep_trees``) stays in the trace."""
    return {"index": index, **{k: v for k, v in entry.items() if k not in ("tree", "chosen")}}


# --- one decode as events --------------------------------------------------------------------------
@dataclass(frozen=True)
class Commit:
    """A token set was committed; ``data`` is ``commit_payload`` of its log entry."""

    data: dict[str, Any]


@dataclass(frozen=True)
class Text:
    """New final text of the reply."""

    text: str


@dataclass(frozen=True)
class Done:
    """The decode ended. ``text``: the reply's last new text, when a stream holds it back to deliver
    it with the result (``stream_events``); empty otherwise."""

    result: RainResult
    text: str = ""


Event = Union[Commit, Text, Done]  # noqa: UP007 (a runtime alias)


def decode_events(
    decoder: RainDecoder,
    prompt: Any,
    *,
    plain: bool = False,
    cancel: Cancel = None,
    on_commit: Callable[[dict[str, Any]], None] | None = None,
    **options: Any,
) -> Iterator[Event]:
    """Decode ``prompt`` and yield what happens: ``Commit`` (after ``on_commit`` saw it, in the decode's
    thread), ``Text`` pieces, then one ``Done``. ``plain`` decodes without the search (no commits).
    Closing the iterator, or ``cancel``, stops the decode (see ``RainDecoder.stream``)."""
    if plain:
        result = decoder.vanilla(prompt, **options)
        if result.text:
            yield Text(result.text)
        yield Done(result)
        return
    pending: list[dict[str, Any]] = []
    count = [0]

    def committed(entry: dict[str, Any]) -> None:
        data = commit_payload(entry, count[0])
        count[0] += 1
        if on_commit is not None:
            on_commit(data)
        pending.append(data)

    stream = decoder.stream(prompt, cancel=cancel, on_commit=committed, **options)
    try:
        for piece in stream:
            yield from _drain(pending)
            yield Text(piece)
    finally:
        stream.close()
    yield from _drain(pending)
    assert stream.result is not None
    yield Done(stream.result)


def _drain(pending: list[dict[str, Any]]) -> Iterator[Commit]:
    while pending:
        yield Commit(pending.pop(0))


def run_events(events: Iterable[Event], on_text: Callable[[str], None] | None = None) -> RainResult:
    """Consume ``events`` and return the result (``on_text`` sees each piece)."""
    for event in events:
        if isinstance(event, Text) and on_text is not None:
            on_text(event.text)
        elif isinstance(event, Done):
            if event.text and on_text is not None:
                on_text(event.text)
            return event.result
    raise RuntimeError("the decode ended without a result")


# --- streams that end with their last text ---------------------------------------------------------
LAST_TEXT_WAIT = 0.2
"""Seconds ``stream_events`` holds a text piece at most when the decode gives no sign yet whether
more follows (its model busy with other decodes); then the piece goes out on its own."""

_MORE = object()  # the decode started another search: the text held is not the last
_END = object()


@dataclass(frozen=True)
class _Failed:
    error: BaseException


def stream_events(
    start: Callable[[Callable[[], bool]], Iterator[Event]],
    cancel: threading.Event | None = None,
    *,
    wait: float | None = None,
) -> Iterator[Event]:
    """A decode's events for a stream whose last chunk should carry the reply's last text together
    with the result, instead of an empty chunk after it: the text that came after the last ``Text``
    delivered arrives as ``Done.text``.

    ``start(poll)`` builds the decode's events with ``poll`` as its ``cancel`` (for example
    ``lambda poll: decode_events(decoder, prompt, cancel=poll)``); the decode runs in a thread of
    its own (``rain-decode-stream``), in a copy of the caller's context. Each text piece is held
    until the decode shows whether more follows: the search calls ``poll`` before each search, so a
    held piece goes out the moment the next search starts; a commit or the end of the decode also
    decide it, and ``wait`` seconds (default ``LAST_TEXT_WAIT``) without either (the model busy with
    another decode) send it on its own. A piece is never held longer than that, and none is lost or reordered.

    ``cancel`` set, or this iterator closed, stops the decode within one search; closing waits for
    its thread, so the model is free when ``close()`` returns. The decode's errors are raised here."""
    wait = LAST_TEXT_WAIT if wait is None else wait
    items: queue.SimpleQueue[Any] = queue.SimpleQueue()
    stop = threading.Event()
    text_out = [False]  # a Text was queued and no search has started since (the decode thread's own)

    def poll() -> bool:
        if text_out[0]:
            text_out[0] = False
            items.put(_MORE)
        return stop.is_set() or (cancel is not None and cancel.is_set())

    def produce() -> None:
        try:
            for event in start(poll):
                items.put(event)
                text_out[0] = isinstance(event, Text)
        except BaseException as exc:  # handed to the consumer, who raises it
            items.put(_Failed(exc))
        else:
            items.put(_END)

    worker = threading.Thread(
        target=contextvars.copy_context().run, args=(produce,), name="rain-decode-stream", daemon=True
    )
    worker.start()
    held = ""
    try:
        while True:
            try:
                item = items.get(timeout=wait) if held else items.get()
            except queue.Empty:
                item = _MORE
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            if isinstance(item, Text):
                held += item.text
                continue
            if isinstance(item, Done):
                yield Done(item.result, held + item.text)
                held = ""
                continue
            if held:
                yield Text(held)
                held = ""
            if item is not _MORE:
                yield item
    finally:
        stop.set()
        worker.join()


# --- the one sync -> async bridge ------------------------------------------------------------------


def _next(items: Iterator[Any]) -> Any:
    return next(items, _END)


def _close(items: Iterator[Any]) -> None:
    close = getattr(items, "close", None)
    if close is not None:
        try:
            close()
        except Exception as exc:  # the decode already failed or stopped; nothing is waiting for it
            logger.debug("closing an abandoned decode: %s", exc)


async def aiter_in_thread(start: Callable[[threading.Event], Iterator[T]]) -> AsyncIterator[T]:
    """``async for`` over the blocking iterator ``start(cancel)`` (for example
    ``lambda cancel: decode_events(decoder, prompt, cancel=cancel)``).

    Each step runs in this stream's own worker thread, in a copy of the caller's context (so
    callbacks and tracing spans see the right parent run), and the event loop stays free. When the
    consumer stops early (``aclose``, a cancelled task, the stream garbage-collected), ``cancel`` is
    set at once: the decode raises ``DecodeCancelled`` at its next search and releases the model;
    the worker then closes the iterator and ends. Nobody waits for that."""
    cancel = threading.Event()
    items = start(cancel)
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rain-decode")
    try:
        while True:
            item = await loop.run_in_executor(worker, context.run, _next, items)
            if item is _END:
                return
            yield item
    finally:
        cancel.set()
        worker.submit(_close, items)  # runs after a step still in progress, in the same thread
        worker.shutdown(wait=False)


async def arun_in_thread(
    start: Callable[[threading.Event], Iterator[Event]], on_event: Callable[[Event], Any] | None = None
) -> RainResult:
    """Run ``start(cancel)``'s events through ``aiter_in_thread`` to the end and return the result;
    ``on_event`` (sync or async) sees each event. Cancelling the awaiting task stops the decode."""
    async with contextlib.aclosing(aiter_in_thread(start)) as events:
        async for event in events:
            if on_event is not None:
                ret = on_event(event)
                if asyncio.iscoroutine(ret):
                    await ret
            if isinstance(event, Done):
                return event.result
    raise RuntimeError("the decode ended without a result")
