"""What the methods are compared on: scenarios, each a prompt set with the evaluator every method
uses there (the same one for all, named as what it is).

- **Difficulty** (``rain_bench/data/difficulty.jsonl``): ordinary prompts, each with a word the
  model tends to write, judged by a scoring function that rejects any reply containing the word
  (``WordScorer``). The shipped prompts come in three levels, by how often plain decoding on the
  embedded model wrote the word when they were chosen: ``easy`` (about 20% of answers), ``medium``
  (about 60%) and ``hard`` (about 95%); the report measures the rate again. Retrying is cheap where
  most samples pass; a search that steers token by token should do better where almost none do.
- **Harm** (the ``harmful``, ``benign`` and ``alarming`` sets): judged by a harm evaluator
  (``--evaluator``: the embedding scorer, the guard stand-in, self-evaluation, a judge or guard
  model, ``MODULE:FUNCTION``) and graded by the separate grader.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from rain_core.evaluators import CallableEvaluator

from ..datasets import DATA_DIR, DataError, PromptItem, PromptSet, read_jsonl
from ..engines import NamedEvaluator

__all__ = [
    "DIFFICULTIES",
    "DIFFICULTY_FILE",
    "Scenario",
    "WordScorer",
    "difficulty_scenarios",
    "harm_scenario",
]

DIFFICULTY_FILE = DATA_DIR / "difficulty.jsonl"
DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class DifficultyItem:
    item: PromptItem
    word: str
    level: str
    measured_rate: float | None  # how often plain decoding wrote the word when the prompt was chosen


@dataclass(frozen=True)
class Scenario:
    """A prompt set and, per prompt, the evaluator every method uses on it. ``kind``: ``difficulty``
    (judged by word scorers; no harm grading) or ``harm`` (judged by ``evaluators[0]``, graded)."""

    name: str
    kind: str
    prompts: PromptSet
    evaluators: tuple[NamedEvaluator, ...]  # one per prompt (difficulty) or one for all (harm)
    note: str = ""

    def evaluator_for(self, index: int) -> NamedEvaluator:
        return self.evaluators[index if len(self.evaluators) > 1 else 0]


class WordScorer:
    """A scoring function: -1 when the reply contains ``word`` (whole word, any case), else 1."""

    def __init__(self, word: str) -> None:
        self.word = word
        self._rx = re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)
        self.__name__ = f"no_{word}"
        self.judgement = f"rain_bench.quality.scenarios.WordScorer({word!r})"

    def __call__(self, prompt: str, reply: str) -> float:
        return -1.0 if self._rx.search(reply) else 1.0


def word_evaluator(word: str) -> NamedEvaluator:
    fn = WordScorer(word)
    return NamedEvaluator(
        f"no '{word}'", CallableEvaluator(fn, name=fn.__name__), f"scoring function: -1 if the reply says '{word}'"
    )


def load_difficulty(path: str | Path | None = None) -> list[DifficultyItem]:
    """Items of a difficulty file: ``prompt``, ``word``, ``level`` (easy, medium, hard), optional ``id``
    and ``plain_word_rate`` (the share of plain answers that wrote the word when it was chosen)."""
    path = Path(path) if path is not None else DIFFICULTY_FILE
    out = []
    for number, obj in read_jsonl(path):
        where = f"{path}:{number}"
        for key in ("prompt", "word", "level"):
            if not isinstance(obj.get(key), str) or not obj[key].strip():
                raise DataError(f"{where}: field {key!r} must be a non-empty string")
        if obj["level"] not in DIFFICULTIES:
            raise DataError(f"{where}: level must be one of {', '.join(DIFFICULTIES)}, got {obj['level']!r}")
        rate = obj.get("plain_word_rate")
        ident = str(obj.get("id") or f"{path.stem}-{number}")
        out.append(DifficultyItem(PromptItem(ident, obj["prompt"], False), obj["word"], obj["level"], rate))
    return out


def difficulty_scenarios(
    per_level: int | None, levels: Sequence[str] = DIFFICULTIES, path: str | Path | None = None
) -> list[Scenario]:
    """One scenario per difficulty level: its first ``per_level`` prompts, each with its word scorer."""
    items = load_difficulty(path)
    out = []
    for level in levels:
        chosen = [d for d in items if d.level == level][:per_level]
        if not chosen:
            continue
        rates = [d.measured_rate for d in chosen if d.measured_rate is not None]
        note = (
            f"plain decoding wrote the word in {100 * sum(rates) / len(rates):.0f}% of answers when chosen"
            if rates
            else ""
        )
        out.append(
            Scenario(
                f"word {level}",
                "difficulty",
                PromptSet(f"word {level}", str(path or DIFFICULTY_FILE), tuple(d.item for d in chosen)),
                tuple(word_evaluator(d.word) for d in chosen),
                note,
            )
        )
    return out


def harm_scenario(prompts: PromptSet, evaluator: NamedEvaluator) -> Scenario:
    return Scenario(f"{prompts.name} / {evaluator.name}", "harm", prompts, (evaluator,))
