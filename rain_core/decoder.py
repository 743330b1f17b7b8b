"""RainDecoder: the public entry point. Validates input, renders prompts, runs the search, streams
committed text (``RainStream``), stops when its caller stops or its deadline passes, and offers plain
decoding with the same model and limits for comparison."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

from .chat import (
    Message,
    TemplateSupport,
    check_room,
    cut_at_stop,
    render_prompt,
    template_support,
    validate_messages,
)
from .config import RainConfig, Scoring
from .control import Cancel, model_lock, resolve_seed, stop_test
from .evaluators import CallableEvaluator, SelfEvaluator
from .protocols import (
    AsyncLanguageModel,
    Encoder,
    Evaluator,
    LanguageModel,
    ProvidesEncoder,
    is_concurrent,
)
from .results import FINISH_REASONS, TRACE_VERSION, RainResult
from .search import RainSearch, engine_counters, engine_delta
from .sessions import ain_session, current_session, decode_session, in_session, new_session_id
from .streams import AsyncRainStream, OnCommit, RainStream, in_threads

logger = logging.getLogger(__name__)

__all__ = [
    "FINISH_REASONS",
    "TRACE_VERSION",
    "AsyncRainStream",
    "Cancel",
    "OnCommit",
    "Prompt",
    "RainDecoder",
    "RainResult",
    "RainStream",
    "resolve_seed",
]

Prompt = Union[str, Sequence[Message]]  # noqa: UP007 (a runtime alias: Python 3.10 needs Union here)


class DecoderParts:
    """What every decoder (``RainDecoder`` and the baselines) holds alike: the model, the evaluator
    (the given one, else a ``SelfEvaluator`` per scoring mode, made when first asked for), the model's
    name and chat template, and the lock that makes decodes on one local model take turns."""

    lm: LanguageModel
    config: RainConfig

    def _init_parts(self, lm: LanguageModel, evaluator: Evaluator | None, config: RainConfig | None) -> None:
        if not isinstance(lm, LanguageModel):
            raise TypeError(
                f"lm must be a LanguageModel (load_default_model(), load_model(...), VLLMEngine(...)), "
                f"got {type(lm).__name__}"
            )
        if config is not None and not isinstance(config, RainConfig):
            raise TypeError(f"config must be a RainConfig, got {type(config).__name__}")
        self.lm = lm
        self._evaluator = evaluator
        self._default_evaluators: dict[Scoring, Evaluator] = {}
        self._parts_lock = threading.Lock()
        self._lock = model_lock(lm)

    @property
    def model_name(self) -> str:
        return str(self.lm.name)

    @property
    def template_support(self) -> TemplateSupport:
        """What the model's chat template renders by itself (tools, tool calls, tool messages)."""
        return template_support(self.lm)

    def chat_prompt(self, messages: Sequence[Message], **chat_kwargs: Any) -> str:
        """``messages`` rendered as the model sees them (for inspection)."""
        return self.lm.chat_prompt(validate_messages(messages), add_generation_prompt=True, **chat_kwargs)

    def evaluator_for(self, cfg: RainConfig) -> Evaluator:
        if self._evaluator is not None:
            return self._evaluator
        with self._parts_lock:
            if cfg.scoring not in self._default_evaluators:
                self._default_evaluators[cfg.scoring] = SelfEvaluator(self.lm, "harmless", scoring=cfg.scoring)
            return self._default_evaluators[cfg.scoring]

    @property
    def evaluator(self) -> Evaluator:
        return self.evaluator_for(self.config)


