"""The benchmarks' data: JSONL files, one JSON object per line (docs/quality.md has the format).

Shipped sets live in ``rain_bench/data`` (written for rain, not taken from a published benchmark):

- ``evaluator_pairs.jsonl``: labelled ``(prompt, reply, harmful)`` pairs for ``rain bench evaluator``;
  most prompts appear twice, answered once harmfully and once harmlessly.
- ``harmful.jsonl``, ``benign.jsonl``, ``alarming.jsonl``: prompt sets for ``rain bench quality``
  (requests a harmless assistant declines; ordinary requests; ordinary requests with alarming words,
  the over-refusal probes).
- ``framings.jsonl``: adversarial wrappers (``{prompt}`` marks where the request goes).
- ``difficulty.jsonl``: ordinary prompts, each with a word the embedded model tends to write and how
  often plain decoding wrote it (40 samples of 24 tokens each), in three levels: the difficulty
  scenarios of ``rain bench quality --methods`` (read by ``rain_bench.quality.scenarios``).

Users pass their own files with the same fields. Every problem is an error naming the file and line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DATA_DIR = Path(__file__).resolve().parent / "data"
BUILTIN_SETS = ("harmful", "benign", "alarming")
PAIRS_FILE = DATA_DIR / "evaluator_pairs.jsonl"
FRAMINGS_FILE = DATA_DIR / "framings.jsonl"
PROMPT_MARK = "{prompt}"


class DataError(ValueError):
    """A data file that cannot be used: unreadable, malformed, empty, or with a bad field."""


@dataclass(frozen=True)
class LabelledPair:
    """A reply to a prompt, labelled harmful or not."""

    id: str
    prompt: str
    reply: str
    harmful: bool


@dataclass(frozen=True)
class PromptItem:
    """One request; ``harmful`` says whether a harmless assistant should decline it."""

    id: str
    prompt: str
    harmful: bool
    framing: str | None = None  # the adversarial framing it is wrapped in, if any


@dataclass(frozen=True)
class PromptSet:
    name: str
    source: str
    items: tuple[PromptItem, ...]

    def __len__(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class Framing:
    id: str
    template: str

    def wrap(self, prompt: str) -> str:
        return self.template.replace(PROMPT_MARK, prompt)


def read_jsonl(path: str | Path) -> list[tuple[int, dict[str, Any]]]:
    """``(line number, object)`` for every non-blank line of ``path``; a line that is not a JSON
    object is a ``DataError`` naming ``path:line``; a file with no objects is one too."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot be read as UTF-8 text ({exc})") from None
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{number}: expected a JSON object, got {type(obj).__name__}")
        rows.append((number, obj))
    if not rows:
        raise DataError(f"{path}: the set is empty (no JSON lines); it needs at least one item")
    return rows


def _text(obj: dict[str, Any], key: str, where: str) -> str:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise DataError(f"{where}: field {key!r} must be a non-empty string, got {value!r}")
    return value


def _flag(obj: dict[str, Any], key: str, where: str) -> bool:
    if key not in obj:
        raise DataError(f"{where}: missing field {key!r} (true or false)")
    value = obj[key]
    if not isinstance(value, bool):
        raise DataError(f"{where}: field {key!r} must be true or false, got {value!r}")
    return value


def _ids(path: Path, rows: Iterable[tuple[int, dict[str, Any]]]) -> list[str]:
    """Each row's ``id`` (default ``<file stem>-<line>``), unique within the file."""
    seen: dict[str, int] = {}
    out = []
    for number, obj in rows:
        where = f"{path}:{number}"
        ident = _text(obj, "id", where) if "id" in obj else f"{path.stem}-{number}"
        if ident in seen:
            raise DataError(f"{where}: id {ident!r} already used on line {seen[ident]}")
        seen[ident] = number
        out.append(ident)
    return out


def load_pairs(path: str | Path | None = None, limit: int | None = None) -> list[LabelledPair]:
    """Labelled pairs: fields ``prompt``, ``reply`` (strings), ``harmful`` (bool), optional ``id``.
    ``limit`` keeps the first ones (the shipped file is ordered so any even prefix is balanced)."""
    path = Path(path) if path is not None else PAIRS_FILE
    rows = read_jsonl(path)
    ids = _ids(path, rows)
    pairs = [
        LabelledPair(
            ident,
            _text(obj, "prompt", f"{path}:{n}"),
            _text(obj, "reply", f"{path}:{n}"),
            _flag(obj, "harmful", f"{path}:{n}"),
        )
        for ident, (n, obj) in zip(ids, rows)
    ]
    return pairs[:limit] if limit is not None else pairs


def builtin_set_path(name: str) -> Path:
    if name not in BUILTIN_SETS:
        raise DataError(f"unknown prompt set {name!r}: use one of {', '.join(BUILTIN_SETS)} or a JSONL file")
    return DATA_DIR / f"{name}.jsonl"


def load_prompt_set(spec: str | Path, limit: int | None = None) -> PromptSet:
    """A prompt set: a built-in name (``harmful``, ``benign``, ``alarming``), a JSONL file (named by
    its stem), or ``NAME=FILE``. Fields: ``prompt`` (string), ``harmful`` (bool), optional ``id``."""
    text = str(spec)
    if text in BUILTIN_SETS:
        name, path = text, builtin_set_path(text)
    elif "=" in text and not Path(text).exists():
        name, _, file = text.partition("=")
        name, path = name.strip(), Path(file)
        if not name:
            raise DataError(f"{spec!r}: the set name before '=' is empty")
    else:
        path = Path(text)
        name = path.stem
    rows = read_jsonl(path)
    ids = _ids(path, rows)
    items = tuple(
        PromptItem(ident, _text(obj, "prompt", f"{path}:{n}"), _flag(obj, "harmful", f"{path}:{n}"))
        for ident, (n, obj) in zip(ids, rows)
    )
    return PromptSet(name=name, source=str(path), items=items[:limit] if limit is not None else items)


def load_framings(path: str | Path | None = None) -> list[Framing]:
    """Adversarial framings: fields ``template`` (a string containing ``{prompt}`` once) and
    optional ``id``."""
    path = Path(path) if path is not None else FRAMINGS_FILE
    rows = read_jsonl(path)
    ids = _ids(path, rows)
    out = []
    for ident, (n, obj) in zip(ids, rows):
        template = _text(obj, "template", f"{path}:{n}")
        if template.count(PROMPT_MARK) != 1:
            raise DataError(f"{path}:{n}: the template must contain {PROMPT_MARK} exactly once")
        out.append(Framing(ident, template))
    return out


def framed(prompt_set: PromptSet, framings: Sequence[Framing]) -> PromptSet:
    """The set with its i-th prompt wrapped in framing ``i mod len(framings)`` (every framing used,
    the set's size unchanged)."""
    if not framings:
        raise DataError("no adversarial framings to wrap the prompts in")
    items = tuple(
        PromptItem(
            f"{item.id}+{framings[i % len(framings)].id}",
            framings[i % len(framings)].wrap(item.prompt),
            item.harmful,
            framing=framings[i % len(framings)].id,
        )
        for i, item in enumerate(prompt_set.items)
    )
    return PromptSet(name=f"{prompt_set.name}+framed", source=prompt_set.source, items=items)
