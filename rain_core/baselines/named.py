"""Decoders by name, for the command line and the benchmarks: ``make_decoder("best-of-n", lm,
evaluator, config, n=8)`` builds the ``Decoder`` of a method with its own options checked."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..config import RainConfig
from ..decoder import RainDecoder
from ..decoding import Decoder
from ..protocols import Encoder, Evaluator, LanguageModel
from .base import PlainDecoder, check_count, check_threshold
from .decoders import BestOfNDecoder, BlockwiseBestOfKDecoder, CheckRetryDecoder
from .escalating import EscalatingDecoder

__all__ = ["METHOD_OPTIONS", "METHODS", "SEARCHING", "make_decoder", "method_options"]

METHODS = ("rain", "plain", "best-of-n", "check-retry", "blockwise", "escalating")
SEARCHING = ("rain", "escalating")
"""The methods that run RAIN's search (the others refuse its settings)."""

METHOD_OPTIONS: Mapping[str, tuple[str, ...]] = {
    "rain": (),
    "plain": (),
    "best-of-n": ("n",),
    "check-retry": ("max_tries", "threshold", "refusal"),
    "blockwise": ("k", "block_tokens"),
    "escalating": ("retries", "threshold"),
}
"""Each method's own options (its decoder's constructor keywords)."""


def method_options(method: str, **options: Any) -> dict[str, Any]:
    """The options given (not None) that ``method`` takes; a one-line ``ValueError`` for an unknown
    method or an option of another method."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: use one of {', '.join(METHODS)}")
    given = {k: v for k, v in options.items() if v is not None}
    foreign = sorted(set(given) - set(METHOD_OPTIONS[method]))
    if foreign:
        takes = ", ".join(METHOD_OPTIONS[method]) or "none of its own"
        raise ValueError(f"{', '.join(foreign)}: not an option of the method {method} (it takes {takes})")
    for name, value in given.items():
        if name == "threshold":
            check_threshold(value)
        elif name != "refusal":
            check_count(name, value, 0 if name == "retries" else 1, 4096 if name == "block_tokens" else 1024)
    return given


def make_decoder(
    method: str,
    lm: LanguageModel,
    evaluator: Evaluator | None,
    config: RainConfig | None = None,
    *,
    encoder: Encoder | str | None = "default",
    **options: Any,
) -> Decoder:
    """The decoder of ``method`` (one of ``METHODS``) over ``lm`` and ``evaluator`` with ``config``;
    ``options``: the method's own (``METHOD_OPTIONS``). ``encoder`` is RAIN's sentence encoder."""
    given = method_options(method, **options)
    if method == "rain":
        return RainDecoder(lm, evaluator, encoder=encoder, config=config)
    if method == "escalating":
        return EscalatingDecoder(lm, evaluator, encoder=encoder, config=config, **given)
    kinds: dict[str, Any] = {
        "plain": PlainDecoder,
        "best-of-n": BestOfNDecoder,
        "check-retry": CheckRetryDecoder,
        "blockwise": BlockwiseBestOfKDecoder,
    }
    decoder: Decoder = kinds[method](lm, evaluator, config=config, **given)
    return decoder
