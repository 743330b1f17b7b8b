"""The text side of an engine over a Hugging Face tokenizer: encode, decode, chat_prompt,
token_ids_ending_with and parse_response, shared by the transformers engine and ``VLLMEngine``
(which reads the served model's tokenizer on the client)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .common import plain_transcript, tokens_ending_with

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
