"""RainDecoder: the public entry point. Validates input, renders prompts, runs the search, streams
committed text, and offers plain decoding with the same model and limits for comparison."""

from __future__ import annotations

import logging
import secrets
import threading
import time
import weakref
from dataclasses import dataclass, field
from typing import Any, Iterator, Mapping, Sequence, Union

from .config import RainConfig, Scoring
from .evaluators import CallableEvaluator, Evaluator, SelfEvaluator
from .lm import ContextTooLongError, LanguageModel
from .search import RainSearch

logger = logging.getLogger(__name__)

Message = Mapping[str, Any]
Prompt = Union[str, Sequence[Message]]
ROLES = ("system", "user", "assistant", "tool")

_LOCKS: "weakref.WeakKeyDictionary[Any, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _lock_for(lm: Any) -> threading.RLock:
    """One lock per model: its KV cache and weights serve one decode step at a time."""
    with _LOCKS_GUARD:
        lock = _LOCKS.get(lm)
        if lock is None:
            lock = threading.RLock()
            _LOCKS[lm] = lock
        return lock


@dataclass
class RainResult:
    """A finished decode: the text, its token ids, why it ended, and what it cost."""

    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" or "length"
    prompt_tokens: int
    stats: dict[str, Any] = field(default_factory=dict)

    @property
    def completion_tokens(self) -> int:
        return len(self.token_ids)


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Chat messages as a list of ``{"role", "content", ...}`` dicts, or a clear error."""
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TypeError(f"messages must be a list of {{'role': ..., 'content': ...}} dicts, got {type(messages).__name__}")
    if not messages:
        raise ValueError("the prompt has no messages; pass at least one {'role': 'user', 'content': ...}")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, Mapping):
            raise TypeError(f"message {i} must be a dict with 'role' and 'content', got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise ValueError(f"message {i} has role {role!r}; use one of {', '.join(ROLES)}")
        content = m.get("content")
        if content is None and not m.get("tool_calls"):
            raise ValueError(f"message {i} ({role}) has no 'content'")
        if content is not None and not isinstance(content, str):
            raise TypeError(f"message {i} content must be a string, got {type(content).__name__}")
        out.append(dict(m))
    if not any((m.get("content") or "").strip() or m.get("tool_calls") for m in out):
        raise ValueError("the prompt is empty: every message's content is blank")
    return out


def transcript(messages: Sequence[Message]) -> str:
    """A plain-text view of the conversation for evaluators: ``Role: content`` lines."""
    lines = []
    for m in messages:
        if m["role"] == "system":
            continue
        content = (m.get("content") or "").strip()
        if m.get("tool_calls"):
            names = ", ".join(str(c.get("name") or c.get("function", {}).get("name")) for c in m["tool_calls"])
            content = (content + f" [calls tools: {names}]").strip()
        lines.append(f"{m['role'].capitalize()}: {content}")
    return "\n".join(lines)


def _holdback(text: str, stops: Sequence[str]) -> int:
    """How many trailing characters of ``text`` must wait: an unfinished character, or the start
    of a stop string that the next token set might complete."""
    keep = 0
    while keep < len(text) and text[len(text) - 1 - keep] == "\ufffd":
        keep += 1
    body = text[: len(text) - keep]
    longest = 0
    for s in stops:
        for n in range(min(len(s) - 1, len(body)), 0, -1):
            if body.endswith(s[:n]):
                longest = max(longest, n)
                break
    return keep + longest


class RainDecoder:
    """Decode with RAIN.

    ``lm``: a ``LanguageModel`` (``load_default_model()``, ``load_model(...)``).
    ``evaluator``: an ``Evaluator`` or a function ``fn(prompt, response) -> float``; default
    ``SelfEvaluator(lm, "harmless")`` with the config's scoring mode.
    ``encoder``: sentence encoder for the similarity update and dynamic node addition; "default"
    loads the packaged all-MiniLM-L6-v2 when first needed, None turns both features off.
    """

    def __init__(
        self,
        lm: LanguageModel,
        evaluator: Evaluator | Any | None = None,
        *,
        encoder: Any = "default",
        config: RainConfig | None = None,
        **overrides: Any,
    ) -> None:
        if not isinstance(lm, LanguageModel):
            raise TypeError(f"lm must be a LanguageModel (load_default_model() or load_model(...)), got {type(lm).__name__}")
        self.lm = lm
        self.config = (config or RainConfig()).merged(**overrides) if overrides else (config or RainConfig())
        if not isinstance(self.config, RainConfig):
            raise TypeError(f"config must be a RainConfig, got {type(config).__name__}")
        if evaluator is not None and not isinstance(evaluator, Evaluator):
            if callable(evaluator):
                evaluator = CallableEvaluator(evaluator)
            else:
                raise TypeError(f"evaluator must be an Evaluator or a callable, got {type(evaluator).__name__}")
        self._evaluator = evaluator
        self._default_evaluators: dict[Scoring, Evaluator] = {}
        self._encoder = encoder
        self._lock = _lock_for(lm)

    # --- parts ----------------------------------------------------------------------------------
    def evaluator_for(self, cfg: RainConfig) -> Evaluator:
        if self._evaluator is not None:
            return self._evaluator
        if cfg.scoring not in self._default_evaluators:
            self._default_evaluators[cfg.scoring] = SelfEvaluator(self.lm, "harmless", scoring=cfg.scoring)
        return self._default_evaluators[cfg.scoring]

    @property
    def evaluator(self) -> Evaluator:
        return self.evaluator_for(self.config)

    def encoder_for(self, cfg: RainConfig) -> Any:
        if not (cfg.similarity_update or cfg.dynamic_node_addition):
            return None
        if isinstance(self._encoder, str) and self._encoder == "default":
            from .similarity import load_default_encoder

            self._encoder = load_default_encoder()
        return self._encoder

    def resolve_config(self, config: RainConfig | None = None, **overrides: Any) -> RainConfig:
        if config is None and not overrides:
            return self.config
        return self.config.merged(config, **overrides)

    def prepare(self, prompt: Prompt, *, chat: bool = True, chat_kwargs: Mapping[str, Any] | None = None) -> tuple[list[int], str]:
        """Token ids of the rendered prompt, and the transcript the evaluator reads."""
        if isinstance(prompt, str):
            if not prompt.strip():
                raise ValueError("the prompt is empty; pass some text or chat messages")
            if not chat:
                return self.lm.encode(prompt), f"Text: {prompt.strip()}"
            messages = [{"role": "user", "content": prompt}]
        elif isinstance(prompt, bytes):
            raise TypeError("the prompt must be text (str) or chat messages, not bytes; decode it first")
        else:
            messages = validate_messages(prompt)
        rendered = self.lm.chat_prompt(messages, add_generation_prompt=True, **dict(chat_kwargs or {}))
        return self.lm.encode(rendered), transcript(messages)

    def _check_room(self, prompt_ids: Sequence[int], cfg: RainConfig) -> None:
        limit = min(cfg.max_length, self.lm.context_length)
        if len(prompt_ids) >= limit:
            raise ContextTooLongError(
                f"the prompt is {len(prompt_ids)} tokens; it must be shorter than {limit} "
                f"(min of max_length={cfg.max_length} and {self.lm.name}'s context {self.lm.context_length}) "
                "to leave room for an answer. Shorten it or raise max_length."
            )

    def _search(self, prompt: Prompt, config: RainConfig | None, overrides: dict[str, Any], chat: bool,
                chat_kwargs: Mapping[str, Any] | None, keep_trees: bool) -> RainSearch:
        cfg = self.resolve_config(config, **overrides)
        prompt_ids, eval_prompt = self.prepare(prompt, chat=chat, chat_kwargs=chat_kwargs)
        self._check_room(prompt_ids, cfg)
        seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31 - 1)
        with self._lock:
            evaluator, encoder = self.evaluator_for(cfg), self.encoder_for(cfg)
        return RainSearch(self.lm, evaluator, encoder, cfg, prompt_ids, eval_prompt, seed=seed, keep_trees=keep_trees)

    @staticmethod
    def _final_text(search: RainSearch) -> str:
        text = search.response_text()
        for s in search.cfg.stop:
            if s in text:
                text = text[: text.index(s)]
        return text

    def _engine_stats(self) -> dict[str, float]:
        stats = getattr(self.lm, "stats", None)
        return stats.snapshot() if stats is not None else {}

    def _stats(self, search: RainSearch, before: dict[str, float]) -> dict[str, Any]:
        out = search.stats.as_dict()
        after = self._engine_stats()
        for key in ("forward_calls", "forward_tokens"):
            if key in after:
                out[key] = after[key] - before.get(key, 0)
        return out

    # --- public API -----------------------------------------------------------------------------
    def stream(
        self, prompt: Prompt, *, config: RainConfig | None = None, chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None, result: list | None = None, keep_trees: bool = False,
        **overrides: Any,
    ) -> Iterator[str]:
        """Yield the answer's text as each token set is committed (final as soon as it is yielded).
        Pass ``result=[]`` to receive the ``RainResult`` appended to it when the stream ends
        (with the per-commit log, and each commit's tree when ``keep_trees``)."""
        search = self._search(prompt, config, overrides, chat, chat_kwargs, keep_trees=keep_trees)
        before = self._engine_stats()
        emitted = 0
        steps = search.run()
        while True:
            with self._lock:
                tokens = next(steps, None)
            if tokens is None:
                break
            text = self._final_text(search)
            safe = len(text) - _holdback(text, search.cfg.stop)
            if safe > emitted:
                yield text[emitted:safe]
                emitted = safe
        text = self._final_text(search)
        if len(text) > emitted:
            yield text[emitted:]
        if result is not None:
            result.append(self._result(search, before))

    def _result(self, search: RainSearch, before: dict[str, float]) -> RainResult:
        return RainResult(
            text=self._final_text(search),
            token_ids=list(search.committed),
            finish_reason=search.finished_by or "length",
            prompt_tokens=len(search.prompt_ids),
            stats=self._stats(search, before),
        )

    def generate(
        self, prompt: Prompt, *, config: RainConfig | None = None, chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None, keep_trees: bool = False, **overrides: Any,
    ) -> RainResult:
        """Decode ``prompt`` (text, or chat messages) with RAIN. ``keep_trees`` stores each commit's
        search tree in ``stats["commit_log"]`` (for plots and debugging)."""
        search = self._search(prompt, config, overrides, chat, chat_kwargs, keep_trees=keep_trees)
        before = self._engine_stats()
        steps = search.run()
        while True:
            with self._lock:
                if next(steps, None) is None:
                    break
        return self._result(search, before)

    def vanilla(
        self, prompt: Prompt, *, config: RainConfig | None = None, chat: bool = True,
        chat_kwargs: Mapping[str, Any] | None = None, **overrides: Any,
    ) -> RainResult:
        """Plain sampling with the same model, temperature, top-k, seed and limits (no search)."""
        cfg = self.resolve_config(config, **overrides)
        prompt_ids, _ = self.prepare(prompt, chat=chat, chat_kwargs=chat_kwargs)
        self._check_room(prompt_ids, cfg)
        seed = cfg.seed if cfg.seed is not None else secrets.randbelow(2**31 - 1)
        budget = min(cfg.max_new_tokens, cfg.max_length - len(prompt_ids), self.lm.context_length - len(prompt_ids))
        before = self._engine_stats()
        t0 = time.perf_counter()
        with self._lock:
            ids = self.lm.continue_until(
                prompt_ids, cfg.stop, budget, top_k=cfg.top_k, temperature=cfg.temperature, seed=seed
            )
        text = self.lm.decode(ids)
        reason = "eos" if ids and ids[-1] in self.lm.eos_token_ids else "length"
        for s in cfg.stop:
            if s in text:
                text, reason = text[: text.index(s)], "stop"
        stats: dict[str, Any] = {"seconds": time.perf_counter() - t0, "new_tokens": len(ids)}
        after = self._engine_stats()
        for key in ("forward_calls", "forward_tokens"):
            if key in after:
                stats[key] = after[key] - before.get(key, 0)
        return RainResult(text=text, token_ids=ids, finish_reason=reason, prompt_tokens=len(prompt_ids), stats=stats)