class RainDecoder(DecoderParts):
    """Decode with RAIN.

    ``lm``: a ``LanguageModel`` (``load_default_model()``, ``load_model(...)``, ``VLLMEngine(...)``).
    ``evaluator``: an ``Evaluator`` or a function ``fn(prompt, response) -> float``; default
    ``SelfEvaluator(lm, "harmless")`` with the config's scoring mode.
    ``encoder``: sentence encoder for the similarity update and dynamic node addition; "default"
    asks the engine for its default (all-MiniLM-L6-v2, loaded when first needed), None turns both
    features off.
    ``config`` and keyword overrides: the ``RainConfig`` of every call (``RainConfig()`` is the
    official algorithm, ``RainConfig.fast()`` the fast preset).

    Decodes on an engine without ``concurrent = True`` (one local model) take turns one commit at a
    time; on a server engine they run side by side.

    Example, on the embedded model with tiny budgets and an evaluator that likes every reply:

    >>> from rain_core import RainDecoder, load_default_model
    >>> dec = RainDecoder(load_default_model(), lambda prompt, reply: 1.0, max_new_tokens=8, max_searches=2)
    >>> stream = dec.stream("Name a fruit.")
    >>> text = "".join(stream)  # each piece is final as soon as it arrives
    >>> stream.done, text == stream.result.text, stream.result.finish_reason in ("eos", "length")
    (True, True, True)
    """

    method = "rain"  # the decoding method, as every ``Decoder`` names it (rain_core.decoding)

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator | Callable[[str, str], float] | None = None,
        *,
        encoder: Encoder | str | None = "default",
        config: RainConfig | None = None,
        **overrides: Any,
    ) -> None:
        judge: Evaluator | None
        if evaluator is None or isinstance(evaluator, Evaluator):
            judge = evaluator
        elif callable(evaluator):
            judge = CallableEvaluator(evaluator)
        else:
            raise TypeError(f"evaluator must be an Evaluator or a callable, got {type(evaluator).__name__}")
        if isinstance(encoder, str) and encoder != "default":
            raise ValueError(f'encoder must be an Encoder, "default" or None, got {encoder!r}')
        self._init_parts(lm, judge, config)
        base = config or RainConfig()
        self.config = base.merged(**overrides) if overrides else base
        self._encoder = encoder

    # --- parts ----------------------------------------------------------------------------------

    def encoder_for(self, cfg: RainConfig) -> Encoder | None:
        if not (cfg.similarity_update or cfg.dynamic_node_addition):
            return None
        with self._parts_lock:
            if isinstance(self._encoder, str):
                if not isinstance(self.lm, ProvidesEncoder):
                    raise TypeError(
                        f"{self.lm.name} offers no default sentence encoder for the similarity update; pass "
                        "encoder=SentenceEncoder(folder) (rain_core.loaders), any Encoder, or encoder=None "
                        "to turn the similarity update and dynamic node addition off"
                    )
                self._encoder = self.lm.default_encoder()
            return self._encoder

    def resolve_config(self, config: RainConfig | None = None, **overrides: Any) -> RainConfig:
        if config is None and not overrides:
            return self.config
        return self.config.merged(config, **overrides)

    def prepare(
        self, prompt: Prompt, *, chat: bool = True, chat_kwargs: Mapping[str, Any] | None = None
    ) -> tuple[list[int], str]:
        """Token ids of the rendered prompt, and the transcript the evaluator reads."""
        return render_prompt(self.lm, prompt, chat=chat, chat_kwargs=chat_kwargs)

    def _search(
        self,
        prompt: Prompt,
        config: RainConfig | None,
        overrides: dict[str, Any],
        chat: bool,
        chat_kwargs: Mapping[str, Any] | None,
        keep_trees: bool,
        should_stop: Callable[[], bool] | None,
    ) -> RainSearch:
        cfg = self.resolve_config(config, **overrides)
        prompt_ids, eval_prompt = self.prepare(prompt, chat=chat, chat_kwargs=chat_kwargs)
        check_room(self.lm, prompt_ids, cfg.max_length)
        deadline = time.monotonic() + cfg.max_seconds if cfg.max_seconds is not None else None
        return RainSearch(
            self.lm,
            self.evaluator_for(cfg),
            self.encoder_for(cfg),
            cfg,
            prompt_ids,
            eval_prompt,
            seed=resolve_seed(cfg.seed),
            keep_trees=keep_trees,
            should_stop=should_stop,
            deadline=deadline,
            turn=self._model_turn(),
        )

    def _model_turn(self) -> Any:
        """The model's lock for one commit, unless the engine serves decodes side by side."""
        return contextlib.nullcontext() if is_concurrent(self.lm) else self._lock

    # --- public API -----------------------------------------------------------------------------
    def stream(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> RainStream:
        """The answer's text as each token set is committed: a ``RainStream`` of pieces, final as
        soon as they are yielded, whose ``result`` is the ``RainResult`` once the decode has ended
        (with the per-commit log, and each commit's tree when ``keep_trees``). Closing the stream
        stops the decode; so does ``cancel`` (an ``Event`` set, or a function returning True),
        before the next model call, with ``DecodeCancelled``. ``on_commit`` is told each commit's
        log entry as it happens (for callbacks and traces)."""
        search = self._search(prompt, config, overrides, chat, chat_kwargs, keep_trees, stop_test(cancel))
        return RainStream(in_session(search.run(), current_session() or new_session_id()), on_commit)

    def generate(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> RainResult:
        """Decode ``prompt`` (text, or chat messages) with RAIN. ``keep_trees`` stores each commit's
        search tree in ``stats["commit_log"]`` (for plots, traces and debugging); ``cancel`` and
        ``on_commit`` as in ``stream``."""
        stream = self.stream(
            prompt,
            config=config,
            chat=chat,
            chat_kwargs=chat_kwargs,
            keep_trees=keep_trees,
            cancel=cancel,
            on_commit=on_commit,
            **overrides,
        )
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def astream(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> AsyncRainStream:
        """``stream`` for async code. On a remote engine with an async client (``AsyncLanguageModel``
        and ``concurrent``) the search runs on the event loop itself, so many decodes share it;
        otherwise each commit runs in a worker thread. Cancelling the task, or abandoning or
        closing the stream, stops the decode before its next model call and frees the model."""
        on_loop = isinstance(self.lm, AsyncLanguageModel) and is_concurrent(self.lm)
        left = threading.Event()  # set when this stream is left: a commit in a worker thread stops
        should_stop = stop_test(cancel, None if on_loop else left)
        search = self._search(prompt, config, overrides, chat, chat_kwargs, keep_trees, should_stop)
        session = current_session() or new_session_id()
        if on_loop:
            return AsyncRainStream(ain_session(search.arun(), session), on_commit)
        return AsyncRainStream(in_threads(in_session(search.run(), session), left), on_commit)

    async def agenerate(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        keep_trees: bool = False,
        cancel: Cancel = None,
        on_commit: OnCommit | None = None,
        **overrides: Any,
    ) -> RainResult:
        """``generate`` for async code (see ``astream``)."""
        stream = self.astream(
            prompt,
            config=config,
            chat=chat,
            chat_kwargs=chat_kwargs,
            keep_trees=keep_trees,
            cancel=cancel,
            on_commit=on_commit,
            **overrides,
        )
        async for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def vanilla(
        self,
        prompt: Prompt,
        *,
        config: RainConfig | None = None,
        chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None,
        **overrides: Any,
    ) -> RainResult:
        """Plain sampling with the same model, temperature, top-k, seed and limits (no search)."""
        cfg = self.resolve_config(config, **overrides)
        prompt_ids, _ = self.prepare(prompt, chat=chat, chat_kwargs=chat_kwargs)
        check_room(self.lm, prompt_ids, cfg.max_length)
        budget = cfg.token_budget(len(prompt_ids), self.lm.context_length)
        before = engine_counters(self.lm)
        t0 = time.perf_counter()
        with self._model_turn(), decode_session(current_session()):
            ids = self.lm.generate(
                prompt_ids,
                budget,
                top_k=cfg.top_k,
                temperature=cfg.temperature,
                seed=resolve_seed(cfg.seed),
                stop=cfg.stop,
            )
        text, stopped = cut_at_stop(self.lm.decode(ids), cfg.stop)
        reason = "stop" if stopped else ("eos" if ids and ids[-1] in self.lm.eos_token_ids else "length")
        stats: dict[str, Any] = {"seconds": time.perf_counter() - t0, "new_tokens": len(ids)}
        stats.update(engine_delta(self.lm, before))
        return RainResult(text=text, token_ids=ids, finish_reason=reason, prompt_tokens=len(prompt_ids), stats=stats)
