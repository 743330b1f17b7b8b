"""Text side of ``VLLMEngine``: the served model's tokenizer, local (a folder or a cached hub id, the
same files the server loaded) or, where that is enough, the server's ``/tokenize`` and
``/detokenize`` endpoints.

The server's endpoints cannot answer two things RAIN needs: ``token_ids_ending_with`` (it would take
one request per vocabulary entry) and ``encode(..., parse_special=False)`` (the endpoint always
parses special-token text). With them only, those two raise ``MissingFeatureError`` saying to pass
``tokenizer=``; encode, decode and chat_prompt work."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import plain_transcript, tokens_ending_with
from .vllm_http import MissingFeatureError

logger = logging.getLogger(__name__)


def load_local_tokenizer(source: str, *, local_only: bool) -> Any | None:
    """A Hugging Face tokenizer from a folder or hub id; None when it cannot be found (``local_only``:
    only folders and the local hub cache are tried)."""
    from transformers import AutoTokenizer

    try:
        if local_only and not Path(source).is_dir():
            return AutoTokenizer.from_pretrained(source, local_files_only=True)
        return AutoTokenizer.from_pretrained(source)
    except (OSError, ValueError) as exc:
        if not local_only:
            raise ValueError(f"cannot load a tokenizer from {source!r}: {exc}") from exc
        logger.debug("no local tokenizer at %r: %s", source, exc)
        return None


def generation_eos(source: str | None) -> set[int]:
    """EOS ids named by ``generation_config.json`` of a folder or cached hub id (empty if none)."""
    if not source:
        return set()
    try:
        from transformers import GenerationConfig

        cfg = GenerationConfig.from_pretrained(source, local_files_only=True)
    except (OSError, ValueError):
        return set()
    value = cfg.eos_token_id
    if isinstance(value, int):
        return {value}
    return {int(v) for v in value or ()}


class LocalText:
    """encode/decode/chat_prompt/token_ids_ending_with/parse_response over a Hugging Face tokenizer."""

    def __init__(self, tokenizer: Any, name: str, source: str | None = None) -> None:
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self._special_ids = frozenset(getattr(tokenizer, "all_special_ids", []) or [])
        self._suffix_tokens: dict[tuple[str, ...], frozenset[int]] = {}
        self._lock = threading.Lock()

    def eos_ids(self) -> set[int]:
        eos = generation_eos(self.source)
        value = getattr(self.tokenizer, "eos_token_id", None)
        if isinstance(value, int):
            eos.add(value)
        return eos

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        if parse_special:
            return list(self.tokenizer.encode(text, add_special_tokens=False))
        return list(self.tokenizer.encode(text, add_special_tokens=False, split_special_tokens=True))

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            try:
                return str(
                    self.tokenizer.apply_chat_template(
                        [dict(m) for m in messages],
                        tokenize=False,
                        add_generation_prompt=add_generation_prompt,
                        **kwargs,
                    )
                )
            except Exception as exc:  # jinja2 errors of a template that rejects this input
                raise ValueError(f"{self.name}'s chat template cannot render these messages: {exc}") from exc
        return plain_transcript(messages, add_generation_prompt)

    def token_ids_ending_with(self, suffixes: Sequence[str]) -> frozenset[int]:
        key = tuple(suffixes)
        with self._lock:
            if key not in self._suffix_tokens:
                self._suffix_tokens[key] = tokens_ending_with(
                    lambda i: self.tokenizer.decode([i], skip_special_tokens=True),
                    len(self.tokenizer),
                    key,
                    skip=sorted(self._special_ids),
                )
            return self._suffix_tokens[key]

    def parse_response(
        self, text: str, *, prefix: str = "", tools: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        if getattr(self.tokenizer, "response_template", None) is None:
            return None
        kwargs: dict[str, Any] = {"prefix": prefix}
        if tools:
            kwargs["tools"] = [dict(t) for t in tools]
        parsed = self.tokenizer.parse_response(text, **kwargs)
        return dict(parsed) if isinstance(parsed, Mapping) else None


class ServerText:
    """encode/decode/chat_prompt through the server's ``/tokenize`` and ``/detokenize``.

    ``post(path, payload) -> dict`` sends one request (the engine's, with its retries and errors).
    ``decode`` keeps special-token text (the endpoint does), unlike a local tokenizer's."""

    def __init__(self, post: Callable[[str, dict[str, Any]], dict[str, Any]], model: str) -> None:
        self._post = post
        self.model = model
        self.tokenizer = None

    def _needs_local(self, what: str) -> MissingFeatureError:
        return MissingFeatureError(
            f"{what} needs the model's tokenizer on this machine (vLLM's /tokenize cannot do it); pass "
            f"VLLMEngine(..., tokenizer=FOLDER_OR_HUB_ID) with the served model's tokenizer files"
        )

    def eos_ids(self) -> set[int]:
        return set()

    def encode(self, text: str, *, parse_special: bool = True) -> list[int]:
        if not parse_special:
            raise self._needs_local("encode(text, parse_special=False) (untrusted text, e.g. a reply being judged)")
        out = self._post("/tokenize", {"model": self.model, "prompt": text, "add_special_tokens": False})
        return [int(t) for t in out["tokens"]]

    def decode(self, token_ids: Sequence[int]) -> str:
        if not token_ids:
            return ""
        return str(self._post("/detokenize", {"model": self.model, "tokens": [int(t) for t in token_ids]})["prompt"])

    def chat_prompt(
        self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        payload: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            "add_generation_prompt": add_generation_prompt,
            "add_special_tokens": False,
        }
        if "tools" in kwargs:
            payload["tools"] = kwargs.pop("tools")
        if kwargs:
            payload["chat_template_kwargs"] = kwargs
        tokens = self._post("/tokenize", payload)["tokens"]
        return str(self._post("/detokenize", {"model": self.model, "tokens": tokens})["prompt"])

    def token_ids_ending_with(self, suffixes: Sequence[str]) -> frozenset[int]:
        raise self._needs_local("RAIN's search (the tokens that end a clause)")

    def parse_response(
        self, text: str, *, prefix: str = "", tools: Sequence[Mapping[str, Any]] | None = None
    ) -> dict[str, Any] | None:
        return None


def is_local_folder(source: str | None) -> bool:
    return bool(source) and os.path.isdir(str(source))
