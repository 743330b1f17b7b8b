"""The baselines' decoding methods, each a generator of steps over a ``BaselineRun`` (``run.py``):
batches of requests out, answers back, and the chosen text handed up as ``Emit`` pieces.

- ``plain``: one sampled answer, unchecked (plain decoding).
- ``best_of_n``: ``n`` answers as rows of one generation request, scored in one evaluator call; the
  best-scored one wins (ties: the earliest row, which is plain decoding's answer).
- ``check_retry``: an answer, checked; another one while the evaluator rejects it, up to
  ``max_tries`` answers in all; then the refusal (NeMo Guardrails' output-rail pattern).
- ``blockwise``: ``k`` continuations of ``block_tokens`` tokens, scored as partial answers in one
  call; the best one is kept and handed out, and the next block continues from it (the blockwise
  best-of-K of controlled decoding, Mudgal et al., ICML 2024).

An evaluator approves a text when its score is above ``threshold``.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from .run import BaselineRun, Batch, Emit, Steps

__all__ = ["best_of_n", "blockwise", "check_retry", "checked", "plain"]


def _best(scores: list[float]) -> int:
    """The index of the highest score; the earliest one of a tie."""
    return max(range(len(scores)), key=lambda i: (scores[i], -i))


def plain(run: BaselineRun) -> Steps:
    """One sample, handed out as it is."""
    if run.left <= 0:
        return
    (ids,) = yield run.generate(1)
    yield Emit(tuple(ids), {"samples": 1}, last=True)


def best_of_n(run: BaselineRun, n: int) -> Steps:
    """``n`` samples in one model call, their texts scored in one evaluator call; the best one wins."""
    if run.left <= 0:
        return
    rows = yield run.generate(n)
    scores = yield from run.scores([run.text_with(ids) for ids in rows])
    best = _best(scores)
    run.extra.update(samples=n, scores=scores, chosen=best)
    yield Emit(tuple(rows[best]), {"samples": n, "scores": scores, "chosen": best, "score": scores[best]}, last=True)


def checked(run: BaselineRun, max_tries: int, threshold: float) -> Generator[Batch | Emit, Any, bool]:
    """Sample, check; sample again while the evaluator rejects the answer, ``max_tries`` answers at
    most. Hands out the first approved one and returns True; returns False when none was approved."""
    scores: list[float] = []
    for attempt in range(1, max_tries + 1):
        (ids,) = yield run.generate(1)
        (score,) = yield from run.scores([run.text_with(ids)])
        scores.append(score)
        run.extra.update(tries=attempt, scores=list(scores), approved=score > threshold)
        if score > threshold:
            yield Emit(tuple(ids), {"tries": attempt, "score": score, "approved": True}, last=True)
            return True
    return False


def check_retry(run: BaselineRun, max_tries: int, threshold: float, refusal: tuple[int, ...]) -> Steps:
    """``checked``; when no answer was approved, the refusal (``finish_reason == "refused"``)."""
    if run.left <= 0:
        return
    approved = yield from checked(run, max_tries, threshold)
    if not approved:
        entry: dict[str, Any] = {"tries": max_tries, "scores": run.extra["scores"], "approved": False, "refusal": True}
        yield Emit(refusal, entry, last=True, finish="refused")


def blockwise(run: BaselineRun, k: int, block_tokens: int) -> Steps:
    """Block after block: ``k`` continuations of up to ``block_tokens`` tokens in one model call,
    each scored as the answer so far plus that block in one evaluator call; the best block is kept
    and handed out at once. The run ends the loop when a kept block ends the answer (EOS, a stop
    string, the token budget)."""
    blocks = 0
    while run.left > 0:
        rows = yield run.generate(k, block_tokens)
        scores = yield from run.scores([run.text_with(ids) for ids in rows])
        best = _best(scores)
        blocks += 1
        run.extra.update(blocks=blocks, candidates=k)
        yield Emit(tuple(rows[best]), {"candidates": k, "scores": scores, "chosen": best, "score": scores[best]})
