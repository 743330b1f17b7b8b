"""What the search's phases ask for: the model's requests (``rain_core.protocols``), the evaluator's
(``ScoreRequest``) and the encoder's (``EncodeRequest``); ``Together`` bundles requests of one phase
that go out in one call; ``Phase`` is the type of a phase."""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from .protocols import GenerateRequest, SampleRequest, TopTokensRequest

__all__ = ["MODEL_REQUESTS", "EncodeRequest", "ModelRequest", "Phase", "Request", "ScoreRequest", "Together"]


@dataclass(frozen=True)
class ScoreRequest:
    """The evaluator's value of the response ``text`` (the conversation is the decode's)."""

    text: str


@dataclass(frozen=True)
class EncodeRequest:
    """Sentence embeddings of ``texts`` (the similarity update)."""

    texts: tuple[str, ...]


ModelRequest = Union[TopTokensRequest, SampleRequest, GenerateRequest]  # noqa: UP007
Request = Union[TopTokensRequest, SampleRequest, GenerateRequest, ScoreRequest, EncodeRequest]  # noqa: UP007
MODEL_REQUESTS = (TopTokensRequest, SampleRequest, GenerateRequest)


@dataclass(frozen=True)
class Together:
    """Requests of one phase that go out together (a leaf's simulation and its expansion continue the
    same state, so they step in the same forward passes); the answer is a tuple, in order."""

    requests: tuple[Request, ...]


T = TypeVar("T")
Phase = Generator[Union[Request, Together], Any, T]  # noqa: UP007
"""A phase of the search: yields requests (or ``Together``), receives their answers, returns ``T``."""
