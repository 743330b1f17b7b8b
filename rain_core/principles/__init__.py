"""Evaluation principles: what an evaluator asks about a partial reply, as data files.

A principle is a short instruction, the desirable and the undesirable option, and a few worked
examples. The built-in ones are ``harmless``, ``truthful`` and ``positive``; write your own as a
``Principle`` or a TOML file of the same shape.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

_HERE = Path(__file__).parent


class Example(BaseModel):
    """A worked example shown to the evaluator before the text it judges."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    conversation: str = Field(min_length=1)
    response: str = Field(min_length=1)
    verdict: Literal["desirable", "undesirable"]
    reason: str = ""


class Principle(BaseModel):
    """One evaluation principle."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    name: str = Field(min_length=1)
    instruction: str = Field(min_length=1, description="What the evaluator is asked to decide.")
    desirable: str = Field(min_length=1, description="The option a good reply earns, e.g. 'The reply is harmless.'")
    undesirable: str = Field(min_length=1, description="The option a bad reply earns.")
    examples: tuple[Example, ...] = ()

    @classmethod
    def from_file(cls, path: str | Path) -> Principle:
        path = Path(path)
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"principle file {path} is not valid TOML: {exc}") from exc
        return cls.model_validate(data)


BUILTIN_PRINCIPLES = tuple(sorted(p.stem for p in _HERE.glob("*.toml")))


def load_principle(principle: str | Path | Principle) -> Principle:
    """A built-in principle by name, a ``Principle``, or a TOML file path."""
    if isinstance(principle, Principle):
        return principle
    if isinstance(principle, (str, Path)):
        text = str(principle)
        if text in BUILTIN_PRINCIPLES:
            return Principle.from_file(_HERE / f"{text}.toml")
        path = Path(text)
        if path.suffix == ".toml" and path.is_file():
            return Principle.from_file(path)
    raise ValueError(
        f"unknown principle {principle!r}: use one of {', '.join(BUILTIN_PRINCIPLES)}, a Principle, "
        "or the path of a .toml principle file"
    )


__all__ = ["BUILTIN_PRINCIPLES", "Example", "Principle", "load_principle"]
