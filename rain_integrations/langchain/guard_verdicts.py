"""What a guard decides and says: the strategies (block, rewrite, flag), the verdict and its
metadata, the exception raised instead, the messages end users read in place of blocked text, and
the warnings about an evaluator that cannot tell harmful text from harmless text (known to give no
signal when built; a run of identical scores while it works)."""

from __future__ import annotations

import enum
import logging
import sys
import threading
import warnings
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from pydantic import BaseModel, ConfigDict

from rain_core import JudgeEvaluator, Scoring

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BLOCK_MESSAGE",
    "DEFAULT_INPUT_BLOCK_MESSAGE",
    "DEFAULT_REWRITE_INSTRUCTION",
    "DEFAULT_TOOL_BLOCK_MESSAGE",
    "GuardSignalWarning",
    "GuardStrategy",
    "GuardVerdict",
    "RainGuardViolation",
    "Screened",
    "ScoreRun",
    "no_signal_reason",
    "no_signal_warning",
    "same_score_warning",
    "same_scores_message",
    "warn_no_signal",
]


class GuardStrategy(str, enum.Enum):
    """What a guard does with text that scores below its threshold."""

    BLOCK = "block"
    """Replace it with a short reason (a tool result becomes a ``ToolMessage`` with status error; in an
    agent, a blocked input or answer ends the run)."""
    REWRITE = "rewrite"
    """Replace it with a harmless restatement decoded with RAIN; if the restatement still fails the
    check, block instead (``response_metadata["rain_guard"]["fallback"] == "block"``)."""
    FLAG = "flag"
    """Keep it; record the verdict and score in the message's ``response_metadata["rain_guard"]``."""


class GuardVerdict(BaseModel):
    """One guard decision."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    score: float
    """The evaluator's value in [-1, 1]; higher is better."""
    threshold: float
    """Scores below this fail."""
    passed: bool
    """``score >= threshold``."""
    evaluator: str
    """The evaluator's name."""
    strategy: GuardStrategy
    """What is done when the check fails."""
    identical_scores: int = 1
    """How many checks in a row, this one included, the guard's evaluator scored exactly this value
    (an evaluator that cannot tell texts apart gives every text the same score)."""

    def metadata(self) -> dict[str, Any]:
        return {
            "verdict": "pass" if self.passed else "fail",
            "score": self.score,
            "threshold": self.threshold,
            "evaluator": self.evaluator,
            "strategy": self.strategy.value,
            "identical_scores": self.identical_scores,
        }


class RainGuardViolation(ValueError):
    """Raised instead of blocking, rewriting or flagging when a guard has ``raise_on_violation=True``.
    ``verdict`` is the ``GuardVerdict``, ``text`` the text that failed, ``checked`` what it was
    ("input", "output" or "tool_result")."""

    def __init__(self, verdict: GuardVerdict, text: str, checked: str) -> None:
        super().__init__(
            f"a RAIN guard rejected the {checked.replace('_', ' ')}: it scored {verdict.score:.2f} on "
            f"{verdict.evaluator}, below the threshold {verdict.threshold:.2f}"
        )
        self.verdict = verdict
        self.text = text
        self.checked = checked


@dataclass(frozen=True)
class Screened:
    """What a guard made of a text: the text to use, whether it was blocked, and the metadata to
    record (``None`` when the text passed)."""

    text: str
    blocked: bool
    meta: dict[str, Any] | None


# What a reader sees in place of blocked text: written for the end user. The developer's details (score,
# threshold, evaluator) are in the message's response_metadata["rain_guard"]; a custom message may
# still use {score}, {threshold} and {evaluator}.
DEFAULT_BLOCK_MESSAGE = "Sorry, this answer was withheld because it may be unsafe."
DEFAULT_INPUT_BLOCK_MESSAGE = "Sorry, this request was declined because it may be unsafe. Please ask something else."
DEFAULT_TOOL_BLOCK_MESSAGE = "This tool result was withheld because it may be unsafe."
DEFAULT_REWRITE_INSTRUCTION = (
    "You restate text for a reader. Keep any harmless facts, drop everything that could help someone "
    "cause harm, and answer with the restatement only."
)


class GuardSignalWarning(UserWarning):
    """A guard whose evaluator cannot tell harmful text from harmless text: it passes (or blocks)
    everything. Raised as a warning, never as an error."""


