"""Tokenizer resolution for ``VLLMEngine``: the served model's tokenizer, local (a folder or a cached
hub id, the same files the server loaded) or, where that is enough, the server's ``/tokenize`` and
``/detokenize`` endpoints (``resolve_text`` chooses).

The server's endpoints cannot answer two things RAIN needs: ``token_ids_ending_with`` (it would take
one request per vocabulary entry) and ``encode(..., parse_special=False)`` (the endpoint always
parses special-token text). With them only, those two raise ``MissingFeatureError`` saying to pass
``tokenizer=``; encode, decode and chat_prompt work."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from ..hf_text import LocalText, load_local_tokenizer
from .http import MissingFeatureError

logger = logging.getLogger(__name__)
Post = Callable[[str, dict[str, Any]], dict[str, Any]]


class ServerText:
    """encode/decode/chat_prompt through the server's ``/tokenize`` and ``/detokenize``.

    ``post(path, payload) -> dict`` sends one request (the engine's, with its retries and errors).
    ``decode`` keeps special-token text (the endpoint does), unlike a local tokenizer's."""

    def __init__(self, post: Post, model: str) -> None:
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


def resolve_text(tokenizer: Any, model: str, server_root: str | None, post: Post) -> LocalText | ServerText:
    """The text side for ``model``: ``tokenizer`` as given (a tokenizer object, a folder or hub id, or
    ``"server"`` for the server's endpoints); None: ``model`` as a folder or cached hub id, then the
    folder the server says it loaded (``server_root``) when it exists here, else the server's
    endpoints (with a warning: RAIN's search needs a local tokenizer). ``post`` sends one request."""
    if tokenizer == "server":
        return ServerText(post, model)
    if tokenizer is not None and not isinstance(tokenizer, str):
        return LocalText(tokenizer, model, getattr(tokenizer, "name_or_path", None))
    if isinstance(tokenizer, str):
        return LocalText(load_local_tokenizer(tokenizer, local_only=False), model, tokenizer)
    for source in dict.fromkeys(s for s in (model, server_root) if s):
        if not is_local_folder(source) and "/" not in source.strip("/"):
            continue  # neither a folder nor a hub id ("org/name")
        found = load_local_tokenizer(source, local_only=True)
        if found is not None:
            logger.info("VLLMEngine(%s): tokenizer from %s", model, source)
            return LocalText(found, model, source)
    logger.warning(
        "VLLMEngine(%s): no local tokenizer found (tried %r and the server's root %r); using the "
        "server's /tokenize and /detokenize, which cannot run RAIN's search or encode judged text: "
        "pass tokenizer=FOLDER_OR_HUB_ID",
        model,
        model,
        server_root,
    )
    return ServerText(post, model)