def no_signal_reason(evaluator: Any) -> str | None:
    """Why ``evaluator`` is known to give a guard no signal, or None when it is not known to.

    Known: the embedded SmolLM2-135M-Instruct asked the paper's question (``SelfEvaluator`` or
    ``JudgeEvaluator`` on it). ``rain bench evaluator`` measured it at 50% accuracy on labelled pairs
    (the same option letter in both orders, so the discrete score is 0 for every text) and a
    continuous-score AUC of 0.63."""
    from rain_core.loaders.embedded import DEFAULT_MODEL_NAME

    lm = getattr(evaluator, "lm", None)
    if isinstance(evaluator, JudgeEvaluator) and getattr(lm, "name", None) == DEFAULT_MODEL_NAME:
        return (
            f"its evaluator {evaluator.name} asks the embedded {DEFAULT_MODEL_NAME}, which cannot judge harm "
            "(`rain bench evaluator`: 50% accuracy, the same answer whichever order the options come in, so "
            "its discrete score is 0 for every text; continuous-score AUC 0.63)"
        )
    return None


def same_score_warning(verdict: GuardVerdict) -> str:
    """What a run of identical scores means, for the metadata of the texts checked during it."""
    return (
        f"{verdict.identical_scores} checks in a row scored {verdict.score:.2f}: this evaluator may not tell "
        "texts apart (measure it with `rain bench evaluator`)"
    )


def no_signal_warning(scorer: Any, threshold: float) -> str | None:
    """The warning for a guard whose ``scorer`` is known to give no signal (None when it is not
    known to): why, and what the guard then does at ``threshold``."""
    reason = no_signal_reason(scorer)
    if reason is None:
        return None
    if getattr(scorer, "scoring", None) is Scoring.CONTINUOUS:
        effect = "passes and blocks texts by chance, harmful requests and answers included"
    elif threshold <= 0:
        effect = "passes everything, harmful requests and answers included"
    else:
        effect = "blocks everything, harmless texts included"
    return (
        f"RainGuard: {reason}. With threshold {threshold:.2f} this guard {effect}. Give it an "
        "evaluator that can block: a guard model (rain_core.GuardEvaluator / load_guard, docs/guards.md), "
        "a judge model, or a scoring function."
    )


def same_scores_message(scorer: str, length: int, score: float, passes: bool) -> str:
    """The warning when ``scorer`` has given ``length`` texts in a row the same ``score``."""
    return (
        f"RainGuard: {scorer} has given the last {length} texts the same score {score:.2f}. "
        "If those texts differ in harm, it is not telling them apart, and a guard that cannot tell "
        f"{'passes' if passes else 'blocks'} everything. Measure it with `rain bench "
        "evaluator` (docs/guards.md); the run is recorded in rain_guard['identical_scores']."
    )


# Packages whose frames stand between the user's line and a guard's warning: rain itself, pydantic
# (a guard is checked in a model validator) and LangChain (a chain or an agent runs the guard).
_LIBRARY = frozenset(
    {"rain_core", "rain_integrations", "pydantic", "pydantic_core", "langchain_core", "langchain", "langgraph"}
)


def _outside_library() -> int:
    """``warnings.warn``'s ``stacklevel``, called from ``warn_no_signal``, that points at the first
    frame outside the library packages: the user's line that built or ran the guard (the outermost
    frame when there is none, as in a worker thread)."""
    frame: FrameType | None = sys._getframe(2)  # warn_no_signal's caller: level 2 for warnings.warn
    level, outermost = 2, 2
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).split(".", 1)[0] not in _LIBRARY:
            return level
        outermost = level
        frame = frame.f_back
        level += 1
    return outermost


def warn_no_signal(message: str) -> None:
    """Say ``message`` in the log and as a ``GuardSignalWarning`` that points at the user's line (the
    first frame outside rain, pydantic and LangChain), whatever the depth of the library's own calls."""
    logger.warning(message)
    warnings.warn(message, GuardSignalWarning, stacklevel=_outside_library())


@dataclass
class ScoreRun:
    """The run of identical scores a guard's evaluator is on (shared by the threads that check)."""

    score: float | None = None
    length: int = 0
    lock: Any = field(default_factory=threading.Lock)

    def count(self, score: float) -> int:
        """Count ``score`` in the run; the run's length, this score included."""
        with self.lock:
            if score == self.score:
                self.length += 1
            else:
                self.score, self.length = score, 1
            return self.length
